"""Intake hands on at once: a confirmed LoanRequested becomes a loan whose
associateLenderPreimageHash is on its way, each step enqueuing the next when its transaction
commits (no poller, pump or watchdog in between); on anvil and the Bitcoin node."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Task, current_app
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from chainwatch.client import NodeUnavailable
from chainwatch.models import EvmTransaction, EvmTransactionAttempt, OutboxStatus
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
from loans.services import intake as intake_module
from loans.services import lender as lender_module
from loans.services.intake import loan_request_intake
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
    # The intake task sent the hash itself once the escrow set-up committed (no task hop)...
    assert associate.status == OutboxStatus.SENT
    assert associate.function == "associateLenderPreimageHash"
    # ... and the send task, queued on that commit, stays the fallback; the escrow is looked
    # at right away, not at the next scan.
    assert desk.queue == [
        ("chainwatch.send_evm_transaction", (associate.pk,)),
        ("loans.prepare_collateral_lock", (loan.pk,)),
    ]

    # The fallback (due SEND_FALLBACK_AFTER_SECONDS later, not racing the intake's send for
    # the same work) finds the row sent: nothing is signed or sent twice.
    current_app.tasks["chainwatch.send_evm_transaction"].run(associate.pk)
    again = EvmTransaction.objects.get(pk=associate.pk)
    assert (again.status, again.nonce, again.tx_hash, again.send_attempts) == (
        OutboxStatus.SENT,
        associate.nonce,
        associate.tx_hash,
        1,
    )
    assert EvmTransactionAttempt.objects.filter(transaction=associate).count() == 1


def _confirmed_intake(desk: Desk, settings: Any, key_index: int = 1) -> LoanRequestIntake:
    onchain_id = desk.request(desk.borrower(key_index))
    desk.mine_evm(int(settings.EVM_CONFIRMATIONS))
    chain_sync(deliver=True)
    desk.queue.clear()
    return LoanRequestIntake.objects.get(onchain_id=onchain_id)


def test_an_intake_and_its_escrow_set_up_take_few_statements(
    desk: Desk, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two transactions, one savepoint (the outbox row's `get_or_create`: whether it created
    the row decides its audit and its send), nothing read twice: 23 statements (was 39: a
    savepoint per nested `atomic()` and `get_or_create`, the loan read again, the workflow
    written twice, the outbox row looked for before its `get_or_create`)."""
    intake = _confirmed_intake(desk, settings)
    sent: list[int] = []
    monkeypatch.setattr(
        intake_module, "lender_action_send_now", lambda *, tx_id: sent.append(tx_id)
    )
    with CaptureQueriesContext(connection) as queries:
        current_app.tasks["loans.intake_loan_request"].run(intake.pk)
    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) <= 23, "\n".join(statements)
    assert len([sql for sql in statements if sql.startswith("SAVEPOINT")]) == 1
    assert [sql for sql in statements if sql in ("BEGIN", "COMMIT")] == ["BEGIN", "COMMIT"] * 2
    loan = LoanRequestIntake.objects.get(pk=intake.pk).loan
    assert loan is not None
    associate = EvmTransaction.objects.get(loan_ref=str(loan.pk), action="associate_hash")
    assert sent == [associate.pk]
    workflow = LoanWorkflow.objects.get(loan=loan, type=WorkflowType.ESCROW_SETUP)
    assert (workflow.steps_completed, workflow.current_step) == (["watch_escrow"], "offer")
    # The set-up again (the watchdog's SET_UP_ESCROW after a lost worker) changes nothing.
    current_app.tasks["loans.set_up_escrow"].run(loan.pk)
    assert EvmTransaction.objects.filter(loan_ref=str(loan.pk)).count() == 1
    assert AuditEntry.objects.filter(loan=loan, action=AuditAction.LENDER_ACTION_SENT).count() == 1
    workflow.refresh_from_db()
    assert (workflow.steps_completed, workflow.current_step) == (["watch_escrow"], "offer")


