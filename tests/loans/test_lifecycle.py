"""The transition service: the table is law, every change leaves its audit row, and a
concurrent or replayed fact can never apply twice."""

from __future__ import annotations

import threading

import pytest
from django.db import DatabaseError, connection, transaction

from loans.models import AuditCause, AuditEntry, BitcoinStage, Loan, LoanStatus
from loans.services.lifecycle import loan_transition
from loans.transitions import BITCOIN_STAGE_SOURCES, STATUS_SOURCES, is_allowed

pytestmark = pytest.mark.django_db

ALL_STATUSES = list(LoanStatus)


@pytest.mark.parametrize(
    ("target", "source"),
    [(t, s) for t, sources in STATUS_SOURCES.items() for s in sorted(sources)],
)
def test_every_allowed_status_transition_applies_with_one_audit_row(make_loan, target, source):
    loan = make_loan(status=source)
    result = loan_transition(
        loan_id=loan.pk, field="status", to=target, cause=AuditCause.EVM_EVENT, cause_ref="evt-1"
    )
    assert result.applied
    assert not result.refused
    loan.refresh_from_db()
    assert loan.status == target
    (entry,) = AuditEntry.objects.filter(loan=loan)
    assert (entry.action, entry.from_value, entry.to_value, entry.applied) == (
        "transition",
        source,
        target,
        True,
    )
    assert entry.cause == AuditCause.EVM_EVENT
    assert entry.cause_ref == "evt-1"


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (s, t)
        for s in ALL_STATUSES
        for t in ALL_STATUSES
        if s != t and not is_allowed("status", s, t)
    ],
)
def test_every_illegal_status_transition_is_refused_and_recorded(make_loan, source, target):
    loan = make_loan(status=source)
    result = loan_transition(loan_id=loan.pk, field="status", to=target, cause=AuditCause.EVM_EVENT)
    assert result.refused
    loan.refresh_from_db()
    assert loan.status == source
    (entry,) = AuditEntry.objects.filter(loan=loan)
    assert entry.action == "transition_refused"
    assert entry.applied is False
    assert (entry.from_value, entry.to_value) == (source, target)


def test_the_bitcoin_stage_follows_its_own_table(make_loan):
    loan = make_loan()
    path = [
        BitcoinStage.ESCROW_SEEN,
        BitcoinStage.ESCROW_CONFIRMED,
        BitcoinStage.PRESIGNED,
        BitcoinStage.COLLATERAL_LOCKED,
        BitcoinStage.COLLATERAL_CONFIRMED,
        BitcoinStage.RELEASED,
    ]
    for stage in path:
        assert loan_transition(
            loan_id=loan.pk, field="bitcoin_stage", to=stage, cause=AuditCause.BITCOIN_FACT
        ).applied
    # A released collateral cannot be swept afterwards.
    assert loan_transition(
        loan_id=loan.pk, field="bitcoin_stage", to=BitcoinStage.SWEPT, cause=AuditCause.WATCHDOG
    ).refused
    loan.refresh_from_db()
    assert loan.bitcoin_stage == BitcoinStage.RELEASED
    assert set(BITCOIN_STAGE_SOURCES) == set(BitcoinStage) - {BitcoinStage.AWAITING_ESCROW}


def test_a_replayed_fact_changes_nothing_and_writes_nothing(make_loan):
    loan = make_loan()
    first = loan_transition(
        loan_id=loan.pk, field="status", to=LoanStatus.OFFERED, cause=AuditCause.EVM_EVENT
    )
    again = loan_transition(
        loan_id=loan.pk, field="status", to=LoanStatus.OFFERED, cause=AuditCause.EVM_EVENT
    )
    assert first.applied
    assert again.unchanged
    assert not again.applied
    assert not again.refused
    assert AuditEntry.objects.filter(loan=loan).count() == 1


def test_updates_ride_along_with_the_transition_only_when_it_applies(make_loan):
    loan = make_loan()
    loan_transition(
        loan_id=loan.pk,
        field="status",
        to=LoanStatus.OFFERED,
        cause=AuditCause.EVM_EVENT,
        updates={"offer_block": 120},
    )
    refused = loan_transition(
        loan_id=loan.pk,
        field="status",
        to=LoanStatus.REPAID,
        cause=AuditCause.EVM_EVENT,
        updates={"repayment_block": 999},
    )
    loan.refresh_from_db()
    assert refused.refused
    assert loan.offer_block == 120
    assert loan.repayment_block is None


def test_the_audit_trail_refuses_update_and_delete(make_loan):
    assert connection.vendor == "postgresql"
    loan = make_loan()
    loan_transition(
        loan_id=loan.pk, field="status", to=LoanStatus.OFFERED, cause=AuditCause.EVM_EVENT
    )
    entry = AuditEntry.objects.get(loan=loan)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEntry.objects.filter(pk=entry.pk).update(action="forged")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEntry.objects.filter(pk=entry.pk).delete()
    entry.refresh_from_db()
    assert entry.action == "transition"


@pytest.mark.django_db(transaction=True)
def test_concurrent_conflicting_transitions_apply_exactly_one(make_loan):
    """Acceptance and withdrawal of one offer race: the compare-and-set lets one through."""
    loan = make_loan(status=LoanStatus.OFFERED)
    barrier = threading.Barrier(2)
    results = {}

    def attempt(target: LoanStatus) -> None:
        try:
            barrier.wait()
            results[target] = loan_transition(
                loan_id=loan.pk, field="status", to=target, cause=AuditCause.EVM_EVENT
            )
        finally:
            connection.close()

    threads = [
        threading.Thread(target=attempt, args=(t,))
        for t in (LoanStatus.ACTIVE, LoanStatus.REFUNDED_TO_LENDER)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    applied = [t for t, r in results.items() if r.applied]
    refused = [t for t, r in results.items() if r.refused]
    assert len(applied) == 1
    assert len(refused) == 1
    assert Loan.objects.get(pk=loan.pk).status == applied[0]
    assert AuditEntry.objects.filter(loan=loan, applied=True).count() == 1
    assert AuditEntry.objects.filter(loan=loan, applied=False).count() == 1
