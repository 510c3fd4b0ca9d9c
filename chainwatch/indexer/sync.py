"""The indexer: confirmed logs of both contracts into EvmEvent, the cursor moved in the same
transaction, forks found exactly and the events past them orphaned.

Every RPC happens outside `atomic()`; each write block re-checks (compare-and-set) that the
cursor is where the RPCs assumed it was.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone
from web3 import Web3

from chainwatch.client import NODE_ERRORS, NodeUnavailable, RPCError, rpc, rpc_batch
from chainwatch.indexer.config import WatchConfig
from chainwatch.indexer.decoding import DecodedLog, Decoder, UnknownLog, default_decoder
from chainwatch.models import ChainCursor, DeliveryStatus, EvmEvent, IndexedBlock, ReorgNotice

logger = logging.getLogger(__name__)

# Words of the errors nodes give for a log query that is too large or too slow.
_TOO_LARGE = ("too many", "limit", "exceed", "range", "timeout", "timed out", "size", "10000")


class CursorMoved(Exception):
    """Someone else moved the cursor between our reads and our write: stop this pass."""


class ReorgTooDeep(Exception):
    """The fork is older than the block hashes we keep: an operator must replay."""


@dataclass
class Window:
    first: int
    last: int
    end_hash: str
    logs: list[dict[str, Any]]
    seconds: float
    parent_hash: str | None  # of block first - 1 on the chain the logs were read from


@dataclass
class IndexSummary:
    indexed_to: int = -1
    safe_head: int = -1
    windows: int = 0
    logs: int = 0
    inserted: int = 0
    revived: int = 0
    reorgs: list[int] = field(default_factory=list)  # fork block of each reorg handled


# --- node reads ---------------------------------------------------------------------------
def _call(w3: Web3, method: str, params: list[Any]) -> Any:
    try:
        return rpc(w3, method, params)
    except NODE_ERRORS as exc:
        raise NodeUnavailable(f"{method}: {type(exc).__name__}") from exc


def head_number(w3: Web3) -> int:
    return int(_call(w3, "eth_blockNumber", []), 16)


def block_hash_at(w3: Web3, number: int) -> str | None:
    block = _call(w3, "eth_getBlockByNumber", [hex(number), False])
    return str(block["hash"]).lower() if block else None


def block_hashes_at(w3: Web3, numbers: list[int]) -> list[str | None]:
    """The hashes of several blocks (None past the head) in one JSON-RPC batch."""
    answers = rpc_batch(w3, [("eth_getBlockByNumber", [hex(n), False]) for n in numbers])
    for answer in answers:
        if isinstance(answer, RPCError):
            raise answer
    return [str(block["hash"]).lower() if block else None for block in answers]


def fetch_logs(w3: Web3, addresses: Iterable[str], first: int, last: int) -> list[dict[str, Any]]:
    logs: list[dict[str, Any]] = _call(
        w3,
        "eth_getLogs",
        [{"address": list(addresses), "fromBlock": hex(first), "toBlock": hex(last)}],
    )
    return logs


def _too_large(exc: Exception) -> bool:
    if isinstance(exc, NodeUnavailable) and "Timeout" in str(exc):
        return True
    return isinstance(exc, RPCError) and any(w in str(exc).lower() for w in _TOO_LARGE)


def fetch_window(w3: Web3, cfg: WatchConfig, first: int, last: int) -> Window | None:
    """The logs of [first, last] read from one consistent chain, with the hash of the block
    before `first` on that chain; None when the chain changed under the call (the caller
    re-checks for a fork and tries again)."""
    before, parent = block_hashes_at(w3, [last, max(0, first - 1)])
    started = time.monotonic()
    logs = fetch_logs(w3, cfg.contracts.values(), first, last)
    seconds = time.monotonic() - started
    after = block_hash_at(w3, last)
    if before is None or before != after:
        return None
    for log in logs:
        if log.get("removed"):
            return None
        if int(log["blockNumber"], 16) == last and log["blockHash"].lower() != after:
            return None
    return Window(first, last, after, logs, seconds, parent_hash=parent if first > 0 else None)


# --- the cursor -----------------------------------------------------------------------------
def cursor_for(cfg: WatchConfig) -> ChainCursor:
    cursor, _ = ChainCursor.objects.get_or_create(
        chain_id=cfg.chain_id,
        defaults={"block_number": cfg.start_block - 1, "block_hash": ""},
    )
    return cursor


def _move_cursor(cursor: ChainCursor, *, number: int, block_hash: str, window: int) -> None:
    """Compare-and-set: only from where this pass read it."""
    moved = ChainCursor.objects.filter(
        pk=cursor.pk, block_number=cursor.block_number, block_hash=cursor.block_hash
    ).update(
        block_number=number, block_hash=block_hash, window_size=window, updated_at=timezone.now()
    )
    if moved != 1:
        raise CursorMoved(f"chain {cursor.chain_id} cursor moved under us")
    cursor.block_number, cursor.block_hash, cursor.window_size = number, block_hash, window


# --- storing --------------------------------------------------------------------------------
class _Row(NamedTuple):
    """A decoded log to store (a tuple: a catch-up window builds thousands)."""

    contract_address: str
    block_number: int
    block_hash: str
    transaction_hash: str
    log_index: int
    decoded: DecodedLog
    copy_line: str  # its _COPIED columns up to delivery_key, in COPY's text format

    @property
    def key(self) -> tuple[str, int]:
        return self.transaction_hash, self.log_index


def decode_logs(cfg: WatchConfig, logs: list[dict[str, Any]], decoder: Decoder) -> list[_Row]:
    names = cfg.names_by_address
    rows = []
    for log in logs:
        address = log["address"].lower()
        try:
            decoded = decoder.decode(log)
        except UnknownLog as exc:
            logger.warning("chainwatch: skipping a log of %s: %s", address, exc)
            continue
        if names.get(address) != decoded.contract_name:
            logger.warning("chainwatch: %s from %s, not its contract", decoded.event_name, address)
            continue
        row = (
            cfg.contracts[decoded.contract_name],
            int(log["blockNumber"], 16),
            log["blockHash"].lower(),
            log["transactionHash"].lower(),
            int(log["logIndex"], 16),
            decoded,
        )
        rows.append(_Row(*row, copy_line=_copy_line(cfg.chain_id, *row)))
    return rows


def store_rows(chain_id: int, rows: list[_Row]) -> tuple[int, int]:
    """Insert new events, revive orphaned ones the chain brought back, skip known ones.

    Runs inside the caller's transaction. Returns (inserted, revived)."""
    if not rows:
        return 0, 0
    inserted = _insert_new(chain_id, rows)
    known = [row for row in rows if row.key not in inserted]
    return len(inserted), _revive_known(chain_id, known)


