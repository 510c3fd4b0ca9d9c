"""A property-based run of the OpenAPI schema against a live server (schemathesis).

The server is pytest-django's live server on the test database, with the desk's real contracts
on anvil and the Bitcoin node behind it, and two real loans (one requested and pre-signable,
one offered) so the loan endpoints answer with data, not only 404. Every operation of the
schema the server publishes is called with generated valid and invalid input as each of three
callers: anonymous, the borrower of the requested loan, and an operator (bearer tokens); every
answer must: not be a 5xx, have a status code, content type,
headers and body the schema documents, and refuse input the schema says is invalid.
Throttles are out of the way for the run; the count of requests is printed.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from django.contrib.auth import get_user_model
from eth_utils import to_checksum_address
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from btcloan.api.services import access_token_issue
from btcloan.models import BorrowerWallet
from loans.models import Loan, LoanStatus
from tests.integration.conftest import Desk, desk
from tests.integration.test_lifecycles import offered

__all__ = ["desk"]  # the integration lane's fixture, used here

pytestmark = [pytest.mark.evm, pytest.mark.bitcoin_node, pytest.mark.slow]

# Per operation, valid and invalid input each; raise it for a deeper run by hand.
EXAMPLES_PER_MODE = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "12"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture
def loans(desk: Desk) -> list[int]:
    """Database ids of real loans: one requested with TX_1 to pre-sign, one offered."""
    requested = desk.request(desk.borrower(1))
    desk.until(lambda: desk.loan(requested).collateral_lock_feerate is not None)
    offer = offered(desk, desk.borrower(2))
    assert desk.loan(offer).status == LoanStatus.OFFERED
    return [desk.loan(requested).pk, desk.loan(offer).pk]


@pytest.fixture
def server(settings: Any, live_server: Any, operator_user: Any) -> str:
    settings.ROOT_URLCONF = "btcloan.urls"  # the project's URLs only, not tests/api's probes
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"ip": None, "user": None, "auth": None},
    }
    return str(live_server.url)


@pytest.fixture
def borrower_user(loans: list[int]) -> Any:
    """The user the API knows as the requested loan's borrower (signed in with that wallet)."""
    address = to_checksum_address(Loan.objects.get(pk=loans[0]).borrower_address)
    user = get_user_model().objects.create_user(username=f"wallet-{address.lower()}")
    BorrowerWallet.objects.create(user=user, address=address)
    return user


@dataclass
class _Caller:
    """Calls the server as one identity (None: anonymous) and records what each operation
    answered."""

    server: str
    user: Any  # None: anonymous
    session: requests.Session = field(default_factory=requests.Session)
    sent: int = 0
    answered: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    token: str = ""

    def __post_init__(self) -> None:
        if self.user is not None:
            self.token = access_token_issue(user=self.user).token

    def _token(self, case: schemathesis.Case) -> str:
        if case.operation.path == "/api/v1/auth/logout":
            # Logging out spends the token: spend a fresh one each time.
            return access_token_issue(user=self.user).token
        return self.token

    def call(self, case: schemathesis.Case, mode: GenerationMode) -> None:
        # Valid input carries the caller's token. Invalid input may have its own (broken)
        # Authorization header: replacing it would make the case valid behind the checks' back.
        anonymous = self.user is None
        if not anonymous and (
            mode is GenerationMode.POSITIVE or "Authorization" not in case.headers
        ):
            case.headers["Authorization"] = f"Bearer {self._token(case)}"
        self.sent += 1
        response = case.call_and_validate(base_url=self.server, session=self.session, checks=CHECKS)
        self.answered[case.operation.label].add(response.status_code)


def _operations(schema: Any) -> list[Any]:
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the schema has an invalid operation: {result.err()}"
        operations.append(result.ok())
    assert len(operations) >= 15, [op.label for op in operations]
    return operations


def _exercise(operation: Any, mode: GenerationMode, loans: list[int], op: _Caller) -> str | None:
    """One operation in one mode; its failure, if any. Unsatisfiable when no input of the mode
    exists."""
    strategy = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:
        strategy = _with_real_loans(strategy, loans)
    return _run(strategy, partial(op.call, mode=mode))


def test_the_schema_holds_against_a_live_server(
    server: str, loans: list[int], operator_user: Any, borrower_user: Any
) -> None:
    schema = schemathesis.openapi.from_url(f"{server}/api/schema/?format=json")
    operations = _operations(schema)
    callers = {
        "anonymous": _Caller(server, None),
        "borrower": _Caller(server, borrower_user),
        "operator": _Caller(server, operator_user),
    }
    failures: list[str] = []
    for name, caller in callers.items():
        failures += [f"{name}: {failure}" for failure in _run_all(operations, loans, caller, name)]
    answered = {name: caller.answered for name, caller in callers.items()}
    for caller in callers.values():
        assert caller.sent >= len(operations) * EXAMPLES_PER_MODE
    # Each identity reached what it may, and was refused the rest.
    assert 200 in answered["anonymous"]["GET /api/v1/parameters"]
    assert answered["anonymous"]["GET /api/v1/loans/"] <= {401, 400, 404, 429}
    for name in ("borrower", "operator"):
        for label in ("GET /api/v1/loans/", "GET /api/v1/loans/{id}/"):
            assert 200 in answered[name][label], (name, label, answered[name][label])
    assert 200 in answered["operator"]["GET /api/v1/loans/{id}/collateral-tx"]
    assert not failures, "\n\n".join(failures)


def _run_all(operations: list[Any], loans: list[int], caller: _Caller, name: str) -> list[str]:
    """Every operation, valid and invalid input, as one caller; the failures."""
    failures: list[str] = []
    started = time.monotonic()
    nothing_invalid: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                error = _exercise(operation, mode, loans, caller)
            except hypothesis.errors.Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label
                nothing_invalid.append(operation.label)  # no input the schema could refuse
                continue
            if error is not None:
                failures.append(f"{operation.label} ({mode.value}): {error}")
    elapsed = time.monotonic() - started
    print(
        f"\nschemathesis as {name}: {caller.sent} requests, {len(operations)} operations, "
        f"{elapsed:.1f} s (no invalid input possible for: {', '.join(nothing_invalid)})"
    )
    for label, statuses in sorted(caller.answered.items()):
        print(f"  {label}: {sorted(statuses)}")
    return failures


def _with_real_loans(strategy: Any, loan_ids: list[int]) -> Any:
    """Two thirds of the valid cases of a loan operation name one of the real loans."""

    def pick(pair: tuple[schemathesis.Case, int | None]) -> schemathesis.Case:
        case, loan_id = pair
        if loan_id is not None and case.path_parameters and "id" in case.path_parameters:
            case.path_parameters["id"] = loan_id
        return case

    return st.tuples(strategy, st.sampled_from([None, *loan_ids])).map(pick)


def _run(strategy: Any, call: Callable[[schemathesis.Case], None]) -> str | None:
    """Up to EXAMPLES_PER_MODE cases; the (shrunk) failure's description, if any."""

    @hypothesis.settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis.given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        call(case)

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        raise
    except (Exception, BaseExceptionGroup) as exc:  # the checks' FailureGroup, or a transport error
        return f"{type(exc).__name__}: {exc}"
    return None
