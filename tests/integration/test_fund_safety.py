"""Fund safety findings on real nodes (anvil + the devnode, the desk of tests/support/desk.py):
what the backend had concluded never outweighs what the chains say.

- Finding 1: a Bitcoin block between the offer sent and LoanOffered confirmed leaves the loan
  requested (no evaluation runs once the offer is out), and the offer is then followed.
- Finding 6: a deposit of exactly the quote still makes TX_1 after the fee rose.
- Finding 4: an escrow window the old fixed margin accepted but whose risk is above
  OFFER_WINDOW_RISK is never offered.
- Finding 7: a borrower exit seen in the mempool and replaced by TX_1 leaves no final stage:
  TX_1's facts are applied and the default is swept.
- Finding 8: a withdrawn offer raises no TX_1 alert and its loan's workflows end completed.
"""

from __future__ import annotations

import pytest

from btcloan.models import Alert
from loans.models import (
    AuditEntry,
    BitcoinStage,
    LoanStatus,
    LoanWorkflow,
    WorkflowStatus,
)
from loans.services.quote import escrow_quote
from tests.integration.conftest import Borrower, Desk, known
from tests.integration.test_lifecycles import accepted_and_locked

pytestmark = [pytest.mark.evm, pytest.mark.bitcoin_node, pytest.mark.slow]


def signed(desk: Desk, borrower: Borrower, **request: object) -> int:
    """Requested, escrow confirmed, TX_1 built: the borrower has not signed yet."""
    onchain_id = desk.request(borrower, **request)  # type: ignore[arg-type]
    desk.until(lambda: desk.loan(onchain_id).collateral_lock_feerate is not None)
    return onchain_id


def offered(desk: Desk, borrower: Borrower) -> int:
    onchain_id = signed(desk, borrower)
    desk.presign(borrower, onchain_id)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.OFFERED)
    return onchain_id


def blocks_left(desk: Desk, onchain_id: int) -> int:
    """Bitcoin blocks that can still be mined before the borrower's exit path is valid."""
    loan = desk.loan(onchain_id)
    return known(loan.escrow_confirmed_height) + loan.escrow_csv_blocks - (desk.btc_height() + 1)


def test_finding_1_a_bitcoin_block_after_the_offer_went_out_does_not_invalidate_it(desk: Desk):
    borrower = desk.borrower()
    onchain_id = signed(desk, borrower)
    desk.presign(borrower, onchain_id)
    desk.pump()  # the offer is judged safe, signed and mined; LoanOffered waits 2 confirmations
    assert AuditEntry.objects.filter(
        loan=desk.loan(onchain_id), action="lender_action_sent", details__action="offer"
    ).exists()
    assert desk.loan(onchain_id).status == LoanStatus.REQUESTED
    # Bitcoin blocks in the gap: a fresh evaluation would now find the window too short.
    desk.mine_btc(blocks_left(desk, onchain_id) - 10)
    desk.pump()  # the watchdog runs; before the fix it moved the loan to invalid (final)
    loan = desk.loan(onchain_id)
    assert loan.status == LoanStatus.REQUESTED
    assert not AuditEntry.objects.filter(loan=loan, to_value=LoanStatus.INVALID).exists()
    # The confirmed offer is applied, and the loan followed: activation sends TX_1.
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.OFFERED)
    accepted_and_locked(desk, borrower, onchain_id)


def test_finding_4_a_window_the_old_margin_accepted_is_refused_by_the_risk_bound(desk: Desk):
    borrower = desk.borrower()
    onchain_id = signed(desk, borrower)
    # t_B = 8 EVM blocks + 2 confirmations at one EVM block per Bitcoin block: 10 expected
    # Bitcoin blocks. The old rule offered with more than 8 + 2 + 2 = 12 blocks left; at 20
    # left, P(>= 19 blocks during acceptance) = 7.2e-3, far above 1e-6.
    desk.mine_btc(blocks_left(desk, onchain_id) - 20)
    desk.presign(borrower, onchain_id)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.INVALID, evm=1)
    loan = desk.loan(onchain_id)
    assert "escrow CSV window too short: 20 Bitcoin blocks" in loan.invalid_reason
    assert "7.2e-03" in loan.invalid_reason
    assert not AuditEntry.objects.filter(
        loan=loan, action="lender_action_sent", details__action="offer"
    ).exists()


def test_finding_7_an_exit_replaced_by_tx1_leaves_no_final_stage(desk: Desk):
    borrower = desk.borrower()
    onchain_id = offered(desk, borrower)
    # The escrow's exit path opens and the borrower's exit reaches the mempool first.
    desk.mine_btc(blocks_left(desk, onchain_id))
    exit_txid = desk.send_btc(borrower.exit(desk.loan(onchain_id), feerate=2))
    desk.pump()
    assert desk.loan(onchain_id).bitcoin_stage == BitcoinStage.EXITED
    # The borrower activates. The exit is only in the mempool, not final: TX_1's guard reads
    # the confirmed UTXO set, so the desk's own TX_1 goes out and replaces the exit (it pays
    # more, or goes as a package with a child).
    borrower.actions.accept_offer(onchain_id, borrower.preimage)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.ACTIVE)
    desk.until(lambda: exit_txid not in desk.node.rpc("getrawmempool"), evm=0)
    loan = desk.loan(onchain_id)
    assert loan.collateral_txid in desk.node.rpc("getrawmempool")
    desk.pump()  # spend_dropped (the exit), spend_seen (TX_1)
    loan = desk.loan(onchain_id)
    assert loan.bitcoin_stage == BitcoinStage.COLLATERAL_LOCKED  # not exited: not final
    assert AuditEntry.objects.filter(loan=loan, action="rederived").exists()
    desk.until(
        lambda: desk.loan(onchain_id).bitcoin_stage == BitcoinStage.COLLATERAL_CONFIRMED,
        evm=0,
        btc=1,
    )
    # The borrower never repays: the default is marked and the collateral swept after t1.
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.DEFAULTED, evm=5)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.CLOSED, evm=0, btc=5)
    assert desk.loan(onchain_id).bitcoin_stage == BitcoinStage.SWEPT


