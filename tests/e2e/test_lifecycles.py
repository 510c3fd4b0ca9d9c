"""Whole loans against the running service: web, worker and beat as separate processes, and
both chains moving on their own. The borrower uses only the public API and the chains; the
assertions read the desk's database and the chains themselves."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from web3 import Web3

from bitcoin.models import BitcoinTransaction, ObservedSpend
from btcloan.dev.demo_borrower import Borrower, Loan
from chainwatch.evm.driver import LoanStatus as ContractStatus
from chainwatch.models import DeliveryStatus, EvmEvent
from loans.models import AuditEntry, BitcoinStage
from loans.models import Loan as LoanRow
from tests.e2e.conftest import LiveDesk

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.evm,
    pytest.mark.bitcoin_node,
    pytest.mark.celery_worker,
]

StartDesk = Callable[..., LiveDesk]


def row(loan: Loan) -> LoanRow:
    assert loan.api_id is not None
    return LoanRow.objects.get(pk=loan.api_id)


def statuses(loan: Loan) -> list[str]:
    return list(
        AuditEntry.objects.filter(loan=row(loan), field="status", applied=True)
        .order_by("id")
        .values_list("to_value", flat=True)
    )


def contract_status(borrower: Borrower, loan: Loan) -> ContractStatus:
    return borrower.contracts.get_loan(loan.onchain_id).status


def spender_of(txid: str) -> ObservedSpend:
    return ObservedSpend.objects.get(watched__txid=txid)


def assert_nothing_stuck() -> None:
    """No EVM event was parked as failed along the way."""
    assert not EvmEvent.objects.filter(status=DeliveryStatus.FAILED).exists()


def active_loan(borrower: Borrower, label: str) -> Loan:
    loan = borrower.open_loan(label)
    borrower.accept(loan)
    return loan


FLAVOURS = pytest.mark.parametrize("flavour", ["btcloan", "seed"])


def settled_on_contract(
    borrower: Borrower, loan: Loan, flavour: str, status: ContractStatus
) -> None:
    """Ours keeps the loan's record; on the seed's contract the desk deletes a closed loan
    (so its borrower may borrow again)."""
    if flavour == "btcloan":
        assert contract_status(borrower, loan) == status
        return
    deadline = time.monotonic() + 90
    # Deleted on chain, then LoanDeleted indexed once confirmed.
    while borrower.contracts.get_loan(loan.onchain_id).exists or not (
        AuditEntry.objects.filter(loan=row(loan), action="deleted_on_chain").exists()
    ):
        assert time.monotonic() < deadline, "the closed seed loan was not deleted on chain"
        time.sleep(1)


@FLAVOURS
def test_repaid_and_released(live_desk: StartDesk, flavour: str):
    desk = live_desk(flavour)
    borrower = desk.borrower()
    evm_before = borrower.w3.eth.get_balance(Web3.to_checksum_address(borrower.wallet.address))
    loan = active_loan(borrower, "repaid")
    borrower.repay(loan)
    borrower.wait_status(loan, "repaid")
    release_txid = borrower.release(loan)
    borrower.wait_status(loan, "closed", "released")

    stored = row(loan)
    assert stored.bitcoin_stage == BitcoinStage.RELEASED
    assert statuses(loan) == ["offered", "active", "repayment_in_progress", "repaid", "closed"]
    assert stored.contract_flavour == flavour
    settled_on_contract(borrower, loan, flavour, ContractStatus.REPAID)
    # The release the borrower broadcast is the spend the desk saw, and it paid the borrower.
    assert spender_of(stored.collateral_txid).txid == release_txid
    released = desk.stack.bitcoin_rpc("getrawtransaction", release_txid, True)
    assert [o["scriptPubKey"]["address"] for o in released["vout"]] == [loan.wallet.payout_address]
    # The borrower paid the processing fee and gas and got the fee back on acceptance: it is
    # poorer only by gas, never by the amount (borrowed, then repaid).
    evm_after = borrower.w3.eth.get_balance(Web3.to_checksum_address(borrower.wallet.address))
    assert 0 < evm_before - evm_after < 10**15
    assert_nothing_stuck()


@FLAVOURS
def test_defaulted_and_swept_after_t1(live_desk: StartDesk, flavour: str):
    desk = live_desk(flavour)
    borrower = desk.borrower()
    loan = active_loan(borrower, "default")
    borrower.wait_status(loan, "defaulted", timeout=240)
    borrower.wait_status(loan, "closed", "swept", timeout=300)

    stored = row(loan)
    assert statuses(loan) == ["offered", "active", "defaulted", "closed"]
    settled_on_contract(borrower, loan, flavour, ContractStatus.DEFAULTED)
    sweep = BitcoinTransaction.objects.get(purpose="lender_sweep", loan_ref=str(stored.pk))
    assert spender_of(stored.collateral_txid).txid == sweep.txid
    # The node mined the sweep no earlier than t1 after the collateral confirmed.
    assert sweep.block_height is not None
    assert stored.collateral_confirmed_height is not None
    assert sweep.block_height >= stored.collateral_confirmed_height + stored.collateral_csv_blocks
    assert_nothing_stuck()


def test_offer_withdrawn_and_the_borrower_exits_the_escrow(live_desk: StartDesk):
    desk = live_desk()
    borrower = desk.borrower()
    loan = borrower.open_loan("unaccepted")
    # The borrower never accepts: after t_B the lender takes the offer and its bond back.
    borrower.wait_status(loan, "refunded_to_lender", timeout=120)
    assert contract_status(borrower, loan) == ContractStatus.REFUNDED_TO_LENDER
    exit_txid = borrower.exit_escrow(loan)
    borrower.wait_status(loan, "closed", "exited", timeout=180)

    stored = row(loan)
    assert statuses(loan) == ["offered", "refunded_to_lender", "closed"]
    assert spender_of(stored.escrow_txid).txid == exit_txid
    # TX_1 was never broadcast: the escrow went back to the borrower, whole but for the fee.
    assert not BitcoinTransaction.objects.filter(
        purpose="collateral_lock", loan_ref=str(stored.pk)
    ).exists()
    exited = desk.stack.bitcoin_rpc("getrawtransaction", exit_txid, True)
    assert [o["scriptPubKey"]["address"] for o in exited["vout"]] == [loan.wallet.payout_address]
    assert_nothing_stuck()


def test_refused_repayment_is_withdrawn_and_the_collateral_swept(live_desk: StartDesk):
    desk = live_desk(LENDER_ACTIONS_REQUIRING_APPROVAL="accept_repayment")
    borrower = desk.borrower()
    loan = active_loan(borrower, "refused")
    borrower.repay(loan)
    borrower.wait_status(loan, "repayment_in_progress")
    stored = row(loan)
    assert stored.approvals.get().status == "pending"  # held for an operator who never comes
    borrower.withdraw_repayment(loan)
    borrower.wait_status(loan, "refunded_to_borrower")
    borrower.wait_status(loan, "closed", "swept", timeout=300)

    stored = row(loan)
    assert statuses(loan) == [
        "offered",
        "active",
        "repayment_in_progress",
        "refunded_to_borrower",
        "closed",
    ]
    assert contract_status(borrower, loan) == ContractStatus.REFUNDED_TO_BORROWER
    assert stored.preimage_lender_revealed_at is None  # P_L never left the desk
    assert not borrower.contracts.loan.events.RepaymentAccepted().get_logs(
        argument_filters={"loanId": loan.onchain_id}, from_block=0
    )
    assert_nothing_stuck()
