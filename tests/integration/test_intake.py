"""Intake hands on at once: a confirmed LoanRequested becomes a loan whose
associateLenderPreimageHash is on its way, each step enqueuing the next when its transaction
commits (no poller, pump or watchdog in between); on anvil and the Bitcoin node."""

from __future__ import annotations

from typing import Any

from celery import current_app

from chainwatch.models import EvmTransaction, OutboxStatus
from chainwatch.services import chain_sync
from loans.chain import loan_contracts
from loans.models import LoanRequestIntake, LoanStatus
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


def test_the_contracts_are_built_once_per_client_and_deployment(desk: Desk, settings: Any) -> None:
    """Building them parses both ABIs: intake, guards and passes share one per process."""
    first = loan_contracts()
    assert loan_contracts() is first
    settings.LOAN_CONTRACT_ADDRESS = desk.deployed.etherswap_address  # another deployment
    settings.ETHERSWAP_CONTRACT_ADDRESS = desk.deployed.loan_address
    other = loan_contracts()
    assert other is not first
    assert str(other.loan.address) == desk.deployed.etherswap_address
