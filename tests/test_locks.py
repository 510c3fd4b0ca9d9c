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


def test_a_long_job_keeps_its_lock_beyond_one_lease(settings, redis_client) -> None:
    import time

    settings.SINGLE_FLIGHT_LEASE_SECONDS = 0.6
    name = f"probe-{uuid.uuid4().hex}"
    with single_flight(name, timeout=30) as first:
        assert first is True
        time.sleep(1.5)  # more than two leases: only renewal keeps it
        with single_flight(name, timeout=30) as second:
            assert second is False
    with single_flight(name, timeout=30) as again:
        assert again is True


def test_a_holder_killed_with_sigkill_frees_the_lock_within_a_lease(settings, redis_client) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    name = f"probe-{uuid.uuid4().hex}"
    holder = (
        "import django, sys, time; django.setup()\n"
        "from btcloan.locks import single_flight\n"
        f"with single_flight({name!r}, timeout=600) as held:\n"
        "    print('held' if held else 'busy', flush=True)\n"
        "    time.sleep(600)\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "btcloan.settings",
        "REDIS_URL": settings.REDIS_URL,
        "SINGLE_FLIGHT_LEASE_SECONDS": "1",
        "BTCLOAN_VAR_DIR": str(settings.VAR_DIR),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", holder],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "held"
        time.sleep(2.5)  # the holder renews: still taken well past its one-second lease
        with single_flight(name, timeout=30) as while_alive:
            assert while_alive is False
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        time.sleep(1.5)  # one lease, and no one renews it any more
        with single_flight(name, timeout=30) as after_death:
            assert after_death is True
    finally:
        process.kill()
        process.wait()
