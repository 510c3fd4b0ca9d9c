"""The loan list and detail are built for speed (bench/api_bench.py): the serializers compile
their fields once instead of running DRF's field machinery per value, and the detail reads the
heads and the audit trail once for all its parts. Both must answer exactly what the slower way
answered."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from rest_framework import serializers

from bitcoin.models import BitcoinFact, ScanCursor
from chainwatch.models import ChainCursor, EvmEvent
from loans.deadlines import loan_deadlines
from loans.models import (
    AuditAction,
    AuditCause,
    AuditEntry,
    BitcoinStage,
    Loan,
    LoanStatus,
    LoanWorkflow,
    WorkflowType,
)
from loans.selectors import (
    known_heads,
    loan_detail,
    loan_detail_for,
    loan_next_action,
    loan_story,
    loan_timeline,
)
from loans.serializers import DERIVED_FIELDS, LoanDetailSerializer, LoanSerializer, loan_columns
from loans.services.accounting import loan_accounting
from tests.loans.conftest import loan_factory

pytestmark = pytest.mark.django_db


def _drf(serializer: serializers.Serializer, instance: Any) -> dict[str, Any]:
    """DRF's own representation: bound fields, get_attribute, one to_representation each."""
    return dict(serializers.Serializer.to_representation(serializer, instance))


def _full_loan() -> Loan:
    """Every optional field set, the amounts past 2^53, a choice and both timestamps."""
    return loan_factory(
        status=LoanStatus.ACTIVE,
        bitcoin_stage=BitcoinStage.COLLATERAL_CONFIRMED,
        onchain_id=Decimal(2**200),
        amount_wei=Decimal(2**70),
        bond_wei=Decimal(10**15),
        preimage_hash_lender="b" * 64,
        preimage_borrower="c" * 64,
        escrow_internal_key="d" * 64,
        escrow_value_sats=1_200_000,
        escrow_confirmed_height=205,
        collateral_address="bcrt1q" + "e" * 38,
        collateral_txid="f" * 64,
        collateral_vout=1,
        collateral_value_sats=1_100_000,
        collateral_confirmed_height=210,
        offer_block=110,
        activation_block=120,
    )


@pytest.mark.parametrize("make", [loan_factory, _full_loan], ids=["nulls", "full"])
def test_a_loan_is_represented_as_drf_would(make: Any) -> None:
    loan = Loan.objects.get(pk=make().pk)  # as read back (Decimals, aware datetimes)
    fast = LoanSerializer(loan).data
    slow = _drf(LoanSerializer(), loan)
    assert fast == slow
    assert list(fast) == list(slow)  # the same keys in the same order


def test_a_page_of_loans_is_represented_as_drf_would() -> None:
    loans = [loan_factory(), _full_loan(), loan_factory(bond_wei=Decimal(0))]
    page = LoanSerializer(Loan.objects.order_by("id"), many=True).data
    assert page == [_drf(LoanSerializer(), loan) for loan in Loan.objects.order_by("id")]
    assert [row["id"] for row in page] == [loan.pk for loan in loans]
    # uint256 and wei as strings, past what a JSON number holds exactly
    assert page[1]["onchain_id"] == str(2**200)
    assert page[1]["amount_wei"] == str(2**70)
    # The list reads rows of just the serialised columns: the same page.
    rows = Loan.objects.order_by("id").values(*loan_columns())
    assert LoanSerializer(rows, many=True).data == page
    assert "preimage_lender_encrypted" not in loan_columns()


