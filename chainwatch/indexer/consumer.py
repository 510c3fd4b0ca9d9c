"""Who receives the events: one consumer, registered by `loans` (chainwatch never imports it).

`loans/apps.py`:

    def ready(self):
        from chainwatch.services import register_event_consumer
        from loans.handlers import LoanEventConsumer
        register_event_consumer(LoanEventConsumer())

`CHAINWATCH_CONSUMER=pkg.module.attr`, when set, names another such object instead. The consumer's
methods run inside chainwatch's database transaction, which also marks the event processed:
the consumer's writes and the status change commit together or not at all. They must not call
a chain (enqueue follow-ups with `transaction.on_commit`); raising means "retry later".
"""

from __future__ import annotations

import threading
from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string

from chainwatch.events import ChainEvent
from chainwatch.models import ReorgNotice


class EventConsumer(Protocol):
    def handle_event(self, event: ChainEvent) -> None:
        """Apply one confirmed event; events of a key arrive in chain order, once."""

    def handle_reorg(self, notice: ReorgNotice) -> None:
        """Events of `notice.delivery_key` (loan `notice.loan_id` of the contract at
        `notice.contract_address`) that were processed were orphaned past
        `notice.fork_block_number`: re-derive that loan from surviving events (the orphaned
        ones are in EvmEvent with status orphaned). Arrives before the key's events of the new
        branch."""


_lock = threading.Lock()
_registered: EventConsumer | None = None


def register_event_consumer(consumer: EventConsumer | None) -> EventConsumer | None:
    """Register the consumer (None unregisters); returns the one it replaces (tests put it
    back)."""
    global _registered
    with _lock:
        previous, _registered = _registered, consumer
    return previous


def get_event_consumer() -> EventConsumer | None:
    """The one CHAINWATCH_CONSUMER names when set (an operator's or a test's override), else the
    registered one, else None (events then wait, pending, until there is one)."""
    if settings.CHAINWATCH_CONSUMER:
        consumer: EventConsumer = import_string(settings.CHAINWATCH_CONSUMER)
        return consumer
    return _registered
