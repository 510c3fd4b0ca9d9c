"""The block scanner: a cursor (height and hash) over the node's chain and its mempool.

Each run: snapshot the mempool, read the tip, detect a reorg (the cursor's hash is no longer
the node's at that height) and rewind to the fork, then process each new block in its own
database transaction (observations, our confirmations, the block's hash, the cursor), then the
mempool, then confirmation depths. Every change of state records a fact for `loans`. All RPC
happens outside atomic(); the database is written only from what the node said.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from bitcoin.facts import PaymentPayload, SpendPayload, TxPayload, fact_record
from bitcoin.models import (
    BitcoinTransaction,
    FactKind,
    MonitoringStatus,
    ObservationStatus,
    ObservedPayment,
    ObservedSpend,
    ScanCursor,
    ScannedBlock,
    TransactionMonitoring,
    TxPurpose,
    TxStatus,
    WatchedOutpoint,
    WatchedScript,
    WatchPurpose,
)
from bitcoin.rpc import BitcoinRPC, RPCError, btc_to_sats, get_client
from bitcoin.services.transactions import transaction_transition
from bitcoin.witness import describe_spend, spend_path

logger = logging.getLogger(__name__)

# Block hashes kept to find a fork point; a reorg deeper than this needs an operator rescan.
KEEP_BLOCKS = 1000
MEMPOOL_SEEN_TTL = 24 * 3600


class DeepReorg(RuntimeError):
    """The fork point is older than the block hashes we keep."""


@dataclass
class ScanSummary:
    tip: int = 0
    cursor: int = 0
    blocks: int = 0
    reorged_to: int | None = None
    mempool_examined: int = 0
    facts: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tip": self.tip,
            "cursor": self.cursor,
            "blocks": self.blocks,
            "reorged_to": self.reorged_to,
            "mempool_examined": self.mempool_examined,
            "facts": self.facts,
        }


def _network() -> str:
    return str(settings.BITCOIN_NETWORK)


def chain_scan(*, rpc: BitcoinRPC | None = None, max_blocks: int | None = None) -> ScanSummary:
    """One scanner pass; call single-flight (the task does)."""
    rpc = rpc or get_client()
    max_blocks = max_blocks or settings.BITCOIN_SCAN_MAX_BLOCKS
    summary = ScanSummary()
    mempool = set(rpc.raw_mempool())  # before the tip is read: see _scan_mempool
    tip = rpc.block_count()
    summary.tip = tip
    cursor = _cursor_or_start(rpc, tip)
    for _attempt in range(3):
        fork = _find_fork(rpc, cursor, tip)
        if fork is not None:
            summary.facts += _rewind(fork, rpc)
            summary.reorged_to = fork
            cursor = ScanCursor.objects.get(network=_network())
        _done, reorg_seen = _scan_blocks(rpc, cursor, tip, max_blocks, summary)
        cursor = ScanCursor.objects.get(network=_network())
        if not reorg_seen:
            break
        tip = rpc.block_count()
        summary.tip = tip
    summary.cursor = cursor.height
    summary.facts += _scan_mempool(rpc, mempool, summary)
    summary.facts += _update_depths(cursor.height)
    return summary


def chain_rescan_from(*, height: int, rpc: BitcoinRPC | None = None) -> int:
    """Operator rescan: un-confirm what the scanner recorded above `height - 1` (each with its
    orphaned fact) and move the cursor there; the next scan reads those blocks again, so the
    facts come back with a new epoch. Returns the number of facts recorded."""
    rpc = rpc or get_client()
    cursor = ScanCursor.objects.filter(network=_network()).first()
    if cursor is None or height - 1 >= cursor.height:
        return 0
    return _rewind(max(height - 1, -1), rpc)


def _cursor_or_start(rpc: BitcoinRPC, tip: int) -> ScanCursor:
    cursor = ScanCursor.objects.filter(network=_network()).first()
    if cursor is not None:
        return cursor
    start = settings.BITCOIN_START_HEIGHT
    start = tip if start < 0 else min(start, tip)
    height = start - 1
    block_hash = rpc.block_hash(height) if height >= 0 else "0" * 64
    cursor, _created = ScanCursor.objects.get_or_create(
        network=_network(), defaults={"height": height, "block_hash": block_hash}
    )
    return cursor


def _find_fork(rpc: BitcoinRPC, cursor: ScanCursor, tip: int) -> int | None:
    """None when the cursor is on the node's chain; else the last height both agree on."""
    if cursor.height < 0:
        return None
    if cursor.height <= tip:
        try:
            if rpc.block_hash(cursor.height) == cursor.block_hash:
                return None
        except RPCError:
            pass
    stored = dict(
        ScannedBlock.objects.filter(network=_network(), height__lte=min(cursor.height, tip))
        .order_by("-height")
        .values_list("height", "block_hash")[:KEEP_BLOCKS]
    )
    heights = sorted(stored, reverse=True)
    for start in range(0, len(heights), 100):
        chunk = heights[start : start + 100]
        answers = rpc.batch([("getblockhash", [h]) for h in chunk])
        for height, node_hash in zip(chunk, answers, strict=True):
            if node_hash == stored[height]:
                return height
    raise DeepReorg(
        f"bitcoin reorg: no common block with the node among the last {len(heights)} "
        f"scanned blocks below {cursor.height}; rescan from an older height"
    )


