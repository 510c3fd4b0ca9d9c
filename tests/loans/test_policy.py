"""The offer conditions of PROTOCOL.md, duty 1: each one, alone, blocks the offer."""

from __future__ import annotations

from dataclasses import replace

import pytest

from loans.policy import (
    EscrowUtxo,
    LenderAction,
    OfferFacts,
    borrower_window_btc_blocks,
    needs_approval,
    offer_refusals,
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


def test_the_window_boundary_is_strict():
    # Exit opens at 300; needed = 50 + 6 + 6 = 62; head 236 leaves 63 (ok), 237 leaves 62 (no).
    assert offer_refusals(replace(SAFE, btc_head=236)) == []
    assert offer_refusals(replace(SAFE, btc_head=237)) != []


def test_the_borrower_window_rounds_up():
    assert borrower_window_btc_blocks(1000, 20) == 50
    assert borrower_window_btc_blocks(1001, 20) == 51


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
