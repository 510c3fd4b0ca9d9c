"""Facts for the consumer (`loans`), handed on in order and exactly once.

The consumer registers one handler at start-up, from its AppConfig.ready():

    from bitcoin.facts import register_fact_handler
    register_fact_handler(on_bitcoin_fact)      # on_bitcoin_fact(fact: BitcoinFact) -> None

or, without code, BITCOIN_FACT_HANDLER = "pkg.module.callable". `facts_deliver` calls the
handler for each undelivered fact in id order, inside the database transaction that marks the
fact delivered: the handler's writes and the delivery commit together or not at all, so each
fact takes effect exactly once. The handler must not talk to a chain (it runs inside atomic());
it enqueues its actions with transaction.on_commit. A handler error (raise = "retry later")
holds back that loan's later facts, keeping their order, and not other loans' facts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.module_loading import import_string

from bitcoin.models import BitcoinFact, FactKind

logger = logging.getLogger(__name__)

FactHandler = Callable[[BitcoinFact], None]
_lock = threading.Lock()
_handler: FactHandler | None = None


def register_fact_handler(handler: FactHandler | None) -> FactHandler | None:
    """Name the consumer of Bitcoin facts (None unregisters: facts then wait, undelivered).
    Returns the one it replaces, so a test can put it back."""
    global _handler
    with _lock:
        previous, _handler = _handler, handler
    return previous


def get_fact_handler() -> FactHandler | None:
    if _handler is not None:
        return _handler
    if settings.BITCOIN_FACT_HANDLER:
        handler: FactHandler = import_string(settings.BITCOIN_FACT_HANDLER)
        return handler
    return None


def fact_record(*, kind: FactKind, loan_ref: str, dedupe_key: str, payload: dict[str, Any]) -> int:
    """Record a fact once (the dedupe key is unique); 1 when it is new, else 0.

    Called inside the scanner's transaction, so a fact exists iff the state it describes does.
    """
    _fact, created = BitcoinFact.objects.get_or_create(
        dedupe_key=dedupe_key,
        defaults={"kind": kind, "loan_ref": loan_ref, "payload": payload},
    )
    return int(created)


def facts_deliver(*, limit: int = 1000) -> dict[str, int]:
    """Hand pending facts to the handler in order; call single-flight (the task does)."""
    handler = get_fact_handler()
    pending = BitcoinFact.objects.filter(delivered_at__isnull=True)
    if handler is None:
        return {"delivered": 0, "failed": 0, "pending": pending.count()}
    delivered = failed = 0
    blocked: set[str] = set()
    for fact_id, loan_ref in pending.order_by("id").values_list("id", "loan_ref")[:limit]:
        if loan_ref in blocked:
            continue
        try:
            with transaction.atomic():
                fact = (
                    BitcoinFact.objects.select_for_update()
                    .filter(pk=fact_id, delivered_at__isnull=True)
                    .first()
                )
                if fact is None:  # delivered by someone else meanwhile
                    continue
                handler(fact)
                BitcoinFact.objects.filter(pk=fact_id).update(delivered_at=timezone.now())
        except Exception as exc:
            blocked.add(loan_ref)
            failed += 1
            BitcoinFact.objects.filter(pk=fact_id).update(
                attempts=F("attempts") + 1, last_error=f"{type(exc).__name__}: {exc}"[:4000]
            )
            logger.exception("bitcoin fact #%s (loan %s): the handler failed", fact_id, loan_ref)
            continue
        delivered += 1
    return {"delivered": delivered, "failed": failed, "pending": pending.count()}