def _rewind(fork: int, rpc: BitcoinRPC) -> int:
    """Un-confirm everything above the fork, record the orphaned facts, move the cursor."""
    facts = 0
    fork_hash = rpc.block_hash(fork) if fork >= 0 else "0" * 64
    with transaction.atomic():
        for model, kind in (
            (ObservedPayment, FactKind.PAYMENT_ORPHANED),
            (ObservedSpend, FactKind.SPEND_ORPHANED),
        ):
            for obs in model.objects.select_for_update().filter(
                block_height__gt=fork, status=ObservationStatus.CONFIRMED
            ):
                payload = _observation_payload(obs)
                obs.status = ObservationStatus.MEMPOOL
                obs.block_hash, obs.block_height = "", None
                obs.confirmations = obs.reported_confirmations = 0
                obs.epoch += 1
                obs.save()
                facts += fact_record(
                    kind=kind,
                    loan_ref=obs.watched.loan_ref,
                    dedupe_key=f"{_prefix(obs)}:{obs.pk}:orphaned:{obs.epoch}",
                    payload=payload,
                )
        for tx in BitcoinTransaction.objects.select_for_update().filter(
            block_height__gt=fork, status=TxStatus.CONFIRMED
        ):
            tx_payload = _tx_payload(tx)
            moved = transaction_transition(
                tx_id=tx.pk,
                to=TxStatus.IN_MEMPOOL,
                cause=f"reorg below height {tx.block_height}",
                from_statuses=(TxStatus.CONFIRMED,),
                block_hash="",
                block_height=None,
                confirmations=0,
                reported_confirmations=0,
                epoch=tx.epoch + 1,
            )
            if moved:
                TransactionMonitoring.objects.filter(transaction_id=tx.pk).update(
                    status=MonitoringStatus.ACTIVE
                )
                facts += fact_record(
                    kind=FactKind.TX_ORPHANED,
                    loan_ref=tx.loan_ref,
                    dedupe_key=f"tx:{tx.pk}:orphaned:{tx.epoch + 1}",
                    payload=tx_payload,
                )
        ScannedBlock.objects.filter(network=_network(), height__gt=fork).delete()
        ScanCursor.objects.filter(network=_network()).update(
            height=fork, block_hash=fork_hash, updated_at=timezone.now()
        )
    logger.warning("bitcoin reorg: rewound to height %s, %s facts", fork, facts)
    return facts


def _scan_blocks(
    rpc: BitcoinRPC, cursor: ScanCursor, tip: int, max_blocks: int, summary: ScanSummary
) -> tuple[int, bool]:
    """Process blocks cursor+1..tip (at most max_blocks). Returns (count, reorg seen)."""
    last = min(tip, cursor.height + max_blocks)
    heights = list(range(cursor.height + 1, last + 1))
    prev_hash = cursor.block_hash
    done = 0
    for start in range(0, len(heights), 10):
        chunk = heights[start : start + 10]
        hashes = rpc.batch([("getblockhash", [h]) for h in chunk])
        if any(isinstance(h, Exception) for h in hashes):
            return done, True  # the chain got shorter under us
        blocks = rpc.batch([("getblock", [h, 2]) for h in hashes])
        for height, block in zip(chunk, blocks, strict=True):
            if isinstance(block, Exception) or (
                height > 0 and block.get("previousblockhash") != prev_hash
            ):
                return done, True
            summary.facts += _process_block(height, block)
            prev_hash = block["hash"]
            done += 1
            summary.blocks += 1
    _prune_blocks(last)
    return done, False