def _revive_known(chain_id: int, rows: list[_Row]) -> int:
    """The rows already stored: an orphaned one the chain brought back is pending again."""
    if not rows:
        return 0
    existing = {
        (e.transaction_hash, e.log_index): e
        for e in EvmEvent.objects.filter(
            chain_id=chain_id, transaction_hash__in={r.transaction_hash for r in rows}
        ).only("id", "transaction_hash", "log_index", "status", "block_hash")
    }
    revived = 0
    for row in rows:
        known = existing.get(row.key)
        if known is None:
            continue  # the insert conflicted with it, so it is there: cannot happen
        if known.status == DeliveryStatus.ORPHANED:
            # The same transaction in the new branch: the event is live again, to be handed on.
            revived += EvmEvent.objects.filter(pk=known.pk, status=DeliveryStatus.ORPHANED).update(
                **_event_fields(row),
                status=DeliveryStatus.PENDING,
                attempts=0,
                last_error="",
                next_attempt_at=None,
                processed_at=None,
                orphaned_at=None,
                updated_at=timezone.now(),
            )
        elif known.block_hash != row.block_hash:
            logger.error(
                "chainwatch: %s:%s is indexed in block %s but the node has it in %s",
                row.transaction_hash,
                row.log_index,
                known.block_hash,
                row.block_hash,
            )
    return revived


