"""The hand-offs as the code wires them, for docs/architecture.md's picture to be checked on.

Which handler of `loans.handlers` reads each Bitcoin fact and each contract event (the dispatch
tables), which next steps (`loans.next_steps.NextStep`) a handler can enqueue, which task each
step runs, and which steps that task can enqueue in turn. "Can enqueue" is read from the source:
every `NextStep.<member>` named in the function or in any `loans` function it calls (through a
name or a module attribute), `loans.next_steps` itself left out (it names them all).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
import types
from collections.abc import Callable
from typing import Any

from loans import handlers, next_steps
from loans.next_steps import NextStep


def _callee(node: ast.Call, env: dict[str, Any]) -> Any:
    func = node.func
    if isinstance(func, ast.Name):
        return env.get(func.id)
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        owner = env.get(func.value.id)
        if isinstance(owner, types.ModuleType):
            return getattr(owner, func.attr, None)
    return None


def _ours(fn: Any) -> bool:
    return (
        inspect.isfunction(fn)
        and fn.__module__.startswith("loans")
        and fn.__module__ != next_steps.__name__
    )


def steps_enqueued(fn: Callable[..., Any], seen: set[Any] | None = None) -> set[NextStep]:
    """The next steps `fn` can enqueue, itself or through the `loans` functions it calls."""
    seen = set() if seen is None else seen
    fn = inspect.unwrap(fn)  # a decorated function's globals are its decorator's
    if fn in seen or not _ours(fn):
        return set()
    seen.add(fn)
    found: set[NextStep] = set()
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn)))):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "NextStep"
        ):
            found.add(NextStep[node.attr])
        elif isinstance(node, ast.Call):
            found |= steps_enqueued(_callee(node, fn.__globals__), seen)
    return found


def fact_readers() -> dict[str, str]:
    """Fact kind (value) -> the handler's name."""
    return {str(kind): fn.__name__ for kind, fn in handlers.FACT_HANDLERS.items()}


def event_readers() -> dict[str, str]:
    """Contract event name -> the handler's name (requests and loan events alike)."""
    tables: list[dict[Any, Any]] = [handlers.REQUEST_HANDLERS, handlers.LOAN_EVENT_HANDLERS]
    return {name: fn.__name__ for table in tables for (_, name), fn in table.items()}


def handler_steps() -> dict[str, set[NextStep]]:
    """Handler name -> the next steps it can enqueue."""
    tables: list[dict[Any, Any]] = [
        handlers.REQUEST_HANDLERS,
        handlers.LOAN_EVENT_HANDLERS,
        handlers.FACT_HANDLERS,
    ]
    return {fn.__name__: steps_enqueued(fn) for table in tables for fn in table.values()}


def step_tasks() -> dict[NextStep, Any]:
    """NextStep -> the Celery task `next_step_enqueue` sends for it (read from its source)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(next_steps.next_step_enqueue)))
    local: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                # `from loans import tasks` names a module; `from x.tasks import t` a task.
                try:
                    imported = importlib.import_module(f"{node.module}.{alias.name}")
                except ModuleNotFoundError:
                    imported = getattr(importlib.import_module(node.module), alias.name)
                local[alias.asname or alias.name] = imported
    (table,) = [n for n in ast.walk(tree) if isinstance(n, ast.Dict)]
    out: dict[NextStep, Any] = {}
    for key, value in zip(table.keys, table.values, strict=True):
        assert isinstance(key, ast.Attribute)
        task = _callee(ast.Call(func=value, args=[], keywords=[]), local)
        out[NextStep[key.attr]] = task
    return out


def task_steps() -> dict[NextStep, set[NextStep]]:
    """NextStep -> the next steps its task can enqueue (a loans task's body and callees)."""
    return {step: steps_enqueued(task.run) for step, task in step_tasks().items()}