def test_a_send_the_intake_cannot_make_is_left_to_its_task(
    desk: Desk, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node down at the intake's own send: the loan stands, the row waits queued for the
    send task (queued on commit), which sends it."""
    intake = _confirmed_intake(desk, settings)

    def node_down(*, tx_id: int) -> EvmTransaction:
        raise NodeUnavailable("eth_gasPrice: ConnectionError")

    monkeypatch.setattr(lender_module, "evm_transaction_send", node_down)
    current_app.tasks["loans.intake_loan_request"].run(intake.pk)
    loan = LoanRequestIntake.objects.get(pk=intake.pk).loan
    assert loan is not None
    assert loan.status == LoanStatus.REQUESTED
    associate = EvmTransaction.objects.get(loan_ref=str(loan.pk), action="associate_hash")
    assert associate.status == OutboxStatus.QUEUED
    assert ("chainwatch.send_evm_transaction", (associate.pk,)) in desk.queue
    monkeypatch.undo()
    current_app.tasks["chainwatch.send_evm_transaction"].run(associate.pk)
    associate.refresh_from_db()
    assert associate.status == OutboxStatus.SENT


def test_the_send_task_of_a_row_the_intake_sends_is_a_later_fallback(
    desk: Desk, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued due SEND_FALLBACK_AFTER_SECONDS later when the intake sends the row itself; at
    once when the set-up runs on its own (the watchdog's SET_UP_ESCROW), which sends nothing."""
    sent: list[tuple[str, tuple[Any, ...], float | None]] = []

    def record(task: Any, args: Any = None, kwargs: Any = None, **options: Any) -> None:
        sent.append((task.name, tuple(args or ()), options.get("countdown")))

    def record_delay(task: Any, *args: Any) -> None:
        sent.append((task.name, args, None))

    # Undone inside the test: a class-level patch outliving the desk's own would leave every
    # later task captured (the desk restores Task first, then this fixture, out of order).
    with monkeypatch.context() as patched:
        patched.setattr(Task, "apply_async", record)
        patched.setattr(Task, "delay", record_delay)
        intake = _confirmed_intake(desk, settings)
        current_app.tasks["loans.intake_loan_request"].run(intake.pk)
        loan = LoanRequestIntake.objects.get(pk=intake.pk).loan
        assert loan is not None
        associate = EvmTransaction.objects.get(loan_ref=str(loan.pk), action="associate_hash")
        assert associate.status == OutboxStatus.SENT
        assert (
            "chainwatch.send_evm_transaction",
            (associate.pk,),
            lender_module.SEND_FALLBACK_AFTER_SECONDS,
        ) in sent

        sent.clear()
        other = _confirmed_intake(desk, settings, key_index=2)
        patched.setattr(intake_module, "loan_escrow_setup", lambda **kwargs: None)
        current_app.tasks["loans.intake_loan_request"].run(other.pk)
        other_loan = LoanRequestIntake.objects.get(pk=other.pk).loan
        assert other_loan is not None
        current_app.tasks["loans.set_up_escrow"].run(other_loan.pk)
        row = EvmTransaction.objects.get(loan_ref=str(other_loan.pk), action="associate_hash")
        assert row.status == OutboxStatus.QUEUED
        assert ("chainwatch.send_evm_transaction", (row.pk,), None) in sent


def test_the_intake_never_sends_inside_a_transaction(
    desk: Desk, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No RPC inside `atomic()`: called in one, the intake leaves the send to its task."""
    intake = _confirmed_intake(desk, settings)
    monkeypatch.setattr(lender_module, "evm_transaction_send", pytest.fail)
    with transaction.atomic():
        loan = loan_request_intake(intake_id=intake.pk)
    assert loan is not None
    associate = EvmTransaction.objects.get(loan_ref=str(loan.pk), action="associate_hash")
    assert associate.status == OutboxStatus.QUEUED


def test_the_contracts_are_built_once_per_client_and_deployment(desk: Desk, settings: Any) -> None:
    """Building them parses both ABIs: intake, guards and passes share one per process."""
    first = loan_contracts()
    assert loan_contracts() is first
    settings.LOAN_CONTRACT_ADDRESS = desk.deployed.etherswap_address  # another deployment
    settings.ETHERSWAP_CONTRACT_ADDRESS = desk.deployed.loan_address
    other = loan_contracts()
    assert other is not first
    assert str(other.loan.address) == desk.deployed.etherswap_address
