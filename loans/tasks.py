"""loans: tasks. Thin adapters: ids in, one service call, a small summary out. They are sent
only through `loans.next_steps` (and by beat, for the watchdog and the reconciler).

The intake, TX_1 and sweep tasks read a chain, so they retry on a node being down; every one
of them is idempotent (its service finds work already done), hence acks_late.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from bitcoin.rpc import NodeUnavailable as BitcoinNodeUnavailable
from btcloan.locks import single_flight
from chainwatch.client import NodeUnavailable as EvmNodeUnavailable
from loans.models import AuditCause
from loans.policy import LenderAction
from loans.services.collateral import collateral_lock_send, collateral_sweep_send, escrow_follow
from loans.services.intake import loan_request_intake
from loans.services.lender import lender_action_request
from loans.services.origination import loan_escrow_setup, loan_offer_evaluate
from loans.services.reconciler import reconcile_loans, reconcile_run
from loans.services.watchdog import watchdog_run

NODE_DOWN = (BitcoinNodeUnavailable, EvmNodeUnavailable, ConnectionError, TimeoutError)
RETRYING: dict[str, Any] = {
    "autoretry_for": NODE_DOWN,
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "max_retries": 10,
    "acks_late": True,
}


@shared_task(name="loans.intake_loan_request", **RETRYING)
def intake_loan_request(intake_id: int) -> dict[str, Any]:
    loan = loan_request_intake(intake_id=intake_id)
    return {"intake": intake_id, "loan": loan.pk if loan else None}


@shared_task(name="loans.set_up_escrow", acks_late=True)
def set_up_escrow(loan_id: int) -> dict[str, Any]:
    loan_escrow_setup(loan_id=loan_id)
    return {"loan": loan_id}


@shared_task(name="loans.prepare_collateral_lock", **RETRYING)
def prepare_collateral_lock(loan_id: int) -> dict[str, Any]:
    """Look at the escrow deposit, build TX_1 once it is there, then judge the offer."""
    stage, txid = escrow_follow(loan_id=loan_id)
    return {"loan": loan_id, "stage": stage, "txid": txid}


@shared_task(name="loans.evaluate_offer", **RETRYING)
def evaluate_offer(loan_id: int) -> dict[str, Any]:
    return {"loan": loan_id, "waiting_on": loan_offer_evaluate(loan_id=loan_id)}


@shared_task(name="loans.lock_collateral", **RETRYING)
def lock_collateral(loan_id: int) -> dict[str, Any]:
    """TX_1 completed and sent, at once after activation (PROTOCOL.md duty 2)."""
    return {"loan": loan_id, "bitcoin_tx": collateral_lock_send(loan_id=loan_id)}


@shared_task(name="loans.accept_repayment", acks_late=True)
def accept_repayment(loan_id: int) -> dict[str, Any]:
    outcome = lender_action_request(
        loan_id=loan_id, action=LenderAction.ACCEPT_REPAYMENT, cause=AuditCause.BACKEND
    )
    return {"loan": loan_id, "outcome": outcome}


@shared_task(name="loans.sweep_collateral", **RETRYING)
def sweep_collateral(loan_id: int) -> dict[str, Any]:
    """The sweep signed once and handed to the broadcaster (the node takes it after t1)."""
    return {"loan": loan_id, "bitcoin_tx": collateral_sweep_send(loan_id=loan_id)}


@shared_task(name="loans.watchdog", ignore_result=True)
def watchdog() -> dict[str, Any]:
    with single_flight("loans-watchdog", timeout=300) as acquired:
        if not acquired:
            return {"status": "busy"}
        return {"status": "ok", **watchdog_run().as_dict()}


@shared_task(name="loans.reconcile", ignore_result=True)
def reconcile(loan_ids: list[int] | None = None) -> dict[str, Any]:
    """A bounded pass from the cursor; or, for an operator, just `loan_ids`."""
    if loan_ids is not None:
        return {"status": "ok", **reconcile_loans(loan_ids=loan_ids).as_dict()}
    with single_flight("loans-reconcile", timeout=600) as acquired:
        if not acquired:
            return {"status": "busy"}
        return {"status": "ok", **reconcile_run().as_dict()}


@shared_task(name="loans.delete_completed_loan", acks_late=True)
def delete_completed_loan(loan_id: int) -> dict[str, Any]:
    from loans.services.lender import lender_action_request

    outcome = lender_action_request(
        loan_id=loan_id, action=LenderAction.DELETE_LOAN, cause=AuditCause.BACKEND
    )
    return {"loan": loan_id, "outcome": outcome}


@shared_task(name="loans.check_loan_accounting", acks_late=True)
def check_loan_accounting(loan_id: int) -> dict[str, Any]:
    from loans.services.accounting import loan_accounting_check

    return {"loan": loan_id, "stranded_wei": str(loan_accounting_check(loan_id=loan_id))}
