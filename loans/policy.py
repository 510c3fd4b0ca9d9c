"""The lender's rules: when an offer is safe (PROTOCOL.md, duty 1), and which lender actions
run by themselves or wait for an operator's approval.

Pure functions over observed facts; the services gather the facts and record the verdict.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from django.conf import settings


class LenderAction(enum.StrEnum):
    ASSOCIATE_HASH = "associate_hash"
    OFFER = "offer"
    ACCEPT_REPAYMENT = "accept_repayment"
    WITHDRAW_OFFER = "withdraw_offer"
    MARK_DEFAULT = "mark_default"
    # Housekeeping: the seed's contract lets a borrower borrow again only once this ran.
    DELETE_LOAN = "delete_loan"
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
    # EVM confirmations LoanActivated needs before TX_1 goes out (they add to t_B).
    evm_confirmations: int = 0
    # The largest accepted probability that the escrow exit opens before TX_1 can confirm.
    window_risk: float = 1e-6


def poisson_tail(mean: float, k: int) -> float:
    """P(N >= k) for N ~ Poisson(mean), summed from k upward (no 1 - cdf cancellation, so a
    tail of 1e-12 is as exact as one of 0.5)."""
    if k <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    term = math.exp(-mean + k * math.log(mean) - math.lgamma(k + 1))
    total, i = 0.0, k
    while term > total * 1e-17:
        total += term
        i += 1
        term *= mean / i
    return min(total, 1.0)


def exit_before_tx1_risk(
    *,
    blocks_left: int,
    acceptance_evm_blocks: int,
    evm_blocks_per_btc_block: int,
    tx1_confirmation_allowance: int,
) -> float:
    """The probability that the borrower's escrow exit opens before TX_1 can confirm, if the
    offer goes out now (docs/security.md, "Offer window risk bound").

    `blocks_left` Bitcoin blocks can still be mined before the exit path is valid. While the
    borrower may accept (t_B plus the activation's confirmations, `acceptance_evm_blocks`), N
    Bitcoin blocks arrive, N ~ Poisson(acceptance_evm_blocks / evm_blocks_per_btc_block);
    TX_1 then needs `tx1_confirmation_allowance` blocks. It is late iff N + allowance >
    blocks_left, i.e. N >= blocks_left - allowance + 1.
    """
    mean = acceptance_evm_blocks / evm_blocks_per_btc_block
    return poisson_tail(mean, blocks_left - tx1_confirmation_allowance + 1)


def feerate_with_headroom(feerate_sat_vb: int, headroom_percent: int) -> int:
    """A feerate raised by `headroom_percent`, rounded up: what a quoted deposit covers, so a
    fee rise between the quote and the deposit does not leave it short."""
    return -(-feerate_sat_vb * (100 + headroom_percent) // 100)


@dataclass(frozen=True)
class Tx1Feerate:
    """The feerate TX_1 is built at, or None with the sats a deposit lacks for the floor."""

    feerate_sat_vb: int | None
    missing_sats: int = 0


def tx1_feerate(
    *,
    deposit_sats: int,
    fixed_sats: int,
    tx1_vsize: int,
    today_sat_vb: int,
    headroom_percent: int,
    floor_sat_vb: int,
) -> Tx1Feerate:
    """The best feerate the deposit affords for TX_1 (after the collateral and the
    origination fee, `fixed_sats`), capped at today's rate plus the quote's headroom (beyond
    that the excess goes to the collateral). Below the relay floor: how much is missing."""
    affordable = max(0, deposit_sats - fixed_sats) // tx1_vsize
    if affordable < floor_sat_vb:
        return Tx1Feerate(None, fixed_sats + floor_sat_vb * tx1_vsize - deposit_sats)
    return Tx1Feerate(min(affordable, feerate_with_headroom(today_sat_vb, headroom_percent)))


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
        window = _window_refusal(facts, utxo.confirmed_height)
        if window is not None:
            reasons.append(window)
    return reasons


def _window_refusal(facts: OfferFacts, confirmed_height: int) -> Refusal | None:
    """The escrow's exit path opens `escrow_csv_blocks` after its confirmation. Once offered,
    the borrower has t_B to accept and TX_1 then needs time to confirm: the chance that the
    exit opens first must stay under the risk bound (and a fixed margin must be left)."""
    left = confirmed_height + facts.escrow_csv_blocks - (facts.btc_head + 1)
    risk = exit_before_tx1_risk(
        blocks_left=left,
        acceptance_evm_blocks=facts.timelock_borrower_evm + facts.evm_confirmations,
        evm_blocks_per_btc_block=facts.evm_blocks_per_btc_block,
        tx1_confirmation_allowance=facts.tx1_confirmation_allowance,
    )
    floor = facts.tx1_confirmation_allowance + facts.safety_margin
    if risk < facts.window_risk and left > floor:
        return None
    return Refusal(
        f"escrow CSV window too short: {left} Bitcoin blocks until the borrower can exit; "
        f"the chance that it opens before TX_1 can confirm is {risk:.1e} "
        f"(at most {facts.window_risk:.0e} accepted, and more than {floor} blocks)",
        True,
    )
