"""The typed hand-offs between the apps: every Bitcoin fact kind and every event of both
contracts is handled by `loans` or ignored with a reason, and nothing else is in the tables."""

from __future__ import annotations

import dataclasses

import pytest

from bitcoin.facts import PAYLOAD_TYPES, PaymentPayload, payload_of
from bitcoin.models import FactKind, TxPurpose, WatchPurpose
from chainwatch.evm.artifacts import load_abi
from loans.handlers import (
    FACT_HANDLERS,
    IGNORED_EVENTS,
    IGNORED_FACTS,
    LOAN_EVENT_HANDLERS,
    REQUEST_HANDLERS,
)

CONTRACTS = ("BtcCollateralLoan", "EtherSwap")


def abi_events() -> set[tuple[str, str]]:
    return {
        (contract, item["name"])
        for contract in CONTRACTS
        for item in load_abi(contract)
        if item["type"] == "event"
    }


def test_every_contract_event_is_handled_or_ignored_with_a_reason() -> None:
    events = abi_events()
    assert len(events) == 17  # 14 of the loan contract, 3 of the swap
    handled = set(REQUEST_HANDLERS) | set(LOAN_EVENT_HANDLERS)
    ignored = set(IGNORED_EVENTS)
    assert not handled & ignored, "an event is both handled and ignored"
    assert events - handled - ignored == set(), "an event has no handler and no reason"
    assert (handled | ignored) - events == set(), "a table names an event no contract emits"
    assert all(len(reason) > 20 for reason in IGNORED_EVENTS.values())


def test_every_fact_kind_is_handled_or_ignored_with_a_reason() -> None:
    kinds = set(FactKind)
    assert not set(FACT_HANDLERS) & set(IGNORED_FACTS)
    assert kinds == set(FACT_HANDLERS) | set(IGNORED_FACTS)
    assert all(len(reason) > 20 for reason in IGNORED_FACTS.values())
    assert FactKind.SPEND_DROPPED in FACT_HANDLERS  # a dropped spend leaves no final stage
    assert set(PAYLOAD_TYPES) == kinds  # and each kind says what it carries


def test_a_stored_payload_reads_back_typed() -> None:
    payload = payload_of(
        FactKind.SPEND_SEEN,
        {"txid": "ab" * 32, "purpose": "escrow", "path": "borrower_exit", "extra": 1},
    )
    assert payload.purpose == WatchPurpose.ESCROW
    assert getattr(payload, "path", None) == TxPurpose.BORROWER_EXIT
    unknown = payload_of(FactKind.SPEND_SEEN, {"txid": "ab" * 32, "path": "no such path"})
    assert getattr(unknown, "path", "") is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        PaymentPayload(txid="aa").txid = "bb"  # type: ignore[misc]
