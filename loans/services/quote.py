"""The escrow quote for a borrower about to request a loan, and the protocol parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache

from loans.chain import feerate_now, lender_btc_key, loan_contracts
from loans.policy import feerate_with_headroom
from vaultero import (
    BIP341_NUMS,
    DepositBreakdown,
    csv_blocks_from_evm,
    escrow_output,
    required_deposit,
    sats_from_wei,
)

PARAMETERS_CACHE_SECONDS = 30


def protocol_parameters() -> dict[str, Any]:
    """The parameters in force: the contract's (read at most every 30 s) and the desk's."""
    cached = cache.get("loans:protocol-parameters")
    if cached is not None:
        return dict(cached)
    contracts = loan_contracts()
    fns = contracts.loan.functions
    timelocks = contracts.timelock_parameters()
    parameters = {
        "chain_id": contracts.chain_id,
        "loan_contract": contracts.loan.address,
        "etherswap_contract": contracts.etherswap.address,
        "lender_btc_pubkey": lender_btc_key(),
        "timelocks": {
            "loan_duration": timelocks.loan_duration,
            "t_borrower": timelocks.t_borrower,
            "t_btc_escrow": timelocks.t_btc_escrow,
            "t_lender": timelocks.t_lender,
            "t_btc_collateral": timelocks.t_btc_collateral,
        },
        "processing_fee_wei": str(contracts.processing_fee()),
        "min_loan_amount_wei": str(contracts.min_loan_amount()),
        "lender_bond_percentage": int(fns.LENDER_BOND_PERCENTAGE().call()),
        "origination_fee_percentage": int(fns.ORIGIN_FEE_PERCENTAGE().call()),
        "evm_confirmations": int(settings.EVM_CONFIRMATIONS),
        "bitcoin_network": settings.BITCOIN_NETWORK,
        "bitcoin_confirmations": int(settings.BITCOIN_CONFIRMATIONS),
        "evm_blocks_per_bitcoin_block": int(settings.EVM_BLOCKS_PER_BITCOIN_BLOCK),
        "escrow_internal_key": BIP341_NUMS,
    }
    cache.set("loans:protocol-parameters", parameters, PARAMETERS_CACHE_SECONDS)
    return parameters


class QuoteRefused(ValueError):
    """The quote cannot be given for these inputs (the message says which and why)."""


@dataclass(frozen=True)
class EscrowQuote:
    escrow_address: str
    internal_key: str
    lender_btc_pubkey: str
    csv_blocks: int
    deposit: DepositBreakdown
    request_loan: dict[str, Any]


def escrow_quote(
    *, borrower_btc_pubkey: str, preimage_hash_borrower: str, amount_wei: int
) -> EscrowQuote:
    parameters = protocol_parameters()
    if amount_wei < int(parameters["min_loan_amount_wei"]):
        raise QuoteRefused(
            f"amount_wei is below the contract's minimum of {parameters['min_loan_amount_wei']}"
        )
    csv_blocks = csv_blocks_from_evm(
        parameters["timelocks"]["t_btc_escrow"], int(settings.EVM_BLOCKS_PER_BITCOIN_BLOCK)
    )
    lender_key = parameters["lender_btc_pubkey"]
    escrow = escrow_output(
        borrower_key=borrower_btc_pubkey,
        lender_key=lender_key,
        preimage_hash=preimage_hash_borrower,
        csv_blocks=csv_blocks,
        internal_key=BIP341_NUMS,
    )
    address = escrow.address(settings.BITCOIN_NETWORK)
    deposit = required_deposit(
        loan_sats=sats_from_wei(amount_wei),
        feerate_sat_vb=feerate_with_headroom(
            feerate_now(), int(settings.QUOTE_FEERATE_HEADROOM_PERCENT)
        ),
        network=settings.BITCOIN_NETWORK,
    )
    return EscrowQuote(
        escrow_address=address,
        internal_key=BIP341_NUMS,
        lender_btc_pubkey=lender_key,
        csv_blocks=csv_blocks,
        deposit=deposit,
        request_loan={
            "amount": str(amount_wei),
            "btcAddress": address,
            "btcPubkey": borrower_btc_pubkey,
            "preimageHashBorrower": "0x" + preimage_hash_borrower,
            "txid_p2tr0": "<the funding txid, as RPC prints it>",
            "vout_p2tr0": "<the funding output index>",
            "value_wei": parameters["processing_fee_wei"],
        },
    )
