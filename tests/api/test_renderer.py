"""The API's renderer (btcloan.api.renderers, orjson) writes DRF's JSONRenderer's bytes: on the
loan list and detail as served, and on every kind of value DRF's encoder knows."""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.utils.functional import lazy
from rest_framework import renderers
from rest_framework.test import APIClient

from btcloan.api.renderers import JSONRenderer
from tests.api.test_loan_representation import _full_loan, _story
from tests.loans.conftest import loan_factory

pytestmark = pytest.mark.django_db


def _drf(data: Any, media_type: str | None = None) -> bytes:
    return renderers.JSONRenderer().render(data, media_type)


def _served(client: APIClient, path: str, **headers: Any) -> tuple[bytes, Any]:
    """The response's body and the data it was rendered from."""
    response = client.get(path, **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    return response.content, response.data


def test_the_api_renders_with_it(settings: Any) -> None:
    assert settings.REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"] == [
        "btcloan.api.renderers.JSONRenderer"
    ]


def test_a_loan_detail_and_list_are_drfs_bytes(operator_client: APIClient) -> None:
    loan = _full_loan()
    _story(loan)
    loan_factory()
    for path in (f"/api/v1/loans/{loan.pk}/", "/api/v1/loans/", "/api/v1/auth/me"):
        body, data = _served(operator_client, path)
        assert body == _drf(data)
        assert b"\n" not in body  # compact, as DRF's default
    body, data = _served(operator_client, f"/api/v1/loans/{loan.pk}/")
    assert f'"amount_wei":"{2**70}"'.encode() in body  # wei as a string, past 2^53
    assert b'"timeline":[{' in body


def test_an_indented_response_is_drfs(operator_client: APIClient) -> None:
    loan = loan_factory()
    accept = "application/json; indent=2"
    body, data = _served(operator_client, f"/api/v1/loans/{loan.pk}/", HTTP_ACCEPT=accept)
    assert body == _drf(data, accept)
    assert b'\n  "id": ' in body


@dataclass
class _Point:
    x: int


AWARE = datetime.datetime(2026, 12, 5, 9, 56, 17, 123456, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    "value",
    [
        {"at": AWARE, "whole": AWARE.replace(microsecond=0), "naive": AWARE.replace(tzinfo=None)},
        {"day": datetime.date(2026, 12, 5), "time": datetime.time(9, 56, 17, 5)},
        {"timedelta": datetime.timedelta(seconds=90, microseconds=5)},
        {"decimal": Decimal("1.25"), "uuid": uuid.UUID(int=7), "lazy": lazy(str, str)("x")},
        {"bytes": b"ab", "tuple": (1, 2), "set": {3}, "nested": [{"a": [None, True, 1.5]}]},
        {"text": 'é \u2028 \u2029 \x00 \x1f \x7f " \\ \n \t 💰', "negative": -(2**63)},
        {"past 64 bits": 2**64, "wei": 2**200},  # only stdlib json encodes these
        {1: "an int key", None: "a None key"},
        {"ordered": dict.fromkeys("zyxa", 0)},
    ],
    ids=[
        "datetimes",
        "date-time",
        "timedelta",
        "scalars",
        "containers",
        "text",
        "bigint",
        "keys",
        "order",
    ],
)
def test_each_kind_of_value_is_drfs_bytes(value: Any) -> None:
    assert JSONRenderer().render(value) == _drf(value)


def test_what_drf_refuses_it_refuses() -> None:
    for value in ({"point": _Point(1)}, {"object": object()}):
        with pytest.raises(TypeError):
            _drf(value)
        with pytest.raises(TypeError):
            JSONRenderer().render(value)


def test_nothing_renders_as_nothing() -> None:
    assert JSONRenderer().render(None) == b"" == _drf(None)
