"""Our transactions: registration, the one status transition service, and broadcasting."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from bitcoin.facts import TxPayload, fact_record
from bitcoin.hooks import broadcast_refusal
from bitcoin.models import (
    BitcoinTransaction,
    FactKind,
    MonitoringStatus,
    TransactionMonitoring,
    TransactionTransition,
    TxPurpose,
    TxStatus,
)
from bitcoin.rpc import BitcoinRPC, NodeUnavailable, NotFound, TransactionRejected, get_client
from vaultero import Transaction, TransactionDecodeError

logger = logging.getLogger(__name__)

S = TxStatus
# The lifecycle: every allowed move, and nothing else.
TRANSITIONS: dict[str, frozenset[str]] = {
    S.BUILT: frozenset({S.SIGNED, S.FAILED}),
    S.SIGNED: frozenset({S.BROADCAST, S.IN_MEMPOOL, S.CONFIRMED, S.REPLACED, S.FAILED}),
    # broadcast = sent (or to be re-sent), not yet seen in the mempool
    S.BROADCAST: frozenset({S.IN_MEMPOOL, S.CONFIRMED, S.REPLACED, S.FAILED}),
    S.IN_MEMPOOL: frozenset({S.CONFIRMED, S.BROADCAST, S.REPLACED, S.FAILED}),
    S.CONFIRMED: frozenset({S.IN_MEMPOOL, S.BROADCAST}),  # a reorg un-confirms
    S.REPLACED: frozenset({S.CONFIRMED}),
    S.FAILED: frozenset({S.SIGNED, S.CONFIRMED}),  # operator retry; mined by someone else
}


class TransactionError(ValueError):
    """A transaction that cannot be registered (bad hex, a txid already used differently)."""


def _sources_for(to: str) -> list[str]:
    return [source for source, targets in TRANSITIONS.items() if to in targets]


def transaction_transition(
    *,
    tx_id: int,
    to: TxStatus,
    cause: str,
    from_statuses: tuple[str, ...] | None = None,
    **fields: Any,
) -> bool:
    """Compare-and-set the status (only from a status the table allows, optionally narrowed),
    write the audit row in the same transaction; False when the row was not in such a state."""
    sources = _sources_for(to)
    if from_statuses is not None:
        sources = [s for s in sources if s in from_statuses]
    with transaction.atomic():
        current = (
            BitcoinTransaction.objects.filter(pk=tx_id, status__in=sources)
            .values_list("status", flat=True)
            .first()
        )
        if current is None:
            return False
        updated = BitcoinTransaction.objects.filter(pk=tx_id, status=current).update(
            status=to, updated_at=timezone.now(), **fields
        )
        if not updated:
            return False
        TransactionTransition.objects.create(
            transaction_id=tx_id, from_status=current, to_status=to, cause=cause[:200]
        )
        return True


def transaction_register(
    *,
    raw_hex: str,
    purpose: TxPurpose,
    loan_ref: str = "",
    status: TxStatus = TxStatus.SIGNED,
    fee_sats: int | None = None,
    parent: BitcoinTransaction | None = None,
    target_confirmations: int | None = None,
    replaces: BitcoinTransaction | None = None,
    deadline_height: int | None = None,
) -> BitcoinTransaction:
    """Put a transaction in the outbox. Idempotent: the same transaction registered twice is
    one row (the txid is unique); a different transaction under a known txid is refused."""
    try:
        tx = Transaction.from_hex(raw_hex)
    except TransactionDecodeError as exc:
        raise TransactionError(f"not a transaction: {exc}") from None
    raw_hex = raw_hex.lower()
    with transaction.atomic():
        row, created = BitcoinTransaction.objects.get_or_create(
            txid=tx.txid,
            defaults={
                "raw_hex": raw_hex,
                "purpose": purpose,
                "loan_ref": loan_ref,
                "status": status,
                "fee_sats": fee_sats,
                "vsize": tx.vsize,
                "parent": parent,
                "replaces": replaces,
                "deadline_height": deadline_height,
            },
        )
        if created:
            TransactionMonitoring.objects.create(
                transaction=row,
                target_confirmations=target_confirmations or settings.BITCOIN_CONFIRMATIONS,
            )
            TransactionTransition.objects.create(
                transaction=row, from_status="", to_status=status, cause="registered"
            )
        elif row.loan_ref != loan_ref or row.purpose != purpose:
            raise TransactionError(
                f"transaction {row.txid} is already registered as {row.purpose} "
                f"for loan {row.loan_ref!r}"
            )
        elif row.raw_hex != raw_hex:
            if not (status == TxStatus.SIGNED and row.status == S.BUILT):
                raise TransactionError(
                    f"transaction {row.txid} is already registered with another witness"
                )
            # the signed version of a transaction registered unsigned
            BitcoinTransaction.objects.filter(pk=row.pk).update(raw_hex=raw_hex, vsize=tx.vsize)
            transaction_transition(tx_id=row.pk, to=S.SIGNED, cause="signed")
            row.refresh_from_db()
    return row


@dataclass(frozen=True)
class BroadcastResult:
    txid: str
    # accepted | already_known | deferred | fee_too_low | rejected | conflict | skipped | refused
    outcome: str
    reason: str = ""


BROADCASTABLE = (S.SIGNED, S.BROADCAST)


def transaction_broadcast(*, tx_id: int, rpc: BitcoinRPC | None = None) -> BroadcastResult:
    """Send a transaction to the node. An already-known transaction is success; a node that
    is down raises NodeUnavailable (the task retries with backoff); a refusal is recorded with
    its reason (a timelock refusal keeps it ready for a later attempt, a fee refusal waits for
    the bumper, any other fails it for good and tells `loans`). A CPFP child goes with its
    unconfirmed parent as a package (`submitpackage`), so a parent the node refuses alone
    (below the mempool floor, as a replacement) gets in with it."""
    row = BitcoinTransaction.objects.get(pk=tx_id)
    if row.status not in BROADCASTABLE:
        return BroadcastResult(row.txid, "skipped", f"status {row.status}")
    parent = row.parent if row.parent_id is not None else None
    # the lender's guard, at the moment of sending (a CPFP child sends its TX_1 too)
    refusal = broadcast_refusal(row) or (broadcast_refusal(parent) if parent else None)
    if refusal is not None:
        BitcoinTransaction.objects.filter(pk=tx_id).update(last_error=f"refused: {refusal}"[:2000])
        return BroadcastResult(row.txid, "refused", refusal)
    now = timezone.now()
    BitcoinTransaction.objects.filter(pk=tx_id).update(
        attempts=F("attempts") + 1,
        last_broadcast_at=now,
        first_broadcast_at=Coalesce(F("first_broadcast_at"), now),
    )
    rpc = rpc or get_client()
    try:
        if parent is not None and parent.status != S.CONFIRMED:
            _send_package(row, parent, rpc)
        else:
            rpc.send_raw_transaction(row.raw_hex)
    except NodeUnavailable as exc:
        BitcoinTransaction.objects.filter(pk=tx_id).update(last_error=str(exc)[:2000])
        raise
    except TransactionRejected as exc:
        return _handle_rejection(row, exc, rpc)
    transaction_transition(
        tx_id=tx_id,
        to=S.IN_MEMPOOL,
        cause="broadcast accepted" if parent is None else "package accepted",
        from_statuses=BROADCASTABLE,
        last_error="",
    )
    if row.replaces_id is not None:
        _replaced_by_own(row.replaces_id, row.txid)
    return BroadcastResult(row.txid, "accepted")


def _replaced_by_own(tx_id: int, by_txid: str) -> None:
    """Our own earlier version (a re-bumped child, a re-signed sweep) is replaced: no fact,
    nothing for `loans` to worry about."""
    if transaction_transition(
        tx_id=tx_id,
        to=S.REPLACED,
        cause=f"replaced by our own bump {by_txid}",
        from_statuses=(S.SIGNED, S.BROADCAST, S.IN_MEMPOOL),
    ):
        TransactionMonitoring.objects.filter(transaction_id=tx_id).update(
            status=MonitoringStatus.COMPLETED
        )


def _send_package(row: BitcoinTransaction, parent: BitcoinTransaction, rpc: BitcoinRPC) -> None:
    """submitpackage [parent, child]; records the parent's outcome, raises the child's
    refusal as TransactionRejected."""
    answer = rpc.submit_package([parent.raw_hex, row.raw_hex])
    results = {item.get("txid"): item for item in answer.get("tx-results", {}).values()}
    parent_result, child_result = results.get(parent.txid), results.get(row.txid)
    if parent_result is not None and "error" not in parent_result:
        transaction_transition(
            tx_id=parent.pk, to=S.IN_MEMPOOL, cause="accepted in a package with its child",
            from_statuses=BROADCASTABLE, last_error="",
        )  # fmt: skip
    elif parent_result is not None and parent.status in BROADCASTABLE:
        refused = TransactionRejected("submitpackage", -26, str(parent_result["error"]))
        if not (refused.fee_too_low or refused.temporary):
            _handle_rejection(parent, refused, rpc)  # e.g. its input is spent for good
    error = (child_result or {}).get("error") or (
        None if answer.get("package_msg") == "success" else answer.get("package_msg")
    )
    if error:
        raise TransactionRejected("submitpackage", -26, str(error))


def _missing_inputs(exc: TransactionRejected) -> bool:
    return "missingorspent" in exc.reason or "missing-inputs" in exc.reason


def _orphan_child(row: BitcoinTransaction, exc: TransactionRejected) -> bool:
    """A CPFP child whose parent was replaced or failed for good: failed too, quietly (its
    wallet coins go back to the wallet; the parent's own fact told `loans`)."""
    if (
        row.parent_id is None
        or not BitcoinTransaction.objects.filter(
            pk=row.parent_id, status__in=(S.REPLACED, S.FAILED)
        ).exists()
    ):
        return False
    if transaction_transition(
        tx_id=row.pk, to=S.FAILED, cause=f"parent gone: {exc.reason}"[:200],
        from_statuses=BROADCASTABLE, last_error=exc.reason[:2000],
    ):  # fmt: skip
        TransactionMonitoring.objects.filter(transaction_id=row.pk).update(
            status=MonitoringStatus.FAILED
        )
    return True


def _handle_rejection(
    row: BitcoinTransaction, exc: TransactionRejected, rpc: BitcoinRPC
) -> BroadcastResult:
    if _orphan_child(row, exc):
        return BroadcastResult(row.txid, "rejected", exc.reason)
    if exc.already_known or _missing_inputs(exc):
        # Maybe it is this very transaction that spent the inputs: ask the node.
        try:
            known = rpc.raw_transaction(row.txid)
        except NotFound:
            known = None
        if known is not None:
            if not known.get("confirmations"):
                transaction_transition(
                    tx_id=row.pk, to=S.IN_MEMPOOL, cause="already known to the node",
                    from_statuses=BROADCASTABLE, last_error="",
                )  # fmt: skip
            else:  # the scanner records the block; until then it is "sent"
                transaction_transition(
                    tx_id=row.pk, to=S.BROADCAST, cause="already in the chain",
                    from_statuses=(S.SIGNED,), last_error="",
                )  # fmt: skip
            return BroadcastResult(row.txid, "already_known", exc.reason)
    if _missing_inputs(exc):
        # Parents the node does not know yet (e.g. a child sent before its parent): wait.
        # Parents it knows whose outputs are gone: another transaction spent them.
        parents = {txin.prev_txid for txin in Transaction.from_hex(row.raw_hex).inputs}
        answers = rpc.batch([("getrawtransaction", [txid, True]) for txid in sorted(parents)])
        if any(isinstance(answer, NotFound) for answer in answers):
            BitcoinTransaction.objects.filter(pk=row.pk).update(last_error=exc.reason[:2000])
            return BroadcastResult(row.txid, "deferred", f"{exc.reason}: parent not known yet")
        _give_up(row, S.REPLACED, FactKind.TX_REPLACED, f"inputs spent elsewhere ({exc.reason})")
        return BroadcastResult(row.txid, "conflict", exc.reason)
    if exc.temporary or exc.fee_too_low:
        # Not "never": a timelock or maturity passes by itself; a fee refusal is answered by
        # a package or a replacement (the bumper), never by resending the same bytes.
        BitcoinTransaction.objects.filter(pk=row.pk).update(last_error=exc.reason[:2000])
        logger.info("bitcoin tx %s not accepted yet: %s", row.txid, exc.reason)
        outcome = "fee_too_low" if exc.fee_too_low else "deferred"
        return BroadcastResult(row.txid, outcome, exc.reason)
    _give_up(row, S.FAILED, FactKind.TX_FAILED, exc.reason)
    return BroadcastResult(row.txid, "rejected", exc.reason)


def _give_up(row: BitcoinTransaction, to: TxStatus, kind: FactKind, reason: str) -> None:
    """Failed for good (or double-spent): stop monitoring, tell `loans`."""
    with transaction.atomic():
        moved = transaction_transition(
            tx_id=row.pk, to=to, cause=f"refused: {reason}"[:200],
            from_statuses=BROADCASTABLE, last_error=reason[:2000],
        )  # fmt: skip
        if moved:
            TransactionMonitoring.objects.filter(transaction_id=row.pk).update(
                status=MonitoringStatus.FAILED
            )
            fact_record(
                kind=kind,
                loan_ref=row.loan_ref,
                dedupe_key=f"tx:{row.pk}:{to}:{row.attempts + 1}",
                payload=TxPayload(
                    transaction_id=row.pk,
                    txid=row.txid,
                    purpose=TxPurpose(row.purpose),
                    reason=reason,
                ),
            )
    logger.warning("bitcoin tx %s %s: %s", row.txid, to, reason)


def transaction_retry(*, tx_id: int, cause: str = "operator retry") -> bool:
    """A failed transaction made broadcastable again (admin action, loans after a timelock)."""
    moved = transaction_transition(tx_id=tx_id, to=S.SIGNED, cause=cause, from_statuses=(S.FAILED,))
    if moved:
        TransactionMonitoring.objects.filter(transaction_id=tx_id).update(
            status=MonitoringStatus.ACTIVE
        )
    return moved


def transaction_rebroadcast(*, tx_id: int, cause: str = "operator rebroadcast") -> bool:
    """Make a transaction broadcastable again (admin, monitor): a failed one back to signed,
    one believed in the mempool back to broadcast. True when it is now broadcastable; the
    caller enqueues `bitcoin.broadcast` on commit."""
    if transaction_retry(tx_id=tx_id, cause=cause):
        return True
    if transaction_transition(
        tx_id=tx_id, to=S.BROADCAST, cause=cause, from_statuses=(S.IN_MEMPOOL,)
    ):
        return True
    return BitcoinTransaction.objects.filter(pk=tx_id, status__in=BROADCASTABLE).exists()
