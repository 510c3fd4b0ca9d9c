"""Single-flight locks for pollers: at most one holder across every worker and beat process.

With Redis configured (production, tests) the lock is a Redis key with a short lease that a
thread of the holder renews while it works, so a holder killed with -9 frees it within one
lease, not after the whole timeout; a holder that hangs loses it after `timeout`. On embedded
defaults (one machine, no Redis) it is an exclusive file lock, which the kernel frees when the
holder dies.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import cache

import redis
from django.conf import settings
from redis.lock import Lock


@cache
def _redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def _renew(lock: Lock, lease: float, timeout: float, stop: threading.Event) -> None:
    """Keep the lease alive while the holder works, for at most `timeout` seconds in all."""
    renewals = max(int(timeout // (lease / 3)), 0)
    for _ in range(renewals):
        if stop.wait(lease / 3):
            return
        try:
            lock.extend(lease, replace_ttl=True)
        except redis.exceptions.LockError:
            return  # lost (expired): the holder's work is no longer protected
        except redis.exceptions.ConnectionError:
            continue  # Redis blinked: try again at the next beat of the lease


@contextmanager
def single_flight(name: str, *, timeout: float) -> Iterator[bool]:
    """Hold the lock `name` while the block runs (for at most `timeout` seconds); yields False
    when someone else has it. The caller skips its work when it gets False: the holder is
    already doing it."""
    if settings.REDIS_URL:
        lease = min(float(timeout), float(settings.SINGLE_FLIGHT_LEASE_SECONDS))
        # Not thread-local: the renewing thread must present the holder's token.
        lock = _redis_client(settings.REDIS_URL).lock(
            f"btcloan:lock:{name}", timeout=lease, blocking=False, thread_local=False
        )
        acquired = bool(lock.acquire())
        stop = threading.Event()
        renewer = None
        if acquired:
            renewer = threading.Thread(
                target=_renew, args=(lock, lease, float(timeout), stop), daemon=True
            )
            renewer.start()
        try:
            yield acquired
        finally:
            if renewer is not None:
                stop.set()
                renewer.join()
                # Past its lease the lock expired on its own: nothing to release.
                with suppress(redis.exceptions.LockNotOwnedError):
                    lock.release()
        return
    path = settings.VAR_DIR / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
