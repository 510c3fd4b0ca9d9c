"""Disturbed runs end where an undisturbed one does: with every event and fact delivered
twice, with tasks lost as if their workers died, and with the activation block reorged out
after the backend had acted on it. Counts of transitions, lender calls and Bitcoin
transactions show nothing lost and nothing doubled."""

from __future__ import annotations

import random

import pytest
from web3.types import RPCEndpoint

from bitcoin.models import BitcoinFact, BitcoinTransaction
from chainwatch.models import DeliveryStatus, EvmEvent, EvmTransaction, ReorgNotice
from loans.models import AuditEntry, BitcoinStage, LoanStatus
from tests.integration.conftest import Desk, known
from tests.integration.test_lifecycles import activated

pytestmark = [pytest.mark.evm, pytest.mark.bitcoin_node, pytest.mark.slow]

REPAID_PATH = ["offered", "active", "repayment_in_progress", "repaid"]


def repaid(desk: Desk) -> int:
    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    borrower.actions.attempt_repayment(onchain_id)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REPAID)
    return onchain_id


def assert_undisturbed_outcome(desk: Desk, onchain_id: int) -> None:
    loan = desk.loan(onchain_id)
    assert (loan.status, loan.bitcoin_stage) == (
        LoanStatus.REPAID,
        BitcoinStage.COLLATERAL_CONFIRMED,
    )
    applied = list(
        AuditEntry.objects.filter(loan=loan, field="status", applied=True)
        .order_by("id")
        .values_list("to_value", flat=True)
    )
    assert applied == REPAID_PATH
    # One lender call per action, each confirmed once; one TX_1.
    calls = sorted(EvmTransaction.objects.values_list("action", "status"))
    assert calls == [
        ("accept_repayment", "confirmed"),
        ("associate_hash", "confirmed"),
        ("offer", "confirmed"),
    ]
    assert list(BitcoinTransaction.objects.values_list("purpose", flat=True)) == ["collateral_lock"]
    assert loan.workflows.count() == len(set(loan.workflows.values_list("type", flat=True)))


def test_every_event_and_fact_delivered_twice_changes_nothing(desk: Desk):
    def redeliver() -> None:
        EvmEvent.objects.filter(status=DeliveryStatus.PROCESSED).update(
            status=DeliveryStatus.PENDING, processed_at=None
        )
        BitcoinFact.objects.exclude(delivered_at=None).update(delivered_at=None)

    desk.after_round = redeliver
    onchain_id = repaid(desk)
    desk.after_round = None
    desk.pump()
    assert_undisturbed_outcome(desk, onchain_id)
    assert AuditEntry.objects.filter(action="transition_refused").count() == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tasks_lost_with_their_workers_are_driven_again(desk: Desk, seed: int):
    chance = random.Random(seed)
    desk.lose = lambda name: chance.random() < 0.4
    onchain_id = repaid(desk)
    assert desk.lost, "the scenario lost no task: it proves nothing"
    assert_undisturbed_outcome(desk, onchain_id)


def test_a_reorg_of_the_activation_block_after_the_backend_acted_on_it(desk: Desk):
    borrower = desk.borrower()
    from tests.integration.test_lifecycles import offered

    onchain_id = offered(desk, borrower)
    fork = desk.w3.provider.make_request(RPCEndpoint("evm_snapshot"), [])["result"]
    borrower.actions.accept_offer(onchain_id, borrower.preimage)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.ACTIVE)
    first_activation = desk.loan(onchain_id).activation_block

    # The activation's branch is replaced by a longer one in which it lands later.
    assert desk.w3.provider.make_request(RPCEndpoint("evm_revert"), [fork])["result"] is True
    desk.mine_evm(2)
    borrower.actions.accept_offer(onchain_id, borrower.preimage)
    desk.mine_evm(6)
    desk.pump()
    loan = desk.loan(onchain_id)
    assert loan.status == LoanStatus.ACTIVE
    assert loan.activation_block == known(first_activation) + 2
    rederived = AuditEntry.objects.filter(loan=loan, action="rederived")
    assert rederived.exists()
    # Exactly one activation stands, at its new block; the old one is orphaned, or (when the
    # re-sent transaction is byte-identical) its row now stands at the new block.
    activations = EvmEvent.objects.filter(event_name="LoanActivated")
    (live,) = activations.filter(status=DeliveryStatus.PROCESSED)
    assert live.block_number == loan.activation_block
    assert set(activations.exclude(pk=live.pk).values_list("status", flat=True)) <= {
        DeliveryStatus.ORPHANED
    }
    assert ReorgNotice.objects.filter(loan_id=loan.onchain_id).exists()

    # The loan goes on as if nothing happened: TX_1 confirms once, the repayment settles it.
    desk.until(
        lambda: desk.loan(onchain_id).bitcoin_stage == BitcoinStage.COLLATERAL_CONFIRMED,
        evm=0,
        btc=1,
    )
    borrower.actions.attempt_repayment(onchain_id)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REPAID)
    assert list(BitcoinTransaction.objects.values_list("purpose", flat=True)) == ["collateral_lock"]