def _prune_blocks(tip: int) -> None:
    ScannedBlock.objects.filter(network=_network(), height__lt=tip - KEEP_BLOCKS).delete()


def _watched_in(
    txs: Iterable[dict[str, Any]],
) -> tuple[dict[str, WatchedScript], dict[tuple[str, int], WatchedOutpoint]]:
    txs = list(txs)
    txids = {tx["txid"] for tx in txs}
    scripts = {out["scriptPubKey"]["hex"] for tx in txs for out in tx.get("vout", ())}
    prev_txids = {vin["txid"] for tx in txs for vin in tx.get("vin", ()) if "txid" in vin}
    # A closed loan's watches are stopped, but an observation a reorg sent back to the
    # mempool is still followed until it is mined again (or dropped).
    orphaned = ObservationStatus.MEMPOOL
    watched_scripts = (
        {
            w.script_pubkey: w
            for w in WatchedScript.objects.filter(script_pubkey__in=scripts)
            .filter(Q(active=True) | Q(payments__status=orphaned, payments__txid__in=txids))
            .distinct()
        }
        if scripts
        else {}
    )
    watched_outpoints = (
        {
            (w.txid, w.vout): w
            for w in WatchedOutpoint.objects.filter(txid__in=prev_txids)
            .filter(Q(active=True) | Q(spends__status=orphaned, spends__txid__in=txids))
            .distinct()
        }
        if prev_txids
        else {}
    )
    return watched_scripts, watched_outpoints


def _process_block(height: int, block: dict[str, Any]) -> int:
    """One block in one transaction: observations, our confirmations, hash, cursor."""
    txs: list[dict[str, Any]] = block.get("tx", [])
    facts = 0
    with transaction.atomic():
        watched_scripts, watched_outpoints = _watched_in(txs)
        for tx in txs:
            facts += _observe(tx, watched_scripts, watched_outpoints, block["hash"], height)
        txids = [tx["txid"] for tx in txs]
        for ours in BitcoinTransaction.objects.filter(txid__in=txids).exclude(
            status__in=(TxStatus.CONFIRMED, TxStatus.BUILT)
        ):
            if transaction_transition(
                tx_id=ours.pk,
                to=TxStatus.CONFIRMED,
                cause=f"mined in block {height}",
                block_hash=block["hash"],
                block_height=height,
                confirmations=1,
                last_error="",
            ):
                # Follow its depth, even if we had given up on it (mined by someone else).
                TransactionMonitoring.objects.filter(transaction_id=ours.pk).update(
                    status=MonitoringStatus.ACTIVE
                )
        ScannedBlock.objects.update_or_create(
            network=_network(),
            height=height,
            defaults={
                "block_hash": block["hash"],
                "prev_hash": block.get("previousblockhash", "0" * 64),
            },
        )
        ScanCursor.objects.filter(network=_network()).update(
            height=height, block_hash=block["hash"], updated_at=timezone.now()
        )
    return facts


def _observe(
    tx: dict[str, Any],
    watched_scripts: dict[str, WatchedScript],
    watched_outpoints: dict[tuple[str, int], WatchedOutpoint],
    block_hash: str,
    height: int | None,
) -> int:
    """Record payments and spends in one transaction (block or mempool). Returns new facts."""
    facts = 0
    txid = tx["txid"]
    for out in tx.get("vout", ()):
        watched = watched_scripts.get(out["scriptPubKey"]["hex"])
        if watched is None:
            continue
        payment, created = ObservedPayment.objects.get_or_create(
            txid=txid,
            vout=int(out["n"]),
            defaults={"watched": watched, "value_sats": btc_to_sats(out["value"])},
        )
        facts += _place(payment, created, block_hash, height)
    for index, vin in enumerate(tx.get("vin", ())):
        watched_op = watched_outpoints.get((vin.get("txid", ""), int(vin.get("vout", -1))))
        if watched_op is None:
            continue
        leaf_index, preimage = describe_spend(tx["hex"], index)
        spend, created = ObservedSpend.objects.get_or_create(
            watched=watched_op,
            txid=txid,
            defaults={"input_index": index, "leaf_index": leaf_index, "preimage": preimage},
        )
        facts += _place(spend, created, block_hash, height)
    return facts