def _insert_new(chain_id: int, rows: list[_Row]) -> set[tuple[str, int]]:
    """Insert the rows not stored yet; the keys of those inserted. On PostgreSQL one COPY and
    one INSERT; elsewhere (SQLite for a quick look) through the ORM."""
    if connection.vendor == "postgresql":
        return _copy_insert(rows)
    stored = set(
        EvmEvent.objects.filter(
            chain_id=chain_id, transaction_hash__in={r.transaction_hash for r in rows}
        ).values_list("transaction_hash", "log_index")
    )
    new = {row.key: row for row in rows if row.key not in stored}
    EvmEvent.objects.bulk_create(
        [EvmEvent(chain_id=chain_id, **_event_fields(row)) for row in new.values()],
        batch_size=2000,
        ignore_conflicts=True,
    )
    return set(new)


_COPIED = (
    "chain_id", "contract_address", "contract_name", "event_name", "block_number", "block_hash",
    "transaction_hash", "log_index", "args", "loan_id", "delivery_key",
    "status", "attempts", "last_error", "created_at", "updated_at",
)  # fmt: skip


def _copy_insert(rows: list[_Row]) -> set[tuple[str, int]]:
    """The window in one COPY (its text is one join, where psycopg2 quoted each value in turn),
    straight into the table: plain inserts, for the common case of a window nobody stored. A
    row already there fails the COPY as a whole (rolled back to its savepoint); the window
    then goes through INSERT ... ON CONFLICT DO NOTHING, which says what it inserted."""
    from psycopg2.errors import UniqueViolation

    now = timezone.now().isoformat()
    tail = f"\t{DeliveryStatus.PENDING.value}\t0\t\t{now}\t{now}\n"
    text = tail.join(row.copy_line for row in rows) + tail
    table = connection.ops.quote_name(EvmEvent._meta.db_table)
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            copy = f"COPY {table} ({', '.join(_COPIED)}) FROM STDIN"
            cursor.cursor.copy_expert(copy, io.StringIO(text))
        return {row.key for row in rows}
    except UniqueViolation:
        return _insert_skipping_known(table, text)


def _insert_skipping_known(table: str, text: str) -> set[tuple[str, int]]:
    """COPY into a temporary table, then insert what is new; the keys inserted."""
    columns = ", ".join(_COPIED)
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE chainwatch_incoming ON COMMIT DROP AS "  # noqa: S608
            f"SELECT {columns} FROM {table} WITH NO DATA"
        )
        cursor.cursor.copy_expert("COPY chainwatch_incoming FROM STDIN", io.StringIO(text))
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM chainwatch_incoming "  # noqa: S608
            f"ON CONFLICT DO NOTHING RETURNING transaction_hash, log_index"
        )
        inserted = {(tx, index) for tx, index in cursor.fetchall()}
        cursor.execute("DROP TABLE chainwatch_incoming")  # ON COMMIT is too late in a savepoint
    return inserted


def _copy_line(
    chain_id: int,
    contract_address: str,
    block_number: int,
    block_hash: str,
    transaction_hash: str,
    log_index: int,
    decoded: DecodedLog,
) -> str:
    """A row's columns up to delivery_key in COPY's text format. Only the JSON may hold a
    backslash, which COPY reads as an escape, so it is doubled; json.dumps escapes every
    control character (no raw tab or newline), and the other columns are names, numbers and
    hex. Built where the log is decoded (the reader thread, during a catch-up)."""
    loan_id = decoded.loan_id
    return "\t".join(
        (
            str(chain_id),
            contract_address,
            decoded.contract_name,
            decoded.event_name,
            str(block_number),
            block_hash,
            transaction_hash,
            str(log_index),
            json.dumps(decoded.args).replace("\\", "\\\\"),
            "\\N" if loan_id is None else str(loan_id),
            decoded.delivery_key(contract_address),
        )
    )


