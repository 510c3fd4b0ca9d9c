"""Handing stored events to the consumer: in chain order per key, each event's effects
committed together with its status change (so a crash anywhere repeats nothing and loses
nothing), failures retried with backoff and parked after CHAINWATCH_MAX_ATTEMPTS without
holding up other keys.

Events are committed in chunks of CHAINWATCH_DELIVERY_COMMIT_EVERY (one WAL flush per chunk
instead of per event)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from btcloan.alerts.services import alert_raise, alert_resolve
from btcloan.models import AlertSeverity
from chainwatch.events import COLUMNS, ChainEvent
from chainwatch.indexer.consumer import EventConsumer, get_event_consumer
from chainwatch.models import DeliveryStatus, EvmEvent, ReorgNotice

logger = logging.getLogger(__name__)

BATCH = 500


class _AlreadyDelivered(Exception):
    """The compare-and-set found the row no longer pending: undo the consumer's work."""


@dataclass(frozen=True)
class _Pending:
    """A pending event as the hand-off reads it: what the consumer gets and what a failure
    counts (no model instance: a catch-up hands on tens of thousands)."""

    event: ChainEvent
    attempts: int
    next_attempt_at: datetime | None

    @property
    def pk(self) -> int:
        return self.event.id

    @property
    def delivery_key(self) -> str:
        return self.event.delivery_key

    @property
    def loan_id(self) -> int | None:
        return self.event.loan_id

    def __str__(self) -> str:
        event = self.event
        return f"{event.event_name} {event.transaction_hash}:{event.log_index} (pending)"


def _pending_events(chain_id: int, after: tuple[int, int] | None) -> list[_Pending]:
    """The next BATCH pending events in (block, log index) order, past `after`."""
    pending = EvmEvent.objects.filter(chain_id=chain_id, status=DeliveryStatus.PENDING)
    if after is not None:
        pending = pending.filter(
            Q(block_number__gt=after[0]) | Q(block_number=after[0], log_index__gt=after[1])
        )
    rows = pending.order_by("block_number", "log_index").values_list(
        *COLUMNS, "attempts", "next_attempt_at"
    )[:BATCH]
    return [_Pending(ChainEvent.from_columns(row[:-2]), row[-2], row[-1]) for row in rows]


@dataclass
class DeliverySummary:
    delivered: int = 0
    notices: int = 0
    retrying: int = 0
    parked: int = 0
    blocked_keys: int = 0
    consumer: bool = True


def backoff(attempts: int) -> timedelta:
    seconds = settings.CHAINWATCH_RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1)
    return timedelta(seconds=min(seconds, settings.CHAINWATCH_RETRY_MAX_SECONDS))


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:4000]


def _record_failure(
    model: type[EvmEvent] | type[ReorgNotice], row: _Pending | ReorgNotice, exc: Exception
) -> bool:
    """Count a failed attempt; park the row as failed after the last one. True when parked."""
    attempts = row.attempts + 1
    parked = attempts >= settings.CHAINWATCH_MAX_ATTEMPTS
    update = {
        "attempts": attempts,
        "last_error": _error_text(exc),
        "next_attempt_at": None if parked else timezone.now() + backoff(attempts),
        "status": DeliveryStatus.FAILED if parked else DeliveryStatus.PENDING,
    }
    model.objects.filter(pk=row.pk, status=DeliveryStatus.PENDING, attempts=row.attempts).update(
        **update
    )
    if parked:
        logger.error(
            "ALERT chainwatch: %s %s (key %s) parked as failed after %s attempts: %s",
            model.__name__,
            row.pk,
            row.delivery_key,
            attempts,
            update["last_error"],
        )
        alert_raise(
            key=f"chainwatch:parked:{model.__name__}:{row.pk}",
            severity=AlertSeverity.CRITICAL,
            title=f"{row} parked after {attempts} failed deliveries; {row.delivery_key} waits",
            details={"error": update["last_error"], "delivery_key": row.delivery_key},
            loan_ref=None if row.loan_id is None else int(row.loan_id),
        )
    else:
        logger.warning(
            "chainwatch: %s %s (key %s) failed, attempt %s, retry after %s: %s",
            model.__name__,
            row.pk,
            row.delivery_key,
            attempts,
            update["next_attempt_at"],
            update["last_error"],
        )
    return parked


def _due(row: _Pending | ReorgNotice, now: object) -> bool:
    return row.next_attempt_at is None or row.next_attempt_at <= now  # type: ignore[operator]


def _deliver_notices(
    consumer: EventConsumer, chain_id: int, blocked: set[str], summary: DeliverySummary
) -> None:
    now = timezone.now()
    for notice in ReorgNotice.objects.filter(
        chain_id=chain_id, status=DeliveryStatus.PENDING
    ).order_by("id"):
        if notice.delivery_key in blocked or not _due(notice, now):
            blocked.add(notice.delivery_key)
            continue
        try:
            with transaction.atomic():
                consumer.handle_reorg(notice)
                done = ReorgNotice.objects.filter(
                    pk=notice.pk, status=DeliveryStatus.PENDING
                ).update(status=DeliveryStatus.PROCESSED, processed_at=timezone.now())
                if done != 1:
                    raise _AlreadyDelivered
        except _AlreadyDelivered:
            continue
        except Exception as exc:
            summary.parked += _record_failure(ReorgNotice, notice, exc)
            blocked.add(notice.delivery_key)
            continue
        summary.notices += 1


