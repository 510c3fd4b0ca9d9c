"""chainwatch: selectors (reads)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import QuerySet

from chainwatch.models import ChainCursor, DeliveryStatus, EvmEvent, EvmTransaction, ReorgNotice


@dataclass(frozen=True)
class IndexerStatus:
    chain_id: int
    indexed_block: int | None
    pending_events: int
    failed_events: int
    pending_reorg_notices: int


def indexer_status(*, chain_id: int) -> IndexerStatus:
    cursor = ChainCursor.objects.filter(chain_id=chain_id).first()
    events = EvmEvent.objects.filter(chain_id=chain_id)
    return IndexerStatus(
        chain_id=chain_id,
        indexed_block=cursor.block_number if cursor else None,
        pending_events=events.filter(status=DeliveryStatus.PENDING).count(),
        failed_events=events.filter(status=DeliveryStatus.FAILED).count(),
        pending_reorg_notices=ReorgNotice.objects.filter(
            chain_id=chain_id, status=DeliveryStatus.PENDING
        ).count(),
    )


def events_of_loan(
    *, chain_id: int, loan_id: int | Decimal, include_orphaned: bool = False
) -> QuerySet[EvmEvent]:
    """A loan's events in chain order (the live ones unless asked otherwise)."""
    events = EvmEvent.objects.filter(chain_id=chain_id, loan_id=loan_id)
    if not include_orphaned:
        events = events.exclude(status=DeliveryStatus.ORPHANED)
    return events.order_by("block_number", "log_index")


def failed_events(*, chain_id: int) -> QuerySet[EvmEvent]:
    return EvmEvent.objects.filter(chain_id=chain_id, status=DeliveryStatus.FAILED).order_by(
        "block_number", "log_index"
    )


def evm_transaction_get(*, tx_id: int) -> EvmTransaction:
    return EvmTransaction.objects.get(pk=tx_id)


def evm_transactions_of_loan(*, chain_id: int, loan_ref: str) -> QuerySet[EvmTransaction]:
    return EvmTransaction.objects.filter(chain_id=chain_id, loan_ref=loan_ref).order_by("id")
