"""The offer conditions of PROTOCOL.md, duty 1: each one, alone, blocks the offer."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from loans.policy import (
    EscrowUtxo,
    LenderAction,
    OfferFacts,
    exit_before_tx1_risk,
    feerate_with_headroom,
    needs_approval,
    offer_refusals,
    poisson_tail,
    tx1_feerate,
)

SCRIPT = "5120" + "ab" * 32
DEPOSIT = EscrowUtxo(
    script_pubkey=SCRIPT, value_sats=1_020_000, confirmations=6, confirmed_height=200
)
SAFE = OfferFacts(
    expected_script_pubkey=SCRIPT,
    utxo=DEPOSIT,
    required_sats=1_015_000,
    signature_verified=True,
    btc_head=205,
    escrow_csv_blocks=100,  # exit opens at 300
    timelock_borrower_evm=1000,  # 50 Bitcoin blocks at 20 EVM blocks each
    evm_blocks_per_btc_block=20,
    min_confirmations=6,
    tx1_confirmation_allowance=6,
    safety_margin=6,
)


def test_a_safe_escrow_has_no_refusal():
    assert offer_refusals(SAFE) == []


@pytest.mark.parametrize(
    ("change", "reason", "permanent"),
    [
        ({"utxo": None}, "not in the UTXO set", False),
        ({"expected_script_pubkey": "5120" + "cd" * 32}, "does not pay the escrow address", True),
        ({"required_sats": 1_020_001}, "below the 1020001 required", True),
        ({"signature_verified": False}, "no verified borrower pre-signature", False),
        ({"btc_head": 237}, "escrow CSV window too short: 62 Bitcoin blocks", True),
        ({"fee_estimate_missing": True}, "no fee estimate from the Bitcoin node", False),
    ],
)
def test_each_condition_alone_refuses_the_offer(change, reason, permanent):
    refusals = offer_refusals(replace(SAFE, **change))
    assert len(refusals) == 1
    assert reason in refusals[0].reason
    assert refusals[0].permanent is permanent


def test_too_few_confirmations_refuses_for_now():
    utxo = replace(DEPOSIT, confirmations=5)
    (refusal,) = offer_refusals(replace(SAFE, utxo=utxo))
    assert refusal.reason == "escrow deposit has 5 confirmations, 6 required"
    assert refusal.permanent is False


def test_an_unconfirmed_deposit_refuses_without_a_window_verdict():
    utxo = replace(DEPOSIT, confirmations=0, confirmed_height=None)
    assert [r.reason for r in offer_refusals(replace(SAFE, utxo=utxo))] == [
        "escrow deposit has 0 confirmations, 6 required"
    ]


def test_the_window_boundary_is_the_risk_bound():
    # Exit opens at 300; t_B is 50 Bitcoin blocks on average and TX_1 needs 6. Head 206 leaves
    # 93 blocks: late iff >= 88 arrive during t_B, P = 7.5e-7 (ok); head 207 leaves 92: >= 87,
    # P = 1.3e-6 (no). A fixed margin (the old rule) would have offered down to 63 blocks,
    # where the chance is 4 %.
    assert offer_refusals(replace(SAFE, btc_head=206)) == []
    (refusal,) = offer_refusals(replace(SAFE, btc_head=207))
    assert "92 Bitcoin blocks" in refusal.reason
    assert "1.3e-06" in refusal.reason
    assert offer_refusals(replace(SAFE, btc_head=207, window_risk=1e-5)) == []


def test_approval_policy_from_settings(settings):
    settings.LENDER_ACTIONS_REQUIRING_APPROVAL = []
    assert not needs_approval(LenderAction.ACCEPT_REPAYMENT)
    settings.LENDER_ACTIONS_REQUIRING_APPROVAL = ["accept_repayment"]
    assert needs_approval(LenderAction.ACCEPT_REPAYMENT)
    assert not needs_approval(LenderAction.OFFER)
    settings.LENDER_ACTIONS_REQUIRING_APPROVAL = ["all"]
    assert needs_approval(LenderAction.OFFER)
    # Safety duties are never held back, whatever the policy says.
    assert not needs_approval(LenderAction.SWEEP)
    assert not needs_approval(LenderAction.BROADCAST_COLLATERAL_LOCK)


# --- the offer window risk bound (docs/security.md) -------------------------------------------
def _tail_by_cdf(mean: float, k: int) -> float:
    """The textbook 1 - P(N < k), with exact fractions: the reference for the fast sum."""
    from fractions import Fraction

    term, cdf = Fraction(1), Fraction(0)
    for i in range(k):
        cdf += term
        term = term * Fraction(mean) / (i + 1)
    return float(1 - cdf * Fraction(math.exp(-mean)))


@pytest.mark.parametrize(("mean", "k"), [(50.0, 63), (50.0, 88), (11.0, 31), (2.5, 1), (8.0, 30)])
def test_the_poisson_tail_matches_the_textbook_sum(mean, k):
    assert poisson_tail(mean, k) == pytest.approx(_tail_by_cdf(mean, k), rel=1e-6)


def test_the_poisson_tail_edges():
    assert poisson_tail(50.0, 0) == 1.0
    assert poisson_tail(0.0, 3) == 0.0
    assert poisson_tail(50.0, 1) == pytest.approx(1 - math.exp(-50.0))
    # Monotone: more blocks needed is less likely.
    tails = [poisson_tail(50.0, k) for k in range(40, 120)]
    assert tails == sorted(tails, reverse=True)


def test_the_default_parameters_carry_the_risk_the_issue_measured():
    # Default t_B = 1000 EVM blocks at 20 per Bitcoin block: 50 expected. The old rule offered
    # with 63 blocks to spare (50 + 6 + 6 + 1); the chance of >= 63 blocks is about 4 %.
    assert poisson_tail(50.0, 63) == pytest.approx(0.0424, abs=5e-4)
    risk = exit_before_tx1_risk(
        blocks_left=63 + 6 - 1,
        acceptance_evm_blocks=1000,
        evm_blocks_per_btc_block=20,
        tx1_confirmation_allowance=6,
    )
    assert risk == pytest.approx(0.0424, abs=5e-4)


def test_the_risk_counts_the_activation_confirmations_and_the_ratio():
    base = {"blocks_left": 40, "evm_blocks_per_btc_block": 1, "tx1_confirmation_allowance": 2}
    assert exit_before_tx1_risk(acceptance_evm_blocks=8, **base) < exit_before_tx1_risk(
        acceptance_evm_blocks=10, **base
    )
    # Ten EVM blocks per Bitcoin block: the same t_B is a tenth of the Bitcoin blocks.
    slow = {**base, "evm_blocks_per_btc_block": 10}
    assert exit_before_tx1_risk(acceptance_evm_blocks=100, **slow) == pytest.approx(
        exit_before_tx1_risk(acceptance_evm_blocks=10, **base)
    )


# --- quotes with headroom, TX_1 at the best affordable rate -----------------------------------
def test_the_quote_headroom_rounds_up():
    assert feerate_with_headroom(20, 50) == 30
    assert feerate_with_headroom(3, 50) == 5  # 4.5 -> 5: a 1 sat/vB rise is always covered
    assert feerate_with_headroom(7, 0) == 7


@pytest.mark.parametrize(
    ("deposit", "chosen", "missing"),
    [
        (1_000_000 + 150 * 30, 30, 0),  # the quote at today's 20 + 50 %: built at 30
        (1_000_000 + 150 * 21, 21, 0),  # the fee rose 1 after the quote at 20 (no headroom)
        (1_000_000 + 150 * 35 + 149, 30, 0),  # more than the quote: capped, the rest collateral
        (1_000_000 + 150 * 5 + 10, 5, 0),  # short of today's rate, above the floor: the best
        (1_000_000 + 150 * 2 - 1, None, 1),  # one sat short of the relay floor
        (900_000, None, 100_000 + 300),  # short of the collateral itself
    ],
)
def test_tx1_is_built_at_the_best_rate_the_deposit_affords(deposit, chosen, missing):
    plan = tx1_feerate(
        deposit_sats=deposit,
        fixed_sats=1_000_000,
        tx1_vsize=150,
        today_sat_vb=20,
        headroom_percent=50,
        floor_sat_vb=2,
    )
    assert (plan.feerate_sat_vb, plan.missing_sats) == (chosen, missing)
