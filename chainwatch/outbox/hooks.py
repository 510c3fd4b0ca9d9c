"""What the outbox asks its consumer before it acts, and tells it after: filled by `loans`
(chainwatch never imports it).

- A **send guard** per action is asked immediately before a row is signed, and again before
  every resend, fee bump, retry and operator retry: it re-reads what the call depends on and
  answers None (go) or the reason not to. A refused row sends nothing; one already signed is
  cancelled by a same-nonce replacement unless it carries a secret (then it is out already).
- A **broadcast hook** hears that the node accepted a row's transaction (the moment a secret
  argument became public: `loans` records P_L's reveal there, not earlier).

An action without a guard is sent as asked and never retried by itself (an operator can).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chainwatch.models import EvmTransaction


class Moment:
    """When a guard is asked (its answer may depend on it: a deadline margin, say)."""

    SIGN = "sign"  # before the first signature (after an approval, an outage, a retry)
    RESEND = "resend"  # before the same bytes go out again (dropped by the node)
    BUMP = "bump"  # before a same-nonce replacement at a higher gas price
    PENDING = "pending"  # while a sent transaction waits in the mempool
    RETRY = "retry"  # before a reverted or lost call is queued again


SendGuard = Callable[["EvmTransaction", str], "str | None"]
BroadcastHook = Callable[["EvmTransaction"], None]

_guards: dict[str, SendGuard] = {}
_broadcast_hooks: list[BroadcastHook] = []


def register_send_guard(action: str, guard: SendGuard) -> None:
    """`guard(row, moment)` returns None when the row's call may go out now, else why not."""
    _guards[action] = guard


def register_broadcast_hook(hook: BroadcastHook) -> None:
    if hook not in _broadcast_hooks:
        _broadcast_hooks.append(hook)


def has_guard(action: str) -> bool:
    return action in _guards


def guard_refusal(tx: EvmTransaction, moment: str) -> str | None:
    """The registered guard's reason to refuse, or None (also when the action has none). A
    guard that cannot read the chains raises chainwatch's NodeUnavailable: try again later."""
    guard = _guards.get(tx.action)
    return None if guard is None else guard(tx, moment)


def broadcast_heard(tx: EvmTransaction) -> None:
    for hook in _broadcast_hooks:
        hook(tx)
