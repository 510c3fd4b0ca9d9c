"""What must happen next for a loan, turned into a task: the one door from `loans`' services,
handlers and watchdog to its Celery tasks.

Callers name a `NextStep` and an id; `next_step_enqueue` sends the matching task when the
caller's transaction commits (at once outside one). No other module of `loans` imports
`loans.tasks`, and no task is looked up by name: a renamed task fails mypy here.
"""

from __future__ import annotations

from enum import StrEnum

from django.db import transaction


class NextStep(StrEnum):
    """Each names the task that does it; the id it takes is the loan's unless said."""

    READ_REQUEST = "read_request"  # the intake row's id: read getLoan, create the loan
    SET_UP_ESCROW = "set_up_escrow"  # H_L, watch the escrow, associate the hash
    OBSERVE_ESCROW = "observe_escrow"  # look at the deposit, build TX_1 once it is there
    EVALUATE_OFFER = "evaluate_offer"  # offer when every condition holds
    LOCK_COLLATERAL = "lock_collateral"  # complete and send TX_1 (after LoanActivated)
    ACCEPT_REPAYMENT = "accept_repayment"  # acceptLoanRepayment(P_L)
    SWEEP_COLLATERAL = "sweep_collateral"  # the lender's sweep after t1
    DELETE_LOAN = "delete_loan"  # deleteCompletedLoan of a closed seed-flavour loan
    CHECK_ACCOUNTING = "check_accounting"  # alert on money left in the loan contract
    BROADCAST = "broadcast"  # a signed Bitcoin transaction's outbox row id
    SEND_LENDER_CALL = "send_lender_call"  # a lender EVM call's outbox row id


class DeskPass(StrEnum):
    """The passes over every loan (beat runs them; an operator may ask for one now)."""

    WATCHDOG = "watchdog"
    RECONCILE = "reconcile"


def next_step_enqueue(*, step: NextStep, target_id: int, countdown: float = 0) -> None:
    """Send the task of `step` for `target_id` once the current transaction commits (due
    `countdown` seconds later when given: a fallback for work the caller does itself)."""
    # Imported here, the one place: the tasks call the services, which call this.
    from bitcoin.tasks import broadcast
    from chainwatch.tasks import send_evm_transaction
    from loans import tasks

    task = {
        NextStep.READ_REQUEST: tasks.intake_loan_request,
        NextStep.SET_UP_ESCROW: tasks.set_up_escrow,
        NextStep.OBSERVE_ESCROW: tasks.prepare_collateral_lock,
        NextStep.EVALUATE_OFFER: tasks.evaluate_offer,
        NextStep.LOCK_COLLATERAL: tasks.lock_collateral,
        NextStep.ACCEPT_REPAYMENT: tasks.accept_repayment,
        NextStep.SWEEP_COLLATERAL: tasks.sweep_collateral,
        NextStep.DELETE_LOAN: tasks.delete_completed_loan,
        NextStep.CHECK_ACCOUNTING: tasks.check_loan_accounting,
        NextStep.BROADCAST: broadcast,
        NextStep.SEND_LENDER_CALL: send_evm_transaction,
    }[step]
    if countdown:
        transaction.on_commit(lambda: task.apply_async((target_id,), countdown=countdown))
    else:
        transaction.on_commit(lambda: task.delay(target_id))


def desk_pass_enqueue(*, which: DeskPass, loan_ids: list[int] | None = None) -> None:
    """Run a pass now (after the current transaction commits): the watchdog's, or the
    reconciler's, over `loan_ids` when given (an operator's choice) else from its cursor."""
    from loans import tasks

    if which == DeskPass.WATCHDOG:
        transaction.on_commit(tasks.watchdog.delay)
    else:
        transaction.on_commit(lambda: tasks.reconcile.delay(loan_ids))
