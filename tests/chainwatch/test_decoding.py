"""The decoder's fast word path agrees with eth_abi on every event of the protocol."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi import encode as abi_encode
from eth_utils import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from chainwatch.indexer.decoding import Decoder, EventSpec, UnknownLog, protocol_specs

SPECS = protocol_specs()
DECODER = Decoder(SPECS)


def value_for(abi_type: str) -> st.SearchStrategy[Any]:
    if abi_type == "address":
        return st.binary(min_size=20, max_size=20).map(lambda b: to_checksum_address(b))
    if abi_type.startswith("uint"):
        return st.integers(min_value=0, max_value=2 ** int(abi_type[4:] or 256) - 1)
    if abi_type == "bytes32":
        return st.binary(min_size=32, max_size=32)
    if abi_type == "string":
        return st.text(max_size=80)
    raise AssertionError(abi_type)


def log_of(spec: EventSpec, values: dict[str, Any]) -> dict[str, Any]:
    indexed = [p for p in spec.params if p.indexed]
    unindexed = [p for p in spec.params if not p.indexed]
    topics = [spec.topic0] + ["0x" + abi_encode([p.type], [values[p.name]]).hex() for p in indexed]
    data = abi_encode([p.type for p in unindexed], [values[p.name] for p in unindexed])
    return {"topics": topics, "data": "0x" + data.hex()}


@st.composite
def event_and_values(draw: st.DrawFn) -> tuple[EventSpec, dict[str, Any]]:
    spec = draw(st.sampled_from(SPECS))
    return spec, {p.name: draw(value_for(p.type)) for p in spec.params}


@settings(max_examples=300, deadline=None)
@given(event_and_values())
def test_decoding_round_trips_every_event(case: tuple[EventSpec, dict[str, Any]]) -> None:
    spec, values = case
    decoded = DECODER.decode(log_of(spec, values))
    assert (decoded.contract_name, decoded.event_name) == (spec.contract_name, spec.name)
    expected = {
        name: "0x" + value.hex() if isinstance(value, bytes) else value
        for name, value in values.items()
    }
    assert decoded.args == expected
    assert list(decoded.args) == [p.name for p in spec.params]


def test_malformed_and_foreign_logs_are_refused() -> None:
    offered = next(s for s in SPECS if s.name == "LoanOffered")
    good = log_of(offered, {"loanId": 1, "lender": "0x" + "11" * 20, "amount": 5, "bondAmount": 1})
    with pytest.raises(UnknownLog, match="unknown topic0"):
        DECODER.decode({**good, "topics": ["0x" + "00" * 32, *good["topics"][1:]]})
    with pytest.raises(UnknownLog, match="topics"):
        DECODER.decode({**good, "topics": good["topics"][:2]})
    with pytest.raises(UnknownLog, match="malformed"):
        DECODER.decode({**good, "data": good["data"][:66]})
    bad_address = "0x" + "ff" * 32
    with pytest.raises(UnknownLog, match="padding"):
        DECODER.decode({**good, "topics": [good["topics"][0], good["topics"][1], bad_address]})