def _story(loan: Loan) -> None:
    """A timeline from all three sources, a workflow, heads on both chains."""
    ChainCursor.objects.create(chain_id=loan.chain_id, block_number=150, block_hash="0x" + "1" * 64)
    ScanCursor.objects.create(network="regtest", height=300, block_hash="c" * 64)
    EvmEvent.objects.create(
        chain_id=loan.chain_id,
        contract_address=loan.contract_address,
        contract_name="BtcCollateralLoan",
        event_name="LoanActivated",
        block_number=120,
        block_hash="0x" + "2" * 64,
        transaction_hash="0x" + "3" * 64,
        log_index=4,
        args={"loanId": str(loan.onchain_id)},
        loan_id=loan.onchain_id,
        delivery_key=f"loan:{loan.contract_address.lower()}:{loan.onchain_id}",
        status="processed",
    )
    BitcoinFact.objects.create(
        kind="payment_confirmed",
        loan_ref=str(loan.pk),
        dedupe_key=f"fact:{loan.pk}",
        payload={"txid": "f" * 64, "block_height": 210, "confirmations": 2, "value_sats": 11},
    )
    for action, field, before, after in (
        (AuditAction.LOAN_REQUESTED, "", "", ""),
        (AuditAction.TRANSITION, "status", "requested", "offered"),
        (AuditAction.TRANSITION, "status", "offered", "active"),
    ):
        AuditEntry.objects.create(
            loan=loan,
            cause=AuditCause.OPERATOR,
            cause_ref="alice",
            action=action,
            field=field,
            from_value=before,
            to_value=after,
            details={"note": "x"},
        )
    LoanWorkflow.objects.create(
        loan=loan, type=WorkflowType.REPAYMENT, current_step="wait", steps_completed=["a", "b"]
    )


def test_the_detail_is_represented_as_drf_would(operator_user: Any) -> None:
    loan = _full_loan()
    _story(loan)
    detail = loan_detail_for(user=operator_user, pk=loan.pk)
    assert detail is not None
    assert detail.deadlines
    assert len(detail.timeline) == 5
    assert detail.accounting.flows
    fast = LoanDetailSerializer(detail).data
    fields = LoanDetailSerializer().fields
    slow = _drf(LoanSerializer(), detail.loan) | {
        name: fields[name].to_representation(getattr(detail, name)) for name in DERIVED_FIELDS
    }
    assert fast == slow
    assert list(fast) == list(slow)


def test_the_detail_reads_once_what_its_parts_read_each(operator_user: Any) -> None:
    """The heads and the audit trail read once with the timeline: the same detail as each part
    reading its own."""
    loan = _full_loan()
    _story(loan)
    shared = loan_detail_for(user=operator_user, pk=loan.pk)
    loan = Loan.objects.get(pk=loan.pk)
    assert shared is not None
    evm_head, btc_head = known_heads(chain_id=loan.chain_id)
    assert shared.heads == {"evm": evm_head, "bitcoin": btc_head} == {"evm": 162, "bitcoin": 300}
    assert evm_head is not None
    assert shared.deadlines == loan_deadlines(loan, evm_head=evm_head, btc_head=btc_head)
    assert shared.next_action == loan_next_action(loan=loan)
    assert shared.timeline == loan_timeline(loan=loan)
    assert shared.accounting == loan_accounting(loan)
    assert shared == loan_detail(loan=loan, operator_names=True)


def test_a_loan_nobody_may_see_has_no_detail() -> None:
    assert loan_detail_for(user=AnonymousUser(), pk=loan_factory().pk) is None


@pytest.mark.parametrize(
    "status", [LoanStatus.CLOSED, LoanStatus.INVALID, LoanStatus.DELETED], ids=str
)
def test_the_outcome_from_a_read_audit_trail_is_the_queried_one(status: str) -> None:
    """A finished loan's contract outcome: the last applied contract status in the trail."""
    loan = loan_factory(status=status)
    for before, after, applied in (
        ("requested", "offered", True),
        ("offered", "active", True),
        ("active", "repaid", False),  # not applied: not the outcome
        ("active", "closed", True),  # not a contract status
    ):
        AuditEntry.objects.create(
            loan=loan,
            cause=AuditCause.EVM_EVENT,
            action=AuditAction.TRANSITION,
            field="status",
            from_value=before,
            to_value=after,
            applied=applied,
        )
    trail = list(AuditEntry.objects.filter(loan=loan).order_by("at", "id"))
    assert loan_accounting(loan, audit_trail=trail) == loan_accounting(loan)
    assert loan_accounting(loan, audit_trail=trail).outcome == LoanStatus.ACTIVE
    assert loan_accounting(loan, audit_trail=[]).outcome == LoanStatus.INVALID


