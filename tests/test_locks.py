"""Single-flight: a second holder is refused while the first holds the lock, on both backends."""

from __future__ import annotations

import uuid

import pytest

from btcloan.locks import single_flight


@pytest.mark.parametrize("backend", ["redis", "file"])
def test_single_flight_admits_one_holder_at_a_time(settings, redis_client, backend: str) -> None:
    if backend == "file":
        settings.REDIS_URL = ""
    name = f"probe-{uuid.uuid4().hex}"
    with single_flight(name, timeout=30) as first:
        assert first is True
        with single_flight(name, timeout=30) as second:
            assert second is False
    with single_flight(name, timeout=30) as again:
        assert again is True


def test_an_expired_redis_lock_is_free_again(redis_client) -> None:
    name = f"probe-{uuid.uuid4().hex}"
    with single_flight(name, timeout=30) as first:
        assert first is True
        redis_client.delete(f"btcloan:lock:{name}")  # what the timeout does to a dead holder
        with single_flight(name, timeout=30) as second:
            assert second is True