def _event_fields(row: _Row) -> dict[str, Any]:
    return {
        "contract_address": row.contract_address,
        "contract_name": row.decoded.contract_name,
        "event_name": row.decoded.event_name,
        "block_number": row.block_number,
        "block_hash": row.block_hash,
        "transaction_hash": row.transaction_hash,
        "log_index": row.log_index,
        "args": row.decoded.args,
        "loan_id": row.decoded.loan_id,
        "delivery_key": row.decoded.delivery_key(row.contract_address),
    }


def record_blocks(chain_id: int, blocks: dict[int, str]) -> None:
    IndexedBlock.objects.bulk_create(
        [IndexedBlock(chain_id=chain_id, number=n, hash=h) for n, h in blocks.items()],
        update_conflicts=True,
        unique_fields=["chain_id", "number"],
        update_fields=["hash"],
    )


# --- reorgs -------------------------------------------------------------------------------
def find_fork(w3: Web3, cfg: WatchConfig, cursor: ChainCursor) -> tuple[int, str]:
    """The highest recorded block the node still has (every block holding our events is
    recorded, so every event above it is in a replaced block)."""
    history = IndexedBlock.objects.filter(
        chain_id=cfg.chain_id, number__lte=cursor.block_number
    ).order_by("-number")
    lowest = None
    for block in history.iterator(chunk_size=100):
        if block_hash_at(w3, block.number) == block.hash:
            return block.number, block.hash
        lowest = block.number
    if lowest is not None and lowest > cursor.block_number - settings.CHAINWATCH_REORG_HISTORY:
        # Nothing recorded survives and nothing was pruned: the fork is below the first window.
        return cfg.start_block - 1, ""
    raise ReorgTooDeep(
        f"chain {cfg.chain_id}: no recorded block hash up to {cursor.block_number} is still on "
        f"the node; replay from an older block (chainwatch_replay)"
    )


def orphan_past(cfg: WatchConfig, cursor: ChainCursor, fork_number: int, fork_hash: str) -> int:
    """Orphan the events past the fork, rewind, and notice the consumer of every key whose
    processed events were orphaned. One transaction."""
    with transaction.atomic():
        _move_cursor(cursor, number=fork_number, block_hash=fork_hash, window=cursor.window_size)
        past = EvmEvent.objects.filter(chain_id=cfg.chain_id, block_number__gt=fork_number)
        past = past.exclude(status=DeliveryStatus.ORPHANED)
        touched = list(
            past.filter(status=DeliveryStatus.PROCESSED)
            .values("delivery_key", "contract_address", "loan_id")
            .annotate(n=Count("id"))
            .order_by("delivery_key")
        )
        orphaned = past.update(
            status=DeliveryStatus.ORPHANED,
            orphaned_at=timezone.now(),
            next_attempt_at=None,
            updated_at=timezone.now(),
        )
        IndexedBlock.objects.filter(chain_id=cfg.chain_id, number__gt=fork_number).delete()
        ReorgNotice.objects.bulk_create(
            ReorgNotice(
                chain_id=cfg.chain_id,
                delivery_key=t["delivery_key"],
                contract_address=t["contract_address"],
                loan_id=t["loan_id"],
                fork_block_number=fork_number,
                orphaned_events=t["n"],
            )
            for t in touched
        )
    logger.warning(
        "chainwatch: reorg on chain %s: fork at block %s, %s events orphaned, %s keys to re-derive",
        cfg.chain_id,
        fork_number,
        orphaned,
        len(touched),
    )
    return orphaned


