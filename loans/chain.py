"""What the loan engine reads from the two chains, through the apps' injected clients.

Every function here talks to a node: call them outside `transaction.atomic()`, then write.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

from django.conf import settings
from web3 import Web3
from web3.types import BlockIdentifier

from bitcoin.fees import target_feerate
from bitcoin.rpc import get_client
from bitcoin.signer import get_signer
from chainwatch.client import get_web3
from chainwatch.evm.deploy import Deployment, configured_deployment
from chainwatch.evm.driver import LoanContracts, LoanState, LoanTerms
from chainwatch.evm.flavour import ContractFlavour, contract_flavour
from loans.policy import EscrowUtxo
from vaultero import key_path_address


class ChainNotConfigured(Exception):
    """No contract deployment is configured: nothing to read from or act on."""


def loan_contracts() -> LoanContracts:
    deployment = configured_deployment()
    if deployment is None:
        raise ChainNotConfigured(
            "no contracts: set LOAN_CONTRACT_ADDRESS and ETHERSWAP_CONTRACT_ADDRESS, "
            "or run `manage.py deploy_contracts`"
        )
    return _contracts_for(get_web3(), deployment)


@lru_cache(maxsize=8)
def _contracts_for(w3: Web3, deployment: Deployment) -> LoanContracts:
    """Built once per client and deployment: building parses both ABIs (tens of ms), which
    every intake, guard and watchdog pass otherwise paid several times over."""
    return LoanContracts.from_deployment(w3, deployment)


def loan_contract_flavour() -> ContractFlavour:
    """The watched loan contract's semantics (detected once, checked against
    LOAN_CONTRACT_FLAVOUR; a contradiction raises FlavourError and nothing acts)."""
    contracts = loan_contracts()
    return contract_flavour(
        contracts.w3,
        chain_id=contracts.chain_id,
        loan_address=str(contracts.loan.address),
        configured=str(settings.LOAN_CONTRACT_FLAVOUR),
    )


def global_loan_duration(*, block: BlockIdentifier = "latest") -> int:
    """The contract's current loanDuration: what the seed flavour's live loans read."""
    return int(loan_contracts().loan.functions.loanDuration().call(block_identifier=block))


@dataclass(frozen=True)
class RequestSnapshot:
    """The loan as the contract saw it at the end of its request block."""

    state: LoanState
    terms: LoanTerms
    t_btc_escrow: int
    t_btc_collateral: int
    lender_btc_pubkey: str
    flavour: ContractFlavour


def read_request_snapshot(*, onchain_id: int, block: int) -> RequestSnapshot:
    state, terms, timelocks, lender_key = loan_contracts().request_snapshot(onchain_id, block=block)
    return RequestSnapshot(
        state=state,
        terms=terms,
        # getLoanParameters has no t_0/t_1: the globals in force at the request are the ones
        # the borrower built the escrow with.
        t_btc_escrow=timelocks.t_btc_escrow,
        t_btc_collateral=timelocks.t_btc_collateral,
        lender_btc_pubkey=lender_key,
        flavour=loan_contract_flavour(),
    )


def evm_head() -> int:
    return int(get_web3().eth.block_number)


def evm_safe_head() -> int:
    """The newest EVM block deep enough to act on (head - EVM_CONFIRMATIONS)."""
    return max(evm_head() - int(settings.EVM_CONFIRMATIONS), 0)


def bitcoin_head() -> int:
    return get_client().block_count()


def escrow_utxo(*, txid: str, vout: int) -> EscrowUtxo | None:
    """The outpoint from the UTXO set (mempool included), with its confirmation height."""
    client = get_client()
    found = client.tx_out(txid, vout, include_mempool=True)
    if found is None:
        return None
    height = None
    if found.confirmations > 0:
        height = client.block_count() - found.confirmations + 1
    return EscrowUtxo(
        script_pubkey=found.script_pubkey_hex,
        value_sats=found.value_sats,
        confirmations=found.confirmations,
        confirmed_height=height,
    )


def feerate_now() -> int:
    """The sat/vB the lender pays now (estimatesmartfee within the configured floor and cap)."""
    return target_feerate(get_client())


def lender_btc_key() -> str:
    """The lender's x-only Bitcoin key (hex): the signer's public half, never the secret."""
    return get_signer().x_only_public_key().hex()


@cache
def _payout_address(key: str, network: str) -> str:
    return key_path_address(key, network)


def lender_payout_address() -> str:
    """Where the lender's Bitcoin payouts go: its key's own key-path (BIP-86) address, which
    the signer can spend by itself (a CPFP child of TX_1 spends the fee output from there)."""
    return _payout_address(lender_btc_key(), settings.BITCOIN_NETWORK)
