"""Intake hands on at once: a confirmed LoanRequested becomes a loan whose
associateLenderPreimageHash is on its way, each step enqueuing the next when its transaction
commits (no poller, pump or watchdog in between); on anvil and the Bitcoin node."""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chainwatch.models import EvmTransaction, OutboxStatus
from chainwatch.services import chain_sync
from loans.chain import loan_contracts
from loans.models import (
    AuditAction,
    AuditEntry,
    LoanRequestIntake,
    LoanStatus,
    LoanWorkflow,
    WorkflowType,
)
from tests.integration.conftest import Desk


def test_a_confirmed_request_enqueues_each_next_step_at_once(desk: Desk, settings: Any) -> None:
    onchain_id = desk.request(desk.borrower())
    desk.mine_evm(int(settings.EVM_CONFIRMATIONS))

    chain_sync(deliver=True)  # the indexer's one pass: the event is confirmed and handed on
    intake = LoanRequestIntake.objects.get(onchain_id=onchain_id)
    assert desk.queue == [("loans.intake_loan_request", (intake.pk,))]

    desk.queue.clear()
    current_app.tasks["loans.intake_loan_request"].run(intake.pk)
    loan = desk.loan(onchain_id)
    assert loan.status == LoanStatus.REQUESTED
    assert loan.preimage_hash_lender
    associate = EvmTransaction.objects.get(loan_ref=str(loan.pk), action="associate_hash")
    # The hash is sent and the escrow looked at right away, not at the next pump or scan.
    assert desk.queue == [
        ("chainwatch.send_evm_transaction", (associate.pk,)),
        ("loans.prepare_collateral_lock", (loan.pk,)),
    ]

    current_app.tasks["chainwatch.send_evm_transaction"].run(associate.pk)
    associate.refresh_from_db()
    assert associate.status == OutboxStatus.SENT
    assert associate.function == "associateLenderPreimageHash"


def _confirmed_intake(desk: Desk, settings: Any) -> LoanRequestIntake:
    onchain_id = desk.request(desk.borrower())
    desk.mine_evm(int(settings.EVM_CONFIRMATIONS))
    chain_sync(deliver=True)
    desk.queue.clear()
    return LoanRequestIntake.objects.get(onchain_id=onchain_id)


def test_an_intake_and_its_escrow_set_up_take_few_statements(desk: Desk, settings: Any) -> None:
    """Two transactions, one savepoint (the outbox row's `get_or_create`: whether it created
    the row decides its audit and its send task), nothing read twice: 23 statements (was 39: a
    savepoint per nested `atomic()` and `get_or_create`, the loan read again, the workflow
    written twice, the outbox row looked for before its `get_or_create`)."""
    intake = _confirmed_intake(desk, settings)
    with CaptureQueriesContext(connection) as queries:
        current_app.tasks["loans.intake_loan_request"].run(intake.pk)
    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) <= 23, "\n".join(statements)
    assert len([sql for sql in statements if sql.startswith("SAVEPOINT")]) == 1
    assert [sql for sql in statements if sql in ("BEGIN", "COMMIT")] == ["BEGIN", "COMMIT"] * 2
    loan = LoanRequestIntake.objects.get(pk=intake.pk).loan
    assert loan is not None
    associate = EvmTransaction.objects.get(loan_ref=str(loan.pk), action="associate_hash")
    assert desk.queue == [
        ("chainwatch.send_evm_transaction", (associate.pk,)),
        ("loans.prepare_collateral_lock", (loan.pk,)),
    ]
    workflow = LoanWorkflow.objects.get(loan=loan, type=WorkflowType.ESCROW_SETUP)
    assert (workflow.steps_completed, workflow.current_step) == (["watch_escrow"], "offer")
    # The set-up again (the watchdog's SET_UP_ESCROW after a lost worker) changes nothing.
    current_app.tasks["loans.set_up_escrow"].run(loan.pk)
    assert EvmTransaction.objects.filter(loan_ref=str(loan.pk)).count() == 1
    assert AuditEntry.objects.filter(loan=loan, action=AuditAction.LENDER_ACTION_SENT).count() == 1
    workflow.refresh_from_db()
    assert (workflow.steps_completed, workflow.current_step) == (["watch_escrow"], "offer")


def test_the_contracts_are_built_once_per_client_and_deployment(desk: Desk, settings: Any) -> None:
    """Building them parses both ABIs: intake, guards and passes share one per process."""
    first = loan_contracts()
    assert loan_contracts() is first
    settings.LOAN_CONTRACT_ADDRESS = desk.deployed.etherswap_address  # another deployment
    settings.ETHERSWAP_CONTRACT_ADDRESS = desk.deployed.loan_address
    other = loan_contracts()
    assert other is not first
    assert str(other.loan.address) == desk.deployed.etherswap_address
