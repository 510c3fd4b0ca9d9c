"""List parameters as the schema says them: `?page=` and `?page_size=` are whole numbers from
1, a filter is one of its values. Anything else is a 400 naming the parameter, never silently
replaced by the default or ignored (schemathesis found both)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.loans.conftest import loan_factory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("page_size=8.4e-29", "page_size"),
        ("page_size=abc", "page_size"),
        ("page_size=0", "page_size"),
        ("page_size=-5", "page_size"),
        ("page=1.5", "page"),
        ("page=0", "page"),
        ("page=last", "page"),
    ],
)
def test_bad_page_parameters_are_400(operator_client: APIClient, query: str, field: str) -> None:
    response = operator_client.get(f"/api/v1/loans/?{query}")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert error["details"][field][0]["message"] == f"{field} must be a whole number from 1"


def test_good_page_parameters(operator_client: APIClient, settings: object) -> None:
    for _ in range(3):
        loan_factory()
    body = operator_client.get("/api/v1/loans/?page_size=2&page=2").json()
    assert body["count"] == 3
    assert len(body["results"]) == 1
    assert operator_client.get("/api/v1/loans/?page=3&page_size=2").status_code == 404


@pytest.mark.parametrize(
    "query",
    ["status=", "status=%20", "bitcoin_stage=", "borrower_address=", "status=active&status="],
)
def test_an_empty_filter_is_400_not_every_loan(operator_client: APIClient, query: str) -> None:
    loan_factory()
    response = operator_client.get(f"/api/v1/loans/?{query}")
    assert response.status_code == 400, response.content
    field = query.split("=")[0]
    assert response.json()["error"]["details"] == {
        field: [{"message": "may not be empty", "code": "blank"}]
    }


def test_a_filter_value_outside_its_choices_is_400(operator_client: APIClient) -> None:
    response = operator_client.get("/api/v1/loans/?status=lost")
    assert response.status_code == 400
    assert "status" in response.json()["error"]["details"]


def test_filters_and_no_filter_answer_as_django_filter_would(operator_client: APIClient) -> None:
    """A request naming no filter is not filtered (no FilterSet is built for it); one naming
    some is filtered by all it names; the FilterSet class is built once per view."""
    from btcloan.api.filtering import FilterBackend
    from loans.apis import LoanListApi
    from loans.models import Loan

    active = loan_factory(status="active", borrower_address="0x" + "a" * 40)
    other = loan_factory(status="active")
    requested = loan_factory()

    def ids(query: str) -> list[int]:
        return [
            loan["id"] for loan in operator_client.get(f"/api/v1/loans/?{query}").json()["results"]
        ]

    assert ids("") == ids("ordering=-id&page=1") == [requested.pk, other.pk, active.pk]
    assert ids(f"status=active&borrower_address={'0x' + 'a' * 40}") == [active.pk]
    assert ids("status=requested") == [requested.pk]
    view, loans = LoanListApi(), Loan.objects.all()
    built = FilterBackend().get_filterset_class(view, loans)
    assert built is not None
    assert built is FilterBackend().get_filterset_class(view, loans)
    assert set(built.base_filters) == {"status", "bitcoin_stage", "borrower_address"}


@pytest.mark.parametrize(
    "query",
    [
        "",
        "page=2&page_size=2",
        "page=3&page_size=2",
        "page=4&page_size=2",  # past the last: 404
        "status=active",
        "status=repaid",  # none: an empty first page
        "ordering=created_at",
    ],
)
def test_a_page_and_its_count_are_djangos(
    operator_client: APIClient, query: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page and its count in one statement: the same response as with Django's Paginator
    (a count, then the page)."""
    from django.core.paginator import Paginator

    from btcloan.api.pagination import OneStatementPaginator, PageNumberPagination

    for status in ("active", "requested", "active", "closed", "active"):
        loan_factory(status=status)
    served = operator_client.get(f"/api/v1/loans/?{query}")
    assert PageNumberPagination.django_paginator_class is OneStatementPaginator
    monkeypatch.setattr(PageNumberPagination, "django_paginator_class", Paginator)
    djangos = operator_client.get(f"/api/v1/loans/?{query}")
    assert served.status_code == djangos.status_code
    assert served.json() == djangos.json()
    assert served.status_code == (404 if "page=4" in query else 200)
    assert served.status_code == 404 or served.json()["count"] in (5, 3, 0)
