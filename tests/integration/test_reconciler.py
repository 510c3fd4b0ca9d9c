"""The reconciler puts each open loan next to getLoan and the UTXO set: it repairs what the
recorded facts explain and raises an alert for what they do not, resolving it once agreed."""

from __future__ import annotations

import pytest

from btcloan.models import Alert
from chainwatch.models import EvmEvent
from loans.models import AuditEntry, BitcoinStage, Loan, LoanStatus
from loans.services.reconciler import reconcile_run
from tests.integration.conftest import Desk
from tests.integration.test_lifecycles import activated, offered

pytestmark = [pytest.mark.evm, pytest.mark.bitcoin_node, pytest.mark.slow]


def test_a_lost_write_is_repaired_from_the_recorded_events(desk: Desk):
    onchain_id = offered(desk, desk.borrower())
    loan = desk.loan(onchain_id)
    Loan.objects.filter(pk=loan.pk).update(status=LoanStatus.REQUESTED)  # a write that was lost
    summary = reconcile_run()
    assert loan.pk in summary.repaired
    assert loan.pk not in summary.alerted
    assert desk.loan(onchain_id).status == LoanStatus.OFFERED
    assert AuditEntry.objects.filter(loan=loan, action="rederived").exists()


def test_an_event_never_indexed_is_an_alert_until_the_chains_agree(desk: Desk):
    borrower = desk.borrower()
    onchain_id = offered(desk, borrower)
    loan = desk.loan(onchain_id)
    # The offer event is forgotten, as if the indexer had missed it: nothing recorded
    # explains the contract's "offered".
    EvmEvent.objects.filter(event_name="LoanOffered").delete()
    Loan.objects.filter(pk=loan.pk).update(status=LoanStatus.REQUESTED, last_event_block=None)
    summary = reconcile_run()
    assert loan.pk in summary.alerted
    alert = Alert.objects.get(key=f"loan:{loan.pk}:reconcile", resolved_at=None)
    assert alert.severity == "critical"
    assert "contract says offered, the backend says requested" in str(alert.details)

    # An operator replays the range: the event is indexed again, the loan catches up, and the
    # next reconciliation resolves the alert.
    from chainwatch.services import chain_replay

    chain_replay(from_block=desk.deployed.block_number)
    desk.pump()
    assert desk.loan(onchain_id).status == LoanStatus.OFFERED
    reconcile_run()
    alert.refresh_from_db()
    assert alert.resolved_at is not None


def test_a_spent_escrow_the_scanner_missed_is_rederived_from_the_observations(desk: Desk):
    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    loan = desk.loan(onchain_id)
    # TX_1 spent the escrow and confirmed; pretend the stage never moved past the escrow.
    Loan.objects.filter(pk=loan.pk).update(bitcoin_stage=BitcoinStage.ESCROW_CONFIRMED)
    summary = reconcile_run()
    assert loan.pk in summary.repaired
    assert desk.loan(onchain_id).bitcoin_stage == BitcoinStage.COLLATERAL_CONFIRMED


def test_an_event_confirmed_but_not_yet_indexed_is_a_lag_not_an_alert(desk: Desk):
    borrower = desk.borrower()
    onchain_id = offered(desk, borrower)
    loan = desk.loan(onchain_id)
    # The borrower accepts and the block is confirmed on chain, but the indexer has not
    # polled since: the contract is a step ahead of the backend.
    borrower.actions.accept_offer(onchain_id, borrower.preimage)
    desk.mine_evm(5)
    summary = reconcile_run()
    assert loan.pk not in summary.alerted
    assert not Alert.objects.filter(key=f"loan:{loan.pk}:reconcile").exists()
    # Once indexed, the loan catches up and the two agree.
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.ACTIVE)
    summary = reconcile_run()
    assert loan.pk not in summary.alerted