def test_finding_8_a_withdrawn_offer_raises_no_tx1_alert_and_its_workflows_end(
    desk: Desk, settings
):
    settings.LOAN_ALERT_TX1_MARGIN_BLOCKS = 30  # the exit is always "near" in the desk
    borrower = desk.borrower()
    onchain_id = offered(desk, borrower)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REFUNDED_TO_LENDER, evm=3)
    loan = desk.loan(onchain_id)
    desk.mine_btc(blocks_left(desk, onchain_id))
    desk.pump()  # the watchdog looks at the escrow's exit margin: nothing is owed any more
    assert not Alert.objects.filter(key=f"loan:{loan.pk}:escrow_exit").exists()
    desk.send_btc(borrower.exit(loan))
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.CLOSED, evm=0, btc=1)
    statuses = set(LoanWorkflow.objects.filter(loan=loan).values_list("status", flat=True))
    assert statuses == {WorkflowStatus.COMPLETED}


def _fee_estimate(desk: Desk, sat_vb: int | None) -> None:
    """The devnode's fee estimate (its dev RPC), in sat/vB; None: "insufficient data"."""
    desk.node.rpc("devsetfeeestimate", None if sat_vb is None else f"{sat_vb / 100_000:.8f}")


def _estimate_now(desk: Desk) -> object:
    """What to put back: the node's estimate in BTC/kvB, None for "insufficient data"."""
    return desk.node.rpc("estimatesmartfee", 6).get("feerate")


def test_finding_6_a_deposit_of_the_quote_survives_a_fee_rise(desk: Desk, settings):
    if desk.node.kind != "devnode":
        pytest.skip("sets the fee estimate through the devnode's devsetfeeestimate")
    settings.BITCOIN_FEERATE_FLOOR_SAT_VB = 1
    borrower = desk.borrower()
    before = _estimate_now(desk)
    _fee_estimate(desk, 4)
    try:
        quote = escrow_quote(
            borrower_btc_pubkey=borrower.btc_key,
            preimage_hash_borrower=borrower.preimage_hash,
            amount_wei=10**16,
        )
        assert quote.deposit.feerate_sat_vb == 6  # today's 4 plus the 50 % headroom
        onchain_id = desk.request(borrower, deposit_delta=0)  # exactly the quote
        _fee_estimate(desk, 5)  # the fee rises before the backend sees the deposit
        desk.until(lambda: desk.loan(onchain_id).collateral_lock_feerate is not None)
    finally:
        desk.node.rpc("devsetfeeestimate", before)
    loan = desk.loan(onchain_id)
    # The best rate the deposit affords, within today's rate plus the headroom.
    assert loan.collateral_lock_feerate == 6
    assert loan.escrow_value_sats == quote.deposit.total_sats
    desk.presign(borrower, onchain_id)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.OFFERED)


def test_a_second_payment_to_the_escrow_address_is_the_borrowers_to_take_back(desk: Desk) -> None:
    """Only the outpoint named in the request is the loan's escrow: a top-up to the same address
    after the collateral was locked is the borrower's, and exit-tx builds its exit (valid t0
    after it confirmed) whatever the loan's state; the node takes it, signed by the borrower."""
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    import vaultero
    from btcloan.api.services import access_token_issue
    from btcloan.roles import OPERATOR, user_role_set
    from tests.integration.test_lifecycles import activated

    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    loan = desk.loan(onchain_id)
    txid, vout = desk.fund(loan.escrow_address, 50_000)
    desk.mine_btc(1)
    confirmed = desk.btc_height()

    operator = get_user_model().objects.create_user(username="op", is_staff=True)
    user_role_set(user=operator, role=OPERATOR)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_issue(user=operator).token}")
    path = f"/api/v1/loans/{loan.pk}/exit-tx"
    query = {"address": borrower.payout_address, "feerate": "2"}
    body = client.get(path, {**query, "outpoint": f"{txid}:{vout}"}).json()
    assert body["valid_from_height"] == confirmed + loan.escrow_csv_blocks
    # The loan's own escrow went into TX_1: not the borrower's to exit, and not a stray.
    own = client.get(path, {**query, "outpoint": f"{loan.escrow_txid}:{loan.escrow_vout}"})
    assert own.status_code == 409, own.json()
    bad = client.get(path, {**query, "outpoint": f"{txid}:x"})
    assert bad.status_code == 400
    assert "outpoint" in bad.json()["error"]["details"]

    template = vaultero.from_psbt(body["psbt"]).template
    signed = vaultero.finalize(
        template, borrower_sig=vaultero.sign_input(template, borrower.btc_secret)
    )
    desk.mine_btc(body["valid_from_height"] - desk.btc_height() - 1)
    desk.send_btc(signed)
    desk.mine_btc(1)
    assert desk.node.rpc("gettxout", txid, vout) is None
    assert desk.node.rpc("gettxout", loan.collateral_txid, 1) is not None