def deliver_events(*, chain_id: int, max_seconds: float | None = None) -> DeliverySummary:
    """Hand pending events to the consumer until none is due or the time budget is spent.

    Single-flight is the caller's (the poller's lock), so one process walks the events in
    (block, log index) order; the compare-and-set makes a second one harmless anyway."""
    summary = DeliverySummary()
    consumer = get_event_consumer()
    if consumer is None:
        summary.consumer = False
        return summary
    deadline = time.monotonic() + (max_seconds or settings.CHAINWATCH_PASS_SECONDS)
    # A parked row holds up the later events of its key until an operator retries it.
    blocked: set[str] = set(
        EvmEvent.objects.filter(chain_id=chain_id, status=DeliveryStatus.FAILED)
        .values_list("delivery_key", flat=True)
        .distinct()
    ) | set(
        ReorgNotice.objects.filter(chain_id=chain_id, status=DeliveryStatus.FAILED)
        .values_list("delivery_key", flat=True)
        .distinct()
    )
    _deliver_notices(consumer, chain_id, blocked, summary)
    position: tuple[int, int] | None = None
    while time.monotonic() < deadline:
        batch = _pending_events(chain_id, position)
        if not batch:
            break
        for start in range(0, len(batch), settings.CHAINWATCH_DELIVERY_COMMIT_EVERY):
            if time.monotonic() >= deadline:
                break
            chunk = batch[start : start + settings.CHAINWATCH_DELIVERY_COMMIT_EVERY]
            position = chunk[-1].event.position
            _deliver_chunk(consumer, chunk, blocked, summary)
    summary.blocked_keys = len(blocked)
    return summary


def _deliver_chunk(
    consumer: EventConsumer, chunk: list[_Pending], blocked: set[str], summary: DeliverySummary
) -> None:
    """One commit for the chunk. First all at once (one status update for the chunk); when an
    event fails, the chunk is rolled back and redone with a savepoint per event, so the failing
    event undoes only its own work. A crash undoes the uncommitted chunk, delivered again later.
    """
    try:
        with transaction.atomic():
            delivered = []
            now = timezone.now()
            for event in chunk:
                if event.delivery_key in blocked or not _due(event, now):
                    blocked.add(event.delivery_key)
                    continue
                consumer.handle_event(event.event)
                delivered.append(event.pk)
            done = EvmEvent.objects.filter(pk__in=delivered, status=DeliveryStatus.PENDING).update(
                status=DeliveryStatus.PROCESSED,
                processed_at=timezone.now(),
                attempts=F("attempts") + 1,
                last_error="",
                next_attempt_at=None,
            )
            if done != len(delivered):
                raise _AlreadyDelivered  # someone else delivered some: sort it out one by one
        summary.delivered += done
        return
    except Exception:  # noqa: S110 - redone below, where each failure is recorded
        pass
    with transaction.atomic():
        for event in chunk:
            _deliver_one(consumer, event, blocked, summary)


def _deliver_one(
    consumer: EventConsumer, event: _Pending, blocked: set[str], summary: DeliverySummary
) -> None:
    if event.delivery_key in blocked or not _due(event, timezone.now()):
        blocked.add(event.delivery_key)
        return
    try:
        with transaction.atomic():
            consumer.handle_event(event.event)
            done = EvmEvent.objects.filter(pk=event.pk, status=DeliveryStatus.PENDING).update(
                status=DeliveryStatus.PROCESSED,
                processed_at=timezone.now(),
                attempts=F("attempts") + 1,
                last_error="",
                next_attempt_at=None,
            )
            if done != 1:
                raise _AlreadyDelivered
    except _AlreadyDelivered:
        return
    except Exception as exc:
        if _record_failure(EvmEvent, event, exc):
            summary.parked += 1
        else:
            summary.retrying += 1
        blocked.add(event.delivery_key)
        return
    summary.delivered += 1


def event_retry(*, event_id: int) -> bool:
    """An operator's retry of a parked event: pending again, attempts from zero."""
    retried = EvmEvent.objects.filter(pk=event_id, status=DeliveryStatus.FAILED).update(
        status=DeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at=None,
        updated_at=timezone.now(),
    )
    if retried:
        alert_resolve(key=f"chainwatch:parked:EvmEvent:{event_id}")
    return bool(retried)


def reorg_notice_retry(*, notice_id: int) -> bool:
    retried = ReorgNotice.objects.filter(pk=notice_id, status=DeliveryStatus.FAILED).update(
        status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=None
    )
    if retried:
        alert_resolve(key=f"chainwatch:parked:ReorgNotice:{notice_id}")
    return bool(retried)