def test_the_deposit_shortfall_from_a_read_audit_trail_is_the_queried_one() -> None:
    loan = loan_factory(bitcoin_stage=BitcoinStage.ESCROW_CONFIRMED)
    for missing in (500, 300):  # the newest one counts
        AuditEntry.objects.create(
            loan=loan,
            cause=AuditCause.BITCOIN_FACT,
            action=AuditAction.ESCROW_DEPOSIT_SHORT,
            details={"deposit_sats": 1000, "missing_sats": missing, "feerate_floor_sat_vb": 1},
        )
    trail = list(AuditEntry.objects.filter(loan=loan).order_by("at", "id"))
    action = loan_next_action(loan=loan, audit_trail=trail)
    assert action == loan_next_action(loan=loan)
    assert "is 300 sats short" in action.action


def test_the_story_is_what_each_source_holds_for_the_loan() -> None:
    """One statement for the timeline's sources, the audit trail and the workflows: each row
    is its model's, in its order, and only this loan's (not an orphaned event's)."""
    loan = _full_loan()
    _story(loan)
    other = loan_factory(onchain_id=loan.onchain_id + 1)
    _story_of_another(other)
    orphaned = EvmEvent.objects.get(loan_id=loan.onchain_id)
    orphaned.pk = None
    orphaned.transaction_hash, orphaned.status = "0x" + "9" * 64, "orphaned"
    orphaned.save()

    story = loan_story(loan=loan, for_detail=True)
    trail = list(AuditEntry.objects.filter(loan=loan).order_by("at", "id"))
    assert [_fields(a) for a in story.audit_trail] == [_fields(a) for a in trail]
    workflows = list(LoanWorkflow.objects.filter(loan=loan).order_by("created_at"))
    shown = ("id", "type", "status", "current_step", "steps_completed", "retry_count")
    assert [_fields(w, shown) for w in story.workflows] == [_fields(w, shown) for w in workflows]
    by_alice = {"cause": "operator", "applied": True, "note": "x"}
    assert [(e.source, e.what, e.ref, e.block, e.details) for e in story.timeline] == [
        ("evm", "LoanActivated", "0x" + "3" * 64 + ":4", 120, {"status": "processed"}),
        ("bitcoin", "payment_confirmed", "f" * 64, 210, {"confirmations": 2, "value_sats": 11}),
        ("backend", "loan_requested", "alice", None, by_alice),
        ("backend", "status requested -> offered", "alice", None, by_alice),
        ("backend", "status offered -> active", "alice", None, by_alice),
    ]
    assert [e.at for e in story.timeline] == sorted(e.at for e in story.timeline)
    assert story.timeline == loan_timeline(loan=loan)
    assert story.heads == known_heads(chain_id=loan.chain_id) == (162, 300)
    assert loan_story(loan=loan).workflows == []  # not asked for
    assert loan_story(loan=loan).heads == (None, None)
    assert {e.ref for e in loan_timeline(loan=loan, operator_names=False)} >= {"operator"}


@pytest.mark.parametrize("for_detail", [True, False])
def test_without_postgresql_the_story_is_read_source_by_source_to_the_same_rows(
    for_detail: bool,
) -> None:
    """The embedded SQLite (`make demo`) has no jsonb: the same rows come from a query per
    source, so every reader of the story answers the same on either database."""
    from loans.selectors import _story_rows, _story_rows_by_source

    loan = _full_loan()
    _story(loan)
    _story_of_another(loan_factory(onchain_id=loan.onchain_id + 1))
    one_statement = sorted(_story_rows(loan, for_detail=for_detail), key=lambda r: r[:3:2])
    by_source = sorted(_story_rows_by_source(loan, for_detail=for_detail), key=lambda r: r[:3:2])
    assert one_statement == by_source
    assert {row[0] for row in by_source} == set(range(6) if for_detail else range(3))


def _story_of_another(loan: Loan) -> None:
    AuditEntry.objects.create(loan=loan, cause=AuditCause.BACKEND, action="other")
    LoanWorkflow.objects.create(loan=loan, type=WorkflowType.REPAYMENT)
    BitcoinFact.objects.create(
        kind="payment_seen", loan_ref=str(loan.pk), dedupe_key="o", payload={}
    )


def _fields(row: Any, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    names = names or tuple(f.attname for f in type(row)._meta.concrete_fields)
    return {name: getattr(row, name) for name in names}