def _prefix(obs: ObservedPayment | ObservedSpend) -> str:
    return "payment" if isinstance(obs, ObservedPayment) else "spend"


def _place(
    obs: ObservedPayment | ObservedSpend, created: bool, block_hash: str, height: int | None
) -> int:
    """A new observation gets its 'seen' fact; a block sets its place."""
    facts = 0
    if height is None and obs.status == ObservationStatus.DROPPED:  # back in the mempool
        obs.status = ObservationStatus.MEMPOOL
        obs.save(update_fields=["status", "updated_at"])
    if height is not None and obs.block_hash != block_hash:
        obs.status = ObservationStatus.CONFIRMED
        obs.block_hash = block_hash
        obs.block_height = height
        obs.confirmations = max(obs.confirmations, 1)
        obs.save()
    if created:
        seen = FactKind.PAYMENT_SEEN if isinstance(obs, ObservedPayment) else FactKind.SPEND_SEEN
        facts += fact_record(
            kind=seen,
            loan_ref=obs.watched.loan_ref,
            dedupe_key=f"{_prefix(obs)}:{obs.pk}:seen",
            payload=_observation_payload(obs),
        )
    return facts


def _observation_payload(obs: ObservedPayment | ObservedSpend) -> PaymentPayload | SpendPayload:
    if isinstance(obs, ObservedPayment):
        w = obs.watched
        return PaymentPayload(
            txid=obs.txid,
            block_hash=obs.block_hash or None,
            block_height=obs.block_height,
            confirmations=obs.confirmations,
            payment_id=obs.pk,
            vout=obs.vout,
            value_sats=obs.value_sats,
            script_pubkey=w.script_pubkey,
            address=w.address,
            purpose=WatchPurpose(w.purpose),
            target_confirmations=w.target_confirmations,
        )
    o = obs.watched
    path = spend_path(o.purpose, obs.leaf_index)
    return SpendPayload(
        txid=obs.txid,
        block_hash=obs.block_hash or None,
        block_height=obs.block_height,
        confirmations=obs.confirmations,
        spend_id=obs.pk,
        outpoint=f"{o.txid}:{o.vout}",
        purpose=WatchPurpose(o.purpose),
        spending_txid=obs.txid,
        input_index=obs.input_index,
        leaf_index=obs.leaf_index,
        path=TxPurpose(path) if path else None,
        preimage=obs.preimage or None,
        target_confirmations=o.target_confirmations,
    )


def _tx_payload(tx: BitcoinTransaction) -> TxPayload:
    return TxPayload(
        transaction_id=tx.pk,
        txid=tx.txid,
        purpose=TxPurpose(tx.purpose),
        block_hash=tx.block_hash or None,
        block_height=tx.block_height,
        confirmations=tx.confirmations,
    )


def _mempool_generation() -> str:
    """Changes whenever a watch is added, so mempool transactions are examined again."""
    s = WatchedScript.objects.aggregate(m=Max("id"))["m"] or 0
    o = WatchedOutpoint.objects.aggregate(m=Max("id"))["m"] or 0
    return f"{s}.{o}"


