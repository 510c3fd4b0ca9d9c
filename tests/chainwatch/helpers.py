"""Driving loans on the real contracts for the chainwatch tests."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from web3.types import TxReceipt

from chainwatch.evm.driver import DecodedEvent
from chainwatch.models import EvmEvent
from tests.chainwatch.conftest import Chain


def secret() -> tuple[bytes, bytes]:
    preimage = os.urandom(32)
    return preimage, hashlib.sha256(preimage).digest()


def request_loan(
    chain: Chain, borrower: int, *, amount: int = 10**16
) -> tuple[int, bytes, TxReceipt]:
    preimage, preimage_hash = secret()
    result = chain.borrower(borrower).request_loan(
        amount_wei=amount,
        btc_address="bcrt1p" + "q" * 58,
        btc_pubkey=os.urandom(32).hex(),
        preimage_hash=preimage_hash,
        escrow_txid=os.urandom(32),
        escrow_vout=borrower,
    )
    return result.loan_id, preimage, result.receipt


def full_lifecycle(chain: Chain, borrower: int = 1) -> tuple[int, list[TxReceipt]]:
    """Request, associate, offer, accept, repay, accept the repayment, delete."""
    loan_id, p_b, requested = request_loan(chain, borrower)
    p_l, h_l = secret()
    lender, party = chain.lender, chain.borrower(borrower)
    receipts = [
        requested,
        lender.associate_preimage_hash(loan_id, h_l),
        lender.extend_offer(loan_id, preimage_hash_lender=h_l),
        party.accept_offer(loan_id, p_b),
        party.attempt_repayment(loan_id),
        lender.accept_repayment(loan_id, p_l),
        party.delete_loan(loan_id),
    ]
    return loan_id, receipts


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return value


def expected_events(chain: Chain, receipts: list[TxReceipt]) -> list[tuple[Any, ...]]:
    """(tx hash, log index, name, args) as web3's own decoder reads the receipts."""
    out = []
    for receipt in receipts:
        decoded: list[DecodedEvent] = chain.contracts.contracts.decode_events(receipt)
        for event in decoded:
            out.append(
                (
                    "0x" + bytes(receipt["transactionHash"]).hex(),
                    event.log_index,
                    event.name,
                    {k: _plain(v) for k, v in event.args.items()},
                )
            )
    return out


def stored_events(**filters: Any) -> list[tuple[Any, ...]]:
    return [
        (e.transaction_hash, e.log_index, e.event_name, e.args)
        for e in EvmEvent.objects.filter(**filters).order_by("block_number", "log_index")
    ]
