"""Duplicate deliveries: the same Celery task delivered twice, the two copies running at once.

What a broker does after a visibility timeout, or two beat processes by mistake: from one
step of the lifecycle to the next, every task the backend runs (the pollers beat sends and
every task they enqueue) runs as two concurrent copies, each in its own thread with its own
database connection, released together by a barrier.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery import current_app
from django.db import connections

from tests.faults.lifecycle import Landed

# What `Desk.pump` calls for beat, and the task beat would send instead.
POLLERS = {
    "watchdog_run": "loans.watchdog",
    "chain_sync": "chainwatch.poll",
    "chain_scan": "bitcoin.scan",
    "facts_deliver": "bitcoin.deliver_facts",
    "evm_transactions_pump": "chainwatch.outbox_pump",
}


@dataclass
class ConcurrentDuplicates:
    step: str
    doubled: Counter[str] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    _patch: pytest.MonkeyPatch | None = None

    def __call__(self, step: str, landed: Landed) -> None:
        if step == self.step:
            self.start()
        elif self._patch is not None:
            self.stop()

    def start(self) -> None:
        patch = pytest.MonkeyPatch()
        originals = {
            name: task.run
            for name, task in current_app.tasks.items()
            if name.split(".")[0] in ("loans", "bitcoin", "chainwatch")
        }
        for name, run in originals.items():
            patch.setattr(current_app.tasks[name], "run", self._twice(name, run))
        for function, task_name in POLLERS.items():
            run = originals[task_name]
            patch.setattr(
                f"tests.support.desk.{function}", self._twice(task_name, _ignore_args(run))
            )
        self._patch = patch

    def stop(self) -> None:
        if self._patch is not None:
            self._patch.undo()
            self._patch = None

    def _twice(self, name: str, run: Callable[..., Any]) -> Callable[..., Any]:
        def both(*args: Any, **kwargs: Any) -> Any:
            barrier = threading.Barrier(2)
            results: list[Any] = [None, None]

            def copy(index: int) -> None:
                try:
                    barrier.wait(timeout=10)
                    results[index] = run(*args, **kwargs)
                except Exception as exc:  # a copy that fails is a failed task, logged
                    self.failed.append(f"{name}: {type(exc).__name__}: {exc}")
                finally:
                    connections.close_all()

            threads = [threading.Thread(target=copy, args=(i,)) for i in (0, 1)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            self.doubled[name] += 1
            return results[0]

        return both


def _ignore_args(run: Callable[[], Any]) -> Callable[..., Any]:
    """The pollers' tasks take no arguments (Desk.pump passes the client it built)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return run()

    return call
