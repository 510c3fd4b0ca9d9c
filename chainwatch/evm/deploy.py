"""Deploy BtcCollateralLoan + EtherSwap, link them, and record where the service finds them.

Everything that can be checked is checked before the first transaction: the key, the lender's
Bitcoin key, the timelocks, the chain id, and that the lender can pay for the deployment.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from eth_typing import ChecksumAddress
from web3 import Web3
from web3.contract.contract import Contract, ContractConstructor
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.types import TxParams

from chainwatch.evm.artifacts import ETHERSWAP_CONTRACT, load_artifact
from chainwatch.evm.errors import EvmError, InvalidInput, NodeRejected
from chainwatch.evm.flavour import FLAVOUR_ARTIFACTS, ContractFlavour
from chainwatch.evm.sender import TransactionSender

XONLY_PUBKEY_PATTERN = re.compile(r"^[0-9a-fA-F]{64}$")
# BIP-68 relative locks hold at most 65535 blocks.
MAX_CSV_BLOCKS = 0xFFFF
# Gas for setEtherSwapAddress, which cannot be estimated before EtherSwap exists.
LINK_GAS_ALLOWANCE = 100_000


class DeploymentError(EvmError):
    """A deployment stopped after sending something; the message says what exists."""


@dataclass(frozen=True)
class TimelockParameters:
    """The contract's timelocks, in EVM blocks, in constructor order (D, t_B, t_0, t_L, t_1)."""

    loan_duration: int = 540_000  # D: repay before activation + D
    t_borrower: int = 1_000  # t_B: accept an offer within t_B
    t_btc_escrow: int = 2_000  # t_0: the escrow's exit lock (converted to Bitcoin blocks)
    t_lender: int = 1_500  # t_L: accept a repayment within t_L
    t_btc_collateral: int = 543_000  # t_1: the collateral's sweep lock

    def __post_init__(self) -> None:
        values = self.as_tuple()
        if any(not isinstance(v, int) or isinstance(v, bool) for v in values):
            raise InvalidInput("timelock parameters must be integers (EVM blocks)")
        if any(v <= 0 for v in values):
            raise InvalidInput("timelock parameters must all be positive")
        if self.t_btc_escrow <= self.t_borrower:
            raise InvalidInput("t_0 (escrow) must exceed t_B (offer acceptance)")
        if self.t_btc_collateral <= self.t_lender + self.loan_duration:
            raise InvalidInput("t_1 (collateral) must exceed t_L + D")

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return (
            self.loan_duration,
            self.t_borrower,
            self.t_btc_escrow,
            self.t_lender,
            self.t_btc_collateral,
        )

    def check_bitcoin_locks(self, evm_blocks_per_bitcoin_block: int) -> None:
        """t_0 and t_1 must fit a CSV lock once converted to Bitcoin blocks."""
        if evm_blocks_per_bitcoin_block <= 0:
            raise InvalidInput("EVM blocks per Bitcoin block must be positive")
        for name, value in (("t_0", self.t_btc_escrow), ("t_1", self.t_btc_collateral)):
            blocks = value // evm_blocks_per_bitcoin_block
            if not 1 <= blocks <= MAX_CSV_BLOCKS:
                raise InvalidInput(
                    f"{name} = {value} EVM blocks is {blocks} Bitcoin blocks; "
                    f"a CSV lock needs 1 to {MAX_CSV_BLOCKS}"
                )


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    loan_address: ChecksumAddress
    etherswap_address: ChecksumAddress
    block_number: int  # the loan contract's deployment block: where indexing starts
    lender_address: ChecksumAddress | None  # None when only the addresses came from the environment
    # What deploy_contracts deployed; None when unknown (addresses from the environment, or
    # recorded before flavours): the service then detects it from the bytecode.
    flavour: str | None = None


def validate_xonly_pubkey(pubkey: str, what: str = "lender BTC public key") -> str:
    if not isinstance(pubkey, str) or not XONLY_PUBKEY_PATTERN.match(pubkey):
        raise InvalidInput(f"the {what} must be 64 hex characters (an x-only key)")
    return pubkey.lower()


