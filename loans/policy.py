"""The lender's rules: when an offer is safe (PROTOCOL.md, duty 1), and which lender actions
run by themselves or wait for an operator's approval.

Pure functions over observed facts; the services gather the facts and record the verdict.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from django.conf import settings


class LenderAction(enum.StrEnum):
    ASSOCIATE_HASH = "associate_hash"
    OFFER = "offer"
    ACCEPT_REPAYMENT = "accept_repayment"
    WITHDRAW_OFFER = "withdraw_offer"
    MARK_DEFAULT = "mark_default"
    BROADCAST_COLLATERAL_LOCK = "broadcast_collateral_lock"
    SWEEP = "sweep"


# Duties whose delay can cost the lender the collateral never wait for an operator.
ALWAYS_AUTOMATIC = frozenset({LenderAction.BROADCAST_COLLATERAL_LOCK, LenderAction.SWEEP})


def needs_approval(action: LenderAction) -> bool:
    """True when settings put this lender action behind an operator's approval."""
    if action in ALWAYS_AUTOMATIC:
        return False
    configured = set(settings.LENDER_ACTIONS_REQUIRING_APPROVAL)
    return "all" in configured or action.value in configured


@dataclass(frozen=True)
class EscrowUtxo:
    """The escrow outpoint as the Bitcoin node reports it (None when missing or spent)."""

    script_pubkey: str
    value_sats: int
    confirmations: int
    confirmed_height: int | None


@dataclass(frozen=True)
class OfferFacts:
    expected_script_pubkey: str
    utxo: EscrowUtxo | None
    required_sats: int
    signature_verified: bool
    btc_head: int
    escrow_csv_blocks: int
    timelock_borrower_evm: int
    evm_blocks_per_btc_block: int
    min_confirmations: int
    tx1_confirmation_allowance: int
    safety_margin: int
    fee_estimate_missing: bool = False  # mainnet and the node has no fee estimate


def borrower_window_btc_blocks(timelock_borrower_evm: int, evm_blocks_per_btc_block: int) -> int:
    """t_B in Bitcoin blocks, rounded up: the borrower may take that long to accept."""
    return -(-timelock_borrower_evm // evm_blocks_per_btc_block)


@dataclass(frozen=True)
class Refusal:
    reason: str
    # Permanent: no later fact can cure it (the outpoint is fixed on chain, and the exit
    # window only shrinks), so the request is invalid. Otherwise: wait and look again.
    permanent: bool


def offer_refusals(facts: OfferFacts) -> list[Refusal]:
    """Every reason not to offer (yet); an empty list means the offer is safe to send.

    The escrow's exit path opens `escrow_csv_blocks` after its confirmation. Once offered, the
    borrower has t_B to accept and TX_1 then needs time to confirm: all of it, plus a margin,
    must fit before the exit opens, or the borrower could take the loan and the escrow.
    """
    utxo = facts.utxo
    if utxo is None:
        return [Refusal("escrow outpoint is not in the UTXO set (not yet funded, or spent)", False)]
    reasons = []
    if utxo.script_pubkey != facts.expected_script_pubkey:
        reasons.append(
            Refusal("escrow outpoint does not pay the escrow address derived for this loan", True)
        )
    if utxo.value_sats < facts.required_sats:
        reasons.append(
            Refusal(
                f"escrow deposit is {utxo.value_sats} sats, below the {facts.required_sats} "
                "required",
                True,
            )
        )
    if utxo.confirmations < facts.min_confirmations or utxo.confirmed_height is None:
        reasons.append(
            Refusal(
                f"escrow deposit has {utxo.confirmations} confirmations, "
                f"{facts.min_confirmations} required",
                False,
            )
        )
    if not facts.signature_verified:
        reasons.append(Refusal("no verified borrower pre-signature on TX_1", False))
    if facts.fee_estimate_missing:
        reasons.append(Refusal("no fee estimate from the Bitcoin node: TX_1 fee unknown", False))
    if utxo.confirmed_height is not None:
        exit_opens = utxo.confirmed_height + facts.escrow_csv_blocks
        left = exit_opens - (facts.btc_head + 1)
        needed = (
            borrower_window_btc_blocks(facts.timelock_borrower_evm, facts.evm_blocks_per_btc_block)
            + facts.tx1_confirmation_allowance
            + facts.safety_margin
        )
        if left <= needed:
            reasons.append(
                Refusal(
                    f"escrow CSV window too short: {left} Bitcoin blocks until the borrower "
                    f"can exit, more than {needed} needed (t_B + TX_1 confirmation + margin)",
                    True,
                )
            )
    return reasons
