"""Incremental passes on real nodes: the reconciler's batches and cursor, and the watchdog's
change detection (a changed loan is looked at, an unchanged one costs nothing, an alert row
is written once)."""

from __future__ import annotations

from typing import Any

import pytest

from btcloan.alerts.services import alert_raise
from btcloan.models import Alert
from loans.models import LoanStatus, LoanWatch, PassCursor
from loans.services.reconciler import reconcile_loans, reconcile_run
from loans.services.watchdog import loan_watch_reset, watchdog_run
from tests.integration.conftest import Desk, known
from tests.integration.test_lifecycles import offered

pytestmark = [pytest.mark.evm, pytest.mark.bitcoin_node, pytest.mark.slow]


def requested(desk: Desk, count: int) -> list[int]:
    """`count` loans requested by different borrowers and read by the backend: loan pks."""
    ids = [desk.request(desk.borrower(key_index=i + 1)) for i in range(count)]
    desk.until(lambda: all(desk.loan(i).preimage_hash_lender for i in ids))
    return [desk.loan(i).pk for i in ids]


def test_the_reconciler_walks_the_open_loans_in_batches_from_its_cursor(desk: Desk, settings: Any):
    first, second, third = requested(desk, 3)
    # One loan per batch and no time to spare: each pass does the loans at risk, then one
    # batch of the round-robin, and saves where it stopped.
    settings.LOAN_RECONCILE_BATCH = 1
    # A write lost on the second loan: only the pass that reaches it repairs it.
    from loans.models import Loan

    Loan.objects.filter(pk=second).update(status=LoanStatus.OFFERED)

    summary = reconcile_run(budget_seconds=0)
    assert (summary.checked, summary.cursor, summary.sweep_completed) == (1, first, False)
    assert summary.repaired == []
    assert Loan.objects.get(pk=second).status == LoanStatus.OFFERED

    summary = reconcile_run(budget_seconds=0)
    assert (summary.checked, summary.cursor) == (1, second)
    assert summary.repaired == [second]
    assert Loan.objects.get(pk=second).status == LoanStatus.REQUESTED

    summary = reconcile_run(budget_seconds=0)
    assert summary.cursor == third
    cursor = PassCursor.objects.get(name="reconciler")
    assert (cursor.last_loan_id, cursor.sweeps) == (third, 0)

    # Past the last loan the sweep is counted and the walk starts again from the first.
    summary = reconcile_run(budget_seconds=0)
    assert summary.cursor == first
    assert PassCursor.objects.get(name="reconciler").sweeps == 1

    # A loan already alerted is at risk: it comes first, whatever the cursor says.
    alert_raise(key=f"loan:{third}:reconcile", severity="critical", title="t", loan_ref=third)
    summary = reconcile_run(budget_seconds=0)
    assert summary.at_risk == 1
    assert summary.checked == 2  # the loan at risk, then the next one of the round-robin
    assert summary.cursor == second
    assert not Alert.objects.filter(key=f"loan:{third}:reconcile", resolved_at=None).exists()

    # With time enough a pass sees every open loan once and says so.
    summary = reconcile_run()
    assert summary.sweep_completed
    assert summary.checked == 3
    assert summary.alerted == []

    # An operator's "reconcile now" on one loan checks that loan, whatever the cursor says.
    Loan.objects.filter(pk=first).update(status=LoanStatus.OFFERED)
    summary = reconcile_loans(loan_ids=[first])
    assert (summary.checked, summary.repaired) == (1, [first])


def test_the_watchdog_looks_again_only_at_what_changed(desk: Desk, settings: Any):
    settings.LOAN_WATCHDOG_REDRIVE_SECONDS = 3600
    # Any offered loan is inside this margin: its escrow-exit alert is raised at once.
    settings.LOAN_ALERT_TX1_MARGIN_BLOCKS = 100_000
    borrower = desk.borrower()
    onchain_id = offered(desk, borrower)
    loan = desk.loan(onchain_id)
    key = f"loan:{loan.pk}:escrow_exit"
    desk.queue.clear()

    summary = watchdog_run()  # looks at it (it changed since the pump's last pass)
    alert = Alert.objects.get(key=key, resolved_at=None)
    assert alert.count == 1
    watch = LoanWatch.objects.get(loan=loan)
    assert watch.seen_revision == desk.loan(onchain_id).revision

    # Nothing changed: the loan is not looked at, no task is sent, no alert row is written.
    for _ in range(3):
        summary = watchdog_run()
        assert summary.loans == 0
        assert summary.alerts == 0
        assert sum(summary.actions.values()) == 0
    assert desk.queue == []
    alert.refresh_from_db()
    assert (alert.count, alert.last_seen_at) == (1, alert.first_seen_at)

    # An operator's "run the watchdog now" makes it look again (and write nothing new).
    assert loan_watch_reset(loan_ids=[loan.pk]) == 1
    summary = watchdog_run()
    assert (summary.loans, summary.alerts) == (1, 0)
    assert watchdog_run().loans == 0

    # A new Bitcoin block with no deadline or threshold at it changes nothing either.
    desk.mine_btc(1)
    assert watchdog_run().loans == 0

    # The loan changes (here: a handler writing its row): the next pass looks at it, once.
    from loans.models import Loan

    Loan.objects.filter(pk=loan.pk).update(last_event_log_index=0)
    assert watchdog_run().loans == 1
    assert watchdog_run().loans == 0

    # The offer's deadline comes into view (t_B passes): the withdrawal is sent, once.
    deadline = known(loan.offer_block) + loan.timelock_borrower
    desk.mine_evm(deadline - desk.w3.eth.block_number)
    summary = watchdog_run()
    assert summary.loans == 1
    assert [name for name in summary.actions if name.startswith("withdraw_offer")]
    summary = watchdog_run()
    assert summary.loans == 0
    assert sum(summary.actions.values()) == 0
    alert.refresh_from_db()
    assert alert.count == 1  # one alert row all along, never rewritten


def test_a_step_still_due_is_sent_again_after_the_redrive_wait(desk: Desk, settings: Any):
    settings.LOAN_WATCHDOG_REDRIVE_SECONDS = 3600
    borrower = desk.borrower()
    # The deposit is in the mempool only: the loan waits for it, and the watchdog's step is
    # to look at the UTXO set again (prepare_collateral_lock).
    onchain_id = desk.request(borrower, confirm=False)
    desk.until(lambda: bool(desk.loan(onchain_id).preimage_hash_lender))
    loan = desk.loan(onchain_id)
    desk.queue.clear()
    LoanWatch.objects.filter(loan=loan).delete()  # as if never looked at
    watchdog_run()
    sent = list(desk.queue)
    assert sent
    desk.queue.clear()
    # Same heads, same row, no redrive due: nothing is sent.
    assert watchdog_run().loans == 0
    assert desk.queue == []
    # A task lost with its worker: once its redrive time comes, the due step is sent again.
    from django.utils import timezone

    LoanWatch.objects.filter(loan=loan).update(redrive_at=timezone.now())
    summary = watchdog_run()
    assert summary.loans == 1
    assert [name for name, _ in desk.queue] == [name for name, _ in sent]
    assert LoanWatch.objects.get(loan=loan).redrives == 1