def deploy_contracts(
    *,
    w3: Web3,
    lender_private_key: str,
    lender_btc_pubkey: str,
    parameters: TimelockParameters,
    expected_chain_id: int,
    flavour: ContractFlavour = ContractFlavour.BTCLOAN,
) -> Deployment:
    """Deploy both contracts from the lender's key and link EtherSwap to the loan contract.
    `flavour` seed deploys our reproduction of the earlier prototype's loan contract (tests)."""
    pubkey = validate_xonly_pubkey(lender_btc_pubkey)
    loan_name = FLAVOUR_ARTIFACTS[ContractFlavour(flavour)]
    loan_artifact = load_artifact(loan_name)
    swap_artifact = load_artifact(ETHERSWAP_CONTRACT)
    sender = TransactionSender(
        w3,
        lender_private_key,
        expected_chain_id=expected_chain_id,
        error_abis=[loan_artifact["abi"], swap_artifact["abi"]],
    )
    sender.ensure_chain()
    loan_factory = w3.eth.contract(abi=loan_artifact["abi"], bytecode=loan_artifact["bytecode"])
    swap_factory = w3.eth.contract(abi=swap_artifact["abi"], bytecode=swap_artifact["bytecode"])
    loan_constructor = loan_factory.constructor(pubkey, *parameters.as_tuple())
    _check_funds(w3, sender.address, loan_constructor, swap_factory)

    loan_receipt = sender.send(loan_constructor, label=f"deploy {loan_name}")
    loan_address = Web3.to_checksum_address(str(loan_receipt["contractAddress"]))
    try:
        swap_receipt = sender.send(
            swap_factory.constructor(loan_address), label=f"deploy {ETHERSWAP_CONTRACT}"
        )
        swap_address = Web3.to_checksum_address(str(swap_receipt["contractAddress"]))
        loan = w3.eth.contract(address=loan_address, abi=loan_artifact["abi"])
        sender.send(loan.functions.setEtherSwapAddress(swap_address))
    except EvmError as exc:
        raise DeploymentError(
            f"{loan_name} was deployed at {loan_address} but linking EtherSwap failed "
            f"({exc}); it is unusable and was not recorded: deploy again"
        ) from exc
    return Deployment(
        chain_id=expected_chain_id,
        loan_address=loan_address,
        etherswap_address=swap_address,
        block_number=int(loan_receipt["blockNumber"]),
        lender_address=sender.address,
        flavour=ContractFlavour(flavour).value,
    )


def _check_funds(
    w3: Web3, lender: str, loan_constructor: ContractConstructor, swap_factory: type[Contract]
) -> None:
    """Refuse to start a deployment the lender cannot finish paying for."""
    sender_params: TxParams = {"from": Web3.to_checksum_address(lender)}
    try:
        loan_gas = int(loan_constructor.estimate_gas(sender_params))
        # Any address with code stands in for the loan contract in the estimate.
        swap_gas = int(swap_factory.constructor(lender).estimate_gas(sender_params))
    except (ContractLogicError, Web3RPCError) as exc:
        raise NodeRejected(f"the node could not estimate the deployment: {exc}") from exc
    gas_price = int(w3.eth.gas_price)
    needed = (loan_gas + swap_gas + LINK_GAS_ALLOWANCE) * gas_price
    balance = int(w3.eth.get_balance(Web3.to_checksum_address(lender)))
    if balance < needed:
        raise NodeRejected(
            f"the lender {lender} holds {balance} wei; deploying needs about {needed} wei"
        )


# --- Where the service finds the contracts --------------------------------------------------


def record_deployment(path: Path, deployment: Deployment) -> None:
    """Write the deployment as a small JSON file, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(deployment), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_deployment(path: Path) -> Deployment | None:
    """The recorded deployment, or None when the file does not exist."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise InvalidInput(f"{path} is not valid JSON: {exc}") from exc
    try:
        lender = raw.get("lender_address")
        return Deployment(
            chain_id=int(raw["chain_id"]),
            loan_address=Web3.to_checksum_address(raw["loan_address"]),
            etherswap_address=Web3.to_checksum_address(raw["etherswap_address"]),
            block_number=int(raw["block_number"]),
            lender_address=Web3.to_checksum_address(lender) if lender else None,
            flavour=raw.get("flavour"),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidInput(f"{path} is not a deployment record: {exc}") from exc


def configured_deployment() -> Deployment | None:
    """What the service uses: LOAN_CONTRACT_ADDRESS / ETHERSWAP_CONTRACT_ADDRESS when set
    (both, with EVM_START_BLOCK as the first block), else settings.DEPLOYMENT_FILE, else None.
    A deployment file recorded on another chain than EVM_CHAIN_ID is an error, not a fallback.
    """
    from django.conf import settings

    loan_env = str(settings.LOAN_CONTRACT_ADDRESS or "").strip()
    swap_env = str(settings.ETHERSWAP_CONTRACT_ADDRESS or "").strip()
    recorded = read_deployment(Path(settings.DEPLOYMENT_FILE))
    if recorded is not None and recorded.chain_id != settings.EVM_CHAIN_ID:
        raise InvalidInput(
            f"{settings.DEPLOYMENT_FILE} records chain {recorded.chain_id}, "
            f"but EVM_CHAIN_ID is {settings.EVM_CHAIN_ID}"
        )
    if not loan_env and not swap_env:
        return recorded
    if not (loan_env and swap_env):
        raise InvalidInput(
            "set both LOAN_CONTRACT_ADDRESS and ETHERSWAP_CONTRACT_ADDRESS, or neither"
        )
    try:
        loan_address = Web3.to_checksum_address(loan_env)
        swap_address = Web3.to_checksum_address(swap_env)
    except ValueError as exc:
        raise InvalidInput(f"a configured contract address is not an address: {exc}") from exc
    if recorded is not None and (recorded.loan_address, recorded.etherswap_address) == (
        loan_address,
        swap_address,
    ):
        return recorded
    return Deployment(
        chain_id=int(settings.EVM_CHAIN_ID),
        loan_address=loan_address,
        etherswap_address=swap_address,
        block_number=int(settings.EVM_START_BLOCK),
        lender_address=None,
    )
