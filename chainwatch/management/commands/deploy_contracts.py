"""Deploy BtcCollateralLoan + EtherSwap with the lender's key and record where they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import coincurve
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from requests.exceptions import RequestException
from web3 import Web3

from chainwatch.evm.deploy import (
    TimelockParameters,
    deploy_contracts,
    record_deployment,
    validate_xonly_pubkey,
)
from chainwatch.evm.errors import EvmError
from chainwatch.evm.flavour import ContractFlavour

# The seed flavour reproduces the earlier prototype's flawed contract for tests: local chains only.
SEED_FLAVOUR_CHAIN_IDS = frozenset({31337, 1337})

SEED = TimelockParameters()


def lender_btc_pubkey_from_settings() -> str | None:
    """The x-only public key of LENDER_BTC_PRIVATE_KEY / LENDER_BTC_KEY_FILE, if configured."""
    value = str(settings.LENDER_BTC_PRIVATE_KEY or "")
    if not value and settings.LENDER_BTC_KEY_FILE:
        try:
            value = Path(settings.LENDER_BTC_KEY_FILE).read_text()
        except OSError as exc:
            raise CommandError(f"cannot read LENDER_BTC_KEY_FILE: {exc.strerror}") from None
    value = value.strip().removeprefix("0x")
    if not value:
        return None
    try:
        secret = bytes.fromhex(value)
        return coincurve.PublicKeyXOnly.from_secret(secret).format().hex()
    except ValueError:
        raise CommandError(
            "the lender's Bitcoin key in the settings is not 64 hex digits"
        ) from None


class Command(BaseCommand):
    help = (
        "Deploy BtcCollateralLoan and EtherSwap to EVM_RPC_URL from the lender's key, link them, "
        "and write the addresses and deployment block to DEPLOYMENT_FILE."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--lender-key",
            default=None,
            help="lender EVM private key (default: LENDER_EVM_PRIVATE_KEY; prefer the env, "
            "argv is visible to other users)",
        )
        parser.add_argument(
            "--lender-btc-pubkey",
            default=None,
            help="lender x-only Bitcoin key, 64 hex (default: from LENDER_BTC_PRIVATE_KEY)",
        )
        parser.add_argument("--loan-duration", type=int, default=SEED.loan_duration, help="D")
        parser.add_argument("--t-borrower", type=int, default=SEED.t_borrower, help="t_B")
        parser.add_argument("--t-btc-escrow", type=int, default=SEED.t_btc_escrow, help="t_0")
        parser.add_argument("--t-lender", type=int, default=SEED.t_lender, help="t_L")
        parser.add_argument(
            "--t-btc-collateral", type=int, default=SEED.t_btc_collateral, help="t_1"
        )
        parser.add_argument(
            "--flavour",
            choices=[f.value for f in ContractFlavour],
            default=ContractFlavour.BTCLOAN.value,
            help="btcloan (default): our BtcCollateralLoan; seed: a reproduction of the earlier "
            "prototype's contract with its flaws, for tests on a local chain only",
        )
        parser.add_argument("--output", type=Path, default=None, help="default: DEPLOYMENT_FILE")
        parser.add_argument("--rpc-url", default=None, help="default: EVM_RPC_URL")
        parser.add_argument("--chain-id", type=int, default=None, help="default: EVM_CHAIN_ID")

    def handle(self, *args: Any, **options: Any) -> None:
        lender_key = options["lender_key"] or settings.LENDER_EVM_PRIVATE_KEY
        if not lender_key:
            raise CommandError("no lender EVM key: set LENDER_EVM_PRIVATE_KEY or --lender-key")
        pubkey = options["lender_btc_pubkey"] or lender_btc_pubkey_from_settings()
        if not pubkey:
            raise CommandError(
                "no lender Bitcoin key: pass --lender-btc-pubkey or set LENDER_BTC_PRIVATE_KEY"
            )
        output: Path = options["output"] or Path(settings.DEPLOYMENT_FILE)
        rpc_url: str = options["rpc_url"] or settings.EVM_RPC_URL
        chain_id: int = (
            options["chain_id"] if options["chain_id"] is not None else settings.EVM_CHAIN_ID
        )
        flavour = ContractFlavour(options["flavour"])
        if flavour == ContractFlavour.SEED and chain_id not in SEED_FLAVOUR_CHAIN_IDS:
            raise CommandError(
                f"--flavour seed deploys a deliberately flawed contract: only on a local chain "
                f"(chain ids {sorted(SEED_FLAVOUR_CHAIN_IDS)}), not on chain {chain_id}"
            )
        try:
            validate_xonly_pubkey(pubkey)
            parameters = TimelockParameters(
                loan_duration=options["loan_duration"],
                t_borrower=options["t_borrower"],
                t_btc_escrow=options["t_btc_escrow"],
                t_lender=options["t_lender"],
                t_btc_collateral=options["t_btc_collateral"],
            )
            parameters.check_bitcoin_locks(settings.EVM_BLOCKS_PER_BITCOIN_BLOCK)
            w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
            deployment = deploy_contracts(
                w3=w3,
                lender_private_key=lender_key,
                lender_btc_pubkey=pubkey,
                parameters=parameters,
                expected_chain_id=chain_id,
                flavour=flavour,
            )
        except EvmError as exc:
            raise CommandError(str(exc)) from None
        except (RequestException, OSError) as exc:
            raise CommandError(f"cannot reach the EVM node at {rpc_url}: {exc}") from None
        record_deployment(output, deployment)
        self.stdout.write(
            f"{deployment.flavour} loan contract {deployment.loan_address}, EtherSwap "
            f"{deployment.etherswap_address}, chain {deployment.chain_id}, block "
            f"{deployment.block_number}: recorded in {output}"
        )
        if settings.LOAN_CONTRACT_ADDRESS or settings.ETHERSWAP_CONTRACT_ADDRESS:
            self.stderr.write(
                "note: LOAN_CONTRACT_ADDRESS / ETHERSWAP_CONTRACT_ADDRESS are set and win over "
                f"{output}; update them to use this deployment"
            )
