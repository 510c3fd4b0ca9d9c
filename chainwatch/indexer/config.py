"""What to watch: the chain, both contract addresses and the first block, from the settings
(LOAN_CONTRACT_ADDRESS, ETHERSWAP_CONTRACT_ADDRESS, EVM_START_BLOCK) or else what
`deploy_contracts` recorded (chainwatch.evm.deploy.configured_deployment)."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from chainwatch.indexer.decoding import LOAN_CONTRACT, SWAP_CONTRACT


class NoContracts(ImproperlyConfigured):
    """Nothing deployed or configured yet: there is nothing to watch."""


@dataclass(frozen=True)
class WatchConfig:
    chain_id: int
    contracts: dict[str, str]  # contract name -> checksum address
    start_block: int
    confirmations: int

    @property
    def names_by_address(self) -> dict[str, str]:
        return {address.lower(): name for name, address in self.contracts.items()}


def watch_config() -> WatchConfig:
    from chainwatch.evm.deploy import configured_deployment
    from chainwatch.evm.errors import EvmError

    try:
        deployment = configured_deployment()
    except EvmError as exc:
        raise ImproperlyConfigured(str(exc)) from exc
    if deployment is None:
        raise NoContracts(
            "no contracts to watch: set LOAN_CONTRACT_ADDRESS and ETHERSWAP_CONTRACT_ADDRESS, "
            "or run `manage.py deploy_contracts`"
        )
    chain_id = int(settings.EVM_CHAIN_ID)
    if deployment.chain_id != chain_id:
        raise ImproperlyConfigured(
            f"the recorded deployment is on chain {deployment.chain_id}, EVM_CHAIN_ID is {chain_id}"
        )
    return WatchConfig(
        chain_id=chain_id,
        contracts={
            LOAN_CONTRACT: deployment.loan_address,
            SWAP_CONTRACT: deployment.etherswap_address,
        },
        start_block=max(0, int(deployment.block_number)),
        confirmations=int(settings.EVM_CONFIRMATIONS),
    )
