"""loans: tasks. Thin adapters: ids in, one service call, a small summary out.

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
    from loans.services.intake import loan_request_intake

    loan = loan_request_intake(intake_id=intake_id)
    return {"intake": intake_id, "loan": loan.pk if loan else None}


@shared_task(name="loans.set_up_escrow", acks_late=True)
def set_up_escrow(loan_id: int) -> dict[str, Any]:
    from loans.services.origination import loan_escrow_setup

    loan_escrow_setup(loan_id=loan_id)
    return {"loan": loan_id}


@shared_task(name="loans.prepare_collateral_lock", **RETRYING)
def prepare_collateral_lock(loan_id: int) -> dict[str, Any]:
    """Look at the escrow deposit, build TX_1 once it is there, then judge the offer."""
    from loans.services.collateral import collateral_lock_prepare, escrow_observe

    stage = escrow_observe(loan_id=loan_id)
    template = collateral_lock_prepare(loan_id=loan_id)
    if template is not None:
        evaluate_offer.delay(loan_id)
    return {"loan": loan_id, "stage": stage, "txid": template.txid if template else None}


@shared_task(name="loans.evaluate_offer", **RETRYING)
def evaluate_offer(loan_id: int) -> dict[str, Any]:
    from loans.services.origination import loan_offer_evaluate

    return {"loan": loan_id, "waiting_on": loan_offer_evaluate(loan_id=loan_id)}


@shared_task(name="loans.lock_collateral", **RETRYING)
def lock_collateral(loan_id: int) -> dict[str, Any]:
    """TX_1 completed and sent, at once after activation (PROTOCOL.md duty 2)."""
    from bitcoin.tasks import broadcast
    from loans.services.collateral import collateral_lock_sign

    tx_id = collateral_lock_sign(loan_id=loan_id)
    broadcast.delay(tx_id)
    return {"loan": loan_id, "bitcoin_tx": tx_id}


@shared_task(name="loans.accept_repayment", acks_late=True)
def accept_repayment(loan_id: int) -> dict[str, Any]:
    from loans.services.lender import lender_action_request

    outcome = lender_action_request(
        loan_id=loan_id, action=LenderAction.ACCEPT_REPAYMENT, cause=AuditCause.BACKEND
    )
    return {"loan": loan_id, "outcome": outcome}


@shared_task(name="loans.sweep_collateral", **RETRYING)
def sweep_collateral(loan_id: int) -> dict[str, Any]:
    """Sign the sweep (once) and hand it to the broadcaster, which the node refuses until t1
    has matured; the watchdog calls this again once it has."""
    from bitcoin.tasks import broadcast
    from loans.services.collateral import collateral_sweep_sign

    tx_id = collateral_sweep_sign(loan_id=loan_id)
    broadcast.delay(tx_id)
    return {"loan": loan_id, "bitcoin_tx": tx_id}


@shared_task(name="loans.watchdog", ignore_result=True)
def watchdog() -> dict[str, Any]:
    from loans.services.watchdog import watchdog_run

    with single_flight("loans-watchdog", timeout=300) as acquired:
        if not acquired:
            return {"status": "busy"}
        return {"status": "ok", **watchdog_run().as_dict()}


@shared_task(name="loans.reconcile", ignore_result=True)
def reconcile(loan_ids: list[int] | None = None) -> dict[str, Any]:
    """A bounded pass from the cursor; or, for an operator, just `loan_ids`."""
    from loans.services.reconciler import reconcile_loans, reconcile_run

    if loan_ids is not None:
        return {"status": "ok", **reconcile_loans(loan_ids=loan_ids).as_dict()}
    with single_flight("loans-reconcile", timeout=600) as acquired:
        if not acquired:
            return {"status": "busy"}
        return {"status": "ok", **reconcile_run().as_dict()}
