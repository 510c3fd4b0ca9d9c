"""What the broadcaster asks its consumer before a lender transaction goes to the node: filled
by `loans` (bitcoin never imports it).

The broadcast guard is asked before every broadcast and rebroadcast of a transaction the lender
signed (TX_1, the sweep): it re-reads what the transaction depends on and answers None (go) or
the reason not to. A refused transaction is not sent and stays signed; it is asked again at the
next attempt. A guard that cannot read a chain raises NodeUnavailable: try again later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bitcoin.models import BitcoinTransaction

BroadcastGuard = Callable[["BitcoinTransaction"], "str | None"]

_guards: list[BroadcastGuard] = []


def register_broadcast_guard(guard: BroadcastGuard) -> None:
    if guard not in _guards:
        _guards.append(guard)


def broadcast_refusal(row: BitcoinTransaction) -> str | None:
    """The first registered guard's reason to refuse, or None."""
    for guard in _guards:
        reason = guard(row)
        if reason is not None:
            return reason
    return None
