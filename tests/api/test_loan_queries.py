"""The loan list and detail run a fixed number of SQL statements, however many loans there are
and whatever the page holds: no query per loan (N+1). bench/api_bench.py measures the time."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from loans.models import AuditEntry
from tests.loans.conftest import loan_factory

pytestmark = pytest.mark.django_db


def _queries(client: APIClient, path: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, response.content
    return len(captured)


def _loans(n: int, **fields: Any) -> None:
    for _ in range(n):
        loan = loan_factory(**fields)
        AuditEntry.objects.create(loan=loan, cause="backend", action="loan_requested")


def test_the_list_does_not_query_per_loan(
    operator_client: APIClient, django_assert_max_num_queries: Any
) -> None:
    _loans(3)
    few = _queries(operator_client, "/api/v1/loans/")
    _loans(40)
    assert _queries(operator_client, "/api/v1/loans/?page_size=43") == few
    # Token lookup, the operator's permissions (own and through the role), the page with its
    # count (btcloan.api.pagination.OneStatementPaginator).
    with django_assert_max_num_queries(4):
        operator_client.get("/api/v1/loans/?page_size=43")


def test_a_borrowers_list_does_not_query_per_loan(
    borrower_client: APIClient, wallet: Any, django_assert_max_num_queries: Any
) -> None:
    _loans(2, borrower_address=wallet.address)
    few = _queries(borrower_client, "/api/v1/loans/")
    _loans(20, borrower_address=wallet.address)
    _loans(5)  # someone else's
    assert _queries(borrower_client, "/api/v1/loans/") == few
    response = borrower_client.get("/api/v1/loans/")
    assert response.json()["count"] == 22
    # Token lookup (with the wallet), the page with its count.
    with django_assert_max_num_queries(2):
        borrower_client.get("/api/v1/loans/")


def test_a_borrower_is_matched_however_the_address_is_spelt(
    borrower_client: APIClient, wallet: Any
) -> None:
    loan_factory(borrower_address=wallet.address)  # EIP-55, as events give it
    loan_factory(borrower_address=wallet.address.lower())
    assert borrower_client.get("/api/v1/loans/").json()["count"] == 2


def test_the_detail_runs_a_fixed_number_of_queries(
    operator_client: APIClient, django_assert_max_num_queries: Any
) -> None:
    loan = loan_factory()
    for n in range(30):  # a long timeline costs no extra query
        AuditEntry.objects.create(loan=loan, cause="backend", action=f"step_{n}")
    # Token, the operator's permissions (own and through the role), and the loan with its story
    # (EVM events, Bitcoin facts, audit trail, workflows and both known heads) in one statement
    # (loans.selectors.with_detail_story).
    with django_assert_max_num_queries(4):
        response = operator_client.get(f"/api/v1/loans/{loan.pk}/")
    assert len(response.json()["timeline"]) == 30


def test_an_active_loans_deadline_reads_no_head_again(
    operator_client: APIClient, django_assert_max_num_queries: Any
) -> None:
    """Its next step depends on a deadline: judged from the heads the detail already read."""
    from chainwatch.models import ChainCursor

    loan = loan_factory(status="active", activation_block=100, loan_duration=30)
    ChainCursor.objects.create(chain_id=loan.chain_id, block_number=200, block_hash="0x" + "1" * 64)
    with django_assert_max_num_queries(4):
        response = operator_client.get(f"/api/v1/loans/{loan.pk}/")
    assert response.json()["next_action"]["party"] == "lender"
