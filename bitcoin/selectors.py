"""bitcoin: reads."""

from __future__ import annotations

import operator
from functools import reduce

from django.conf import settings
from django.db.models import Exists, OuterRef, Q, QuerySet

from bitcoin.fees import FEE_ESTIMATE_ALERT
from bitcoin.models import (
    BitcoinFact,
    BitcoinTransaction,
    ObservationStatus,
    ObservedPayment,
    ObservedSpend,
    ScanCursor,
    TxPurpose,
    TxStatus,
    WatchedOutpoint,
)
from bitcoin.rpc import UNTIL_A_BLOCK_REJECT_REASONS
from btcloan.models import Alert


def open_transactions() -> QuerySet[BitcoinTransaction]:
    """Sent but not yet seen in a block: what the monitor asks the node about."""
    return BitcoinTransaction.objects.filter(
        status__in=(TxStatus.BROADCAST, TxStatus.IN_MEMPOOL)
    ).order_by("id")


def unspent_watched_outpoints() -> QuerySet[WatchedOutpoint]:
    """Active watched outpoints with no spend observed (mempool or chain)."""
    spent = ObservedSpend.objects.filter(watched=OuterRef("pk")).exclude(
        status=ObservationStatus.DROPPED
    )
    return WatchedOutpoint.objects.filter(active=True).exclude(Exists(spent)).order_by("id")


def waiting_for_a_block() -> Q:
    """Our transactions the node last refused for a reason only a new block can lift."""
    markers = UNTIL_A_BLOCK_REJECT_REASONS
    return reduce(operator.or_, (Q(last_error__contains=marker) for marker in markers))


def bump_candidates(*, tip_moved: bool = True) -> QuerySet[BitcoinTransaction]:
    """TX_1s and sweeps not yet confirmed (nor replaced by a newer version of ours): the
    bumper weighs each against the deadline and the node's estimate. With no new block since
    the last look, the estimate and the deadline stand still: only what is out of the mempool
    for another reason (a fee refusal, a rival spend) is weighed again."""
    newer = BitcoinTransaction.objects.filter(replaces=OuterRef("pk")).exclude(
        status__in=(TxStatus.FAILED, TxStatus.REPLACED)
    )
    candidates = (
        BitcoinTransaction.objects.filter(
            purpose__in=(TxPurpose.COLLATERAL_LOCK, TxPurpose.LENDER_SWEEP),
            status__in=(TxStatus.SIGNED, TxStatus.BROADCAST, TxStatus.IN_MEMPOOL),
        )
        .exclude(Exists(newer))
        .order_by("id")
    )
    if not tip_moved:
        candidates = candidates.exclude(status=TxStatus.IN_MEMPOOL).exclude(waiting_for_a_block())
    return candidates


def transactions_for_loan(*, loan_ref: str) -> QuerySet[BitcoinTransaction]:
    return BitcoinTransaction.objects.filter(loan_ref=loan_ref).order_by("id")


def payments_for_loan(*, loan_ref: str) -> QuerySet[ObservedPayment]:
    return ObservedPayment.objects.filter(watched__loan_ref=loan_ref).order_by("id")


def spends_for_loan(*, loan_ref: str) -> QuerySet[ObservedSpend]:
    return ObservedSpend.objects.filter(watched__loan_ref=loan_ref).order_by("id")


def facts_for_loan(*, loan_ref: str) -> QuerySet[BitcoinFact]:
    return BitcoinFact.objects.filter(loan_ref=loan_ref).order_by("id")


def scan_cursor() -> ScanCursor | None:
    return ScanCursor.objects.filter(network=settings.BITCOIN_NETWORK).first()


def fee_estimate_blocks_offers() -> bool:
    """True on mainnet while the node gives no fee estimate (the alert is open): without a
    fee we cannot promise TX_1 confirms in time, so no new offer is made."""
    if settings.BITCOIN_NETWORK != "mainnet":
        return False
    return Alert.objects.filter(key=FEE_ESTIMATE_ALERT, resolved_at__isnull=True).exists()