def _scan_mempool(rpc: BitcoinRPC, mempool: set[str], summary: ScanSummary) -> int:
    """Payments and spends in the mempool snapshot (taken before the tip was read, so a
    transaction absent from it and from every scanned block really left the mempool)."""
    facts = 0
    has_watches = (
        WatchedScript.objects.filter(active=True).exists()
        or WatchedOutpoint.objects.filter(active=True).exists()
    )
    if has_watches and mempool:
        generation = _mempool_generation()
        keys = {f"btcloan:btc:mp:{generation}:{txid}": txid for txid in mempool}
        seen = cache.get_many(list(keys))
        fresh = [txid for key, txid in keys.items() if key not in seen]
        for start in range(0, len(fresh), 200):
            chunk = fresh[start : start + 200]
            answers = rpc.batch([("getrawtransaction", [txid, True]) for txid in chunk])
            txs = [a for a in answers if isinstance(a, dict)]
            with transaction.atomic():
                watched_scripts, watched_outpoints = _watched_in(txs)
                for tx in txs:
                    facts += _observe(tx, watched_scripts, watched_outpoints, "", None)
            cache.set_many(
                {f"btcloan:btc:mp:{generation}:{txid}": 1 for txid in chunk},
                timeout=MEMPOOL_SEEN_TTL,
            )
            summary.mempool_examined += len(chunk)
    # Observations waiting in the mempool that are neither there nor mined: dropped.
    with transaction.atomic():
        for model, kind in (
            (ObservedPayment, FactKind.PAYMENT_DROPPED),
            (ObservedSpend, FactKind.SPEND_DROPPED),
        ):
            gone = (
                model.objects.select_for_update()
                .filter(status=ObservationStatus.MEMPOOL)
                .exclude(txid__in=mempool)
            )
            for obs in gone:
                obs.status = ObservationStatus.DROPPED
                obs.save(update_fields=["status", "updated_at"])
                facts += fact_record(
                    kind=kind,
                    loan_ref=obs.watched.loan_ref,
                    dedupe_key=f"{_prefix(obs)}:{obs.pk}:dropped:{obs.epoch}",
                    payload=_observation_payload(obs),
                )
    return facts


def _update_depths(height: int) -> int:
    """Confirmation counts from the scanned height; one fact per new depth up to the target."""
    facts = 0
    with transaction.atomic():
        for model in (ObservedPayment, ObservedSpend):
            rows = (
                model.objects.select_for_update()
                .select_related("watched")
                .filter(
                    status=ObservationStatus.CONFIRMED,
                    block_height__isnull=False,
                )
                .filter(reported_confirmations__lt=F("watched__target_confirmations"))
            )
            for obs in rows:
                facts += _deepen_observation(obs, height)
        for tx in (
            BitcoinTransaction.objects.select_for_update()
            .select_related("monitoring")
            .filter(
                status=TxStatus.CONFIRMED,
                block_height__isnull=False,
                monitoring__status=MonitoringStatus.ACTIVE,
            )
        ):
            facts += _deepen_tx(tx, height)
    return facts


def _deepen_observation(obs: ObservedPayment | ObservedSpend, height: int) -> int:
    assert obs.block_height is not None
    depth = max(0, height - obs.block_height + 1)
    target = obs.watched.target_confirmations
    kind = (
        FactKind.PAYMENT_CONFIRMED if isinstance(obs, ObservedPayment) else FactKind.SPEND_CONFIRMED
    )
    facts = 0
    for level in range(obs.reported_confirmations + 1, min(depth, target) + 1):
        obs.confirmations = level
        facts += fact_record(
            kind=kind,
            loan_ref=obs.watched.loan_ref,
            dedupe_key=f"{_prefix(obs)}:{obs.pk}:e{obs.epoch}:c{level}",
            payload=_observation_payload(obs),
        )
    obs.confirmations = depth
    obs.reported_confirmations = max(obs.reported_confirmations, min(depth, target))
    obs.save(update_fields=["confirmations", "reported_confirmations", "updated_at"])
    return facts


def _deepen_tx(tx: BitcoinTransaction, height: int) -> int:
    assert tx.block_height is not None
    depth = max(0, height - tx.block_height + 1)
    target = tx.monitoring.target_confirmations
    facts = 0
    for level in range(tx.reported_confirmations + 1, min(depth, target) + 1):
        tx.confirmations = level
        facts += fact_record(
            kind=FactKind.TX_CONFIRMED,
            loan_ref=tx.loan_ref,
            dedupe_key=f"tx:{tx.pk}:e{tx.epoch}:c{level}",
            payload=_tx_payload(tx),
        )
    reported = max(tx.reported_confirmations, min(depth, target))
    BitcoinTransaction.objects.filter(pk=tx.pk).update(
        confirmations=depth, reported_confirmations=reported
    )
    if reported >= target:
        TransactionMonitoring.objects.filter(transaction_id=tx.pk).update(
            status=MonitoringStatus.COMPLETED
        )
    return facts
