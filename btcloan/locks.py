"""Single-flight locks for pollers: at most one holder across every worker and beat process.

With Redis configured (production, tests) the lock is a Redis lock with a timeout, so a holder
that died frees it by itself. On embedded defaults (one machine, no Redis) it is an exclusive
file lock, which the kernel frees when the holder dies.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import cache

import redis
from django.conf import settings


@cache
def _redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


@contextmanager
def single_flight(name: str, *, timeout: float) -> Iterator[bool]:
    """Hold the lock `name` for at most `timeout` seconds; yields False when someone else has it.

    The caller skips its work when it gets False: the holder is already doing it.
    """
    if settings.REDIS_URL:
        lock = _redis_client(settings.REDIS_URL).lock(
            f"btcloan:lock:{name}", timeout=timeout, blocking=False
        )
        acquired = lock.acquire()
        try:
            yield bool(acquired)
        finally:
            if acquired:
                # Past the timeout the lock expired on its own: nothing to release.
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