def check_fork(w3: Web3, cfg: WatchConfig, cursor: ChainCursor) -> int | None:
    """When the node no longer has the cursor's block, handle the reorg; the fork block."""
    if cursor.block_number < 0 or not cursor.block_hash:
        return None
    if block_hash_at(w3, cursor.block_number) == cursor.block_hash:
        return None
    fork_number, fork_hash = find_fork(w3, cfg, cursor)
    orphan_past(cfg, cursor, fork_number, fork_hash)
    return fork_number


# --- a pass -------------------------------------------------------------------------------
def _grow(window: int, seconds: float, logs: int) -> int:
    fast = seconds < settings.CHAINWATCH_LOG_SLOW_SECONDS / 5 and logs < 5000
    slow = seconds > settings.CHAINWATCH_LOG_SLOW_SECONDS
    if slow:
        return max(1, window // 2)
    if fast:
        return min(settings.CHAINWATCH_LOG_WINDOW_MAX, window * 2)
    return window


def _shrunk(window: int, exc: RPCError | NodeUnavailable) -> int:
    """Half the window after a log query the node found too large; anything else is raised."""
    if not _too_large(exc) or window == 1:
        raise exc
    logger.info("chainwatch: log window shrunk to %s blocks (%s)", max(1, window // 2), exc)
    return max(1, window // 2)


def _handled_fork(w3: Web3, cfg: WatchConfig, cursor: ChainCursor, summary: IndexSummary) -> bool:
    """Check the cursor's block against the node; True when a reorg was found and handled."""
    fork = check_fork(w3, cfg, cursor)
    if fork is None:
        return False
    summary.reorgs.append(fork)
    cursor.refresh_from_db()
    summary.indexed_to = cursor.block_number
    return True


def _store_window(
    cfg: WatchConfig, cursor: ChainCursor, fetched: Window, rows: list[_Row], window: int
) -> tuple[int, int]:
    """The window's events, its block hashes and the cursor: one transaction."""
    blocks = {r.block_number: r.block_hash for r in rows}
    blocks[fetched.last] = fetched.end_hash
    with transaction.atomic():
        inserted, revived = store_rows(cfg.chain_id, rows)
        record_blocks(cfg.chain_id, blocks)
        IndexedBlock.objects.filter(
            chain_id=cfg.chain_id,
            number__lt=fetched.last - settings.CHAINWATCH_REORG_HISTORY,
        ).delete()
        _move_cursor(cursor, number=fetched.last, block_hash=fetched.end_hash, window=window)
    return inserted, revived


_Read = tuple[Window, list[_Row]] | None  # a window and its decoded rows; None: chain moved


class _WindowReader:
    """Reads windows (eth_getLogs and decoding) in a thread of its own, so the next window is
    read while the main thread stores this one. The thread never touches the database, and no
    transaction waits on the node: a window read ahead is only used if it starts at the cursor
    (and it must follow the cursor's block like any other)."""

    def __init__(self, w3: Web3, cfg: WatchConfig) -> None:
        self.w3, self.cfg, self.decoder = w3, cfg, default_decoder()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chainwatch-read")
        self.ahead: tuple[tuple[int, int], Future[_Read]] | None = None

    def _read(self, first: int, last: int) -> _Read:
        fetched = fetch_window(self.w3, self.cfg, first, last)
        return (
            None
            if fetched is None
            else (fetched, decode_logs(self.cfg, fetched.logs, self.decoder))
        )

    def read_ahead(self, first: int, last: int) -> None:
        self.ahead = (first, last), self.pool.submit(self._read, first, last)

    def read(self, first: int, last: int) -> _Read:
        ahead, self.ahead = self.ahead, None
        if ahead is not None and ahead[0] == (first, last):
            return ahead[1].result()
        return self.pool.submit(self._read, first, last).result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def index_pass(
    w3: Web3,
    cfg: WatchConfig,
    *,
    max_seconds: float | None = None,
) -> IndexSummary:
    """Index confirmed blocks until the safe head (head - confirmations) or the time budget.

    The cursor's block is checked against the node when the pass starts and whenever a window
    does not follow it: each window comes with the hash of the block before it, which must be
    the cursor's, so the windows of a pass form one chain (and the head is asked again only
    once the cursor reaches the last one seen)."""
    reader = _WindowReader(w3, cfg)
    try:
        return _index_windows(w3, cfg, reader, max_seconds or settings.CHAINWATCH_PASS_SECONDS)
    finally:
        reader.close()


def _index_windows(
    w3: Web3, cfg: WatchConfig, reader: _WindowReader, max_seconds: float
) -> IndexSummary:
    cursor = cursor_for(cfg)
    summary = IndexSummary(indexed_to=cursor.block_number)
    window = cursor.window_size or settings.CHAINWATCH_LOG_WINDOW
    deadline = time.monotonic() + max_seconds
    checked, safe = False, -1
    while time.monotonic() < deadline:
        if not checked and _handled_fork(w3, cfg, cursor, summary):
            continue
        checked = True
        if safe <= cursor.block_number:
            safe = summary.safe_head = head_number(w3) - cfg.confirmations
            if safe <= cursor.block_number:
                break
        first = cursor.block_number + 1
        try:
            read = reader.read(first, min(safe, first + window - 1))
        except (RPCError, NodeUnavailable) as exc:
            window = _shrunk(window, exc)
            continue
        if read is None or (cursor.block_hash and read[0].parent_hash != cursor.block_hash):
            checked, safe = False, -1  # the chain moved: check for a fork, then read again
            continue
        fetched, rows = read
        window = _grow(window, fetched.seconds, len(fetched.logs))
        if fetched.last < safe:
            reader.read_ahead(fetched.last + 1, min(safe, fetched.last + window))
        inserted, revived = _store_window(cfg, cursor, fetched, rows, window)
        summary.windows += 1
        summary.logs += len(fetched.logs)
        summary.inserted += inserted
        summary.revived += revived
        summary.indexed_to = fetched.last
    return summary


def replay_range(
    w3: Web3,
    cfg: WatchConfig,
    *,
    first: int,
    last: int | None = None,
    on_window: Callable[[int, int, IndexSummary], None] | None = None,
) -> IndexSummary:
    """Re-read [first, min(last, cursor)] and insert what is missing; idempotent. Blocks past
    the cursor are left to the poller (they must pass the confirmations first)."""
    decoder = default_decoder()
    cursor = cursor_for(cfg)
    fork = check_fork(w3, cfg, cursor)
    summary = IndexSummary(reorgs=[fork] if fork is not None else [])
    cursor.refresh_from_db()
    end = cursor.block_number if last is None else min(last, cursor.block_number)
    window = cursor.window_size or settings.CHAINWATCH_LOG_WINDOW
    position = max(first, cfg.start_block)
    while position <= end:
        upper = min(end, position + window - 1)
        try:
            fetched = fetch_window(w3, cfg, position, upper)
        except (RPCError, NodeUnavailable) as exc:
            window = _shrunk(window, exc)
            continue
        if fetched is None:
            raise CursorMoved("the chain changed during the replay: run it again")
        rows = decode_logs(cfg, fetched.logs, decoder)
        with transaction.atomic():
            inserted, revived = store_rows(cfg.chain_id, rows)
            record_blocks(cfg.chain_id, {r.block_number: r.block_hash for r in rows})
        summary.windows += 1
        summary.logs += len(fetched.logs)
        summary.inserted += inserted
        summary.revived += revived
        summary.indexed_to = upper
        window = _grow(window, fetched.seconds, len(fetched.logs))
        if on_window is not None:
            on_window(position, end, summary)
        position = upper + 1
    return summary
