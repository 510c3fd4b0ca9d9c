"""Facts for the consumer (`loans`), handed on in order and exactly once.

The consumer registers one handler at start-up, from its AppConfig.ready():

    from bitcoin.facts import register_fact_handler
    register_fact_handler(on_bitcoin_fact)      # on_bitcoin_fact(fact: Fact) -> None

or, without code, BITCOIN_FACT_HANDLER = "pkg.module.callable". `facts_deliver` calls the
handler for each undelivered fact in id order, inside the database transaction that marks the
fact delivered: the handler's writes and the delivery commit together or not at all, so each
fact takes effect exactly once. The handler must not talk to a chain (it runs inside atomic());
it enqueues its actions with transaction.on_commit. A handler error (raise = "retry later")
holds back that loan's later facts, keeping their order, and not other loans' facts.

What crosses is typed and frozen: a `Fact` (its `FactKind`, the loan reference and one payload
dataclass per family of kinds: `PaymentPayload`, `SpendPayload`, `TxPayload`). The stored JSON is
the payload's fields; `fact_of` reads a stored row back into the typed form.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.module_loading import import_string

from bitcoin.models import BitcoinFact, FactKind, TxPurpose, WatchPurpose

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PaymentPayload:
    """A payment to a watched script (PAYMENT_*): the output and how deep it is."""

    txid: str
    vout: int = 0
    value_sats: int = 0
    purpose: WatchPurpose = WatchPurpose.OTHER
    confirmations: int = 0
    block_hash: str | None = None
    block_height: int | None = None
    payment_id: int | None = None
    script_pubkey: str = ""
    address: str = ""
    target_confirmations: int = 0


@dataclass(frozen=True)
class SpendPayload:
    """A spend of a watched outpoint (SPEND_*): by which transaction, through which leaf.
    `path` is the protocol's name of the spend (None: a key path or a leaf not ours)."""

    txid: str  # the spending transaction
    outpoint: str = ""
    purpose: WatchPurpose = WatchPurpose.OTHER
    path: TxPurpose | None = None
    confirmations: int = 0
    block_hash: str | None = None
    block_height: int | None = None
    spend_id: int | None = None
    spending_txid: str = ""
    input_index: int = 0
    leaf_index: int | None = None
    preimage: str | None = None
    target_confirmations: int = 0


@dataclass(frozen=True)
class TxPayload:
    """One of our own transactions (TX_*): its purpose, depth, or why it was given up."""

    txid: str
    purpose: TxPurpose = TxPurpose.OTHER
    transaction_id: int | None = None
    confirmations: int = 0
    block_hash: str | None = None
    block_height: int | None = None
    reason: str = ""


FactPayload = PaymentPayload | SpendPayload | TxPayload

# Which payload each kind carries: every FactKind is here (a test enumerates them).
PAYLOAD_TYPES: dict[FactKind, type[PaymentPayload] | type[SpendPayload] | type[TxPayload]] = {
    FactKind.PAYMENT_SEEN: PaymentPayload,
    FactKind.PAYMENT_CONFIRMED: PaymentPayload,
    FactKind.PAYMENT_ORPHANED: PaymentPayload,
    FactKind.PAYMENT_DROPPED: PaymentPayload,
    FactKind.SPEND_SEEN: SpendPayload,
    FactKind.SPEND_CONFIRMED: SpendPayload,
    FactKind.SPEND_ORPHANED: SpendPayload,
    FactKind.SPEND_DROPPED: SpendPayload,
    FactKind.TX_CONFIRMED: TxPayload,
    FactKind.TX_ORPHANED: TxPayload,
    FactKind.TX_FAILED: TxPayload,
    FactKind.TX_REPLACED: TxPayload,
}


@dataclass(frozen=True)
class Fact:
    """What `loans` receives: one recorded fact, typed and frozen."""

    id: int
    kind: FactKind
    loan_ref: str
    payload: FactPayload

    @property
    def pk(self) -> int:
        return self.id


def _path_or_none(value: object) -> TxPurpose | None:
    try:
        return TxPurpose(str(value)) if value is not None else None
    except ValueError:
        return None


def payload_of(kind: FactKind, raw: Mapping[str, object]) -> FactPayload:
    """The typed payload of a stored one (unknown keys are dropped, missing ones defaulted)."""
    cls = PAYLOAD_TYPES[kind]
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in raw.items() if k in names}
    if "purpose" in values:
        purpose = str(values["purpose"])
        choices = TxPurpose if cls is TxPayload else WatchPurpose
        values["purpose"] = choices(purpose) if purpose in choices.values else choices.OTHER
    if "path" in values:
        values["path"] = _path_or_none(values["path"])
    return cls(**values)  # type: ignore[arg-type]


def fact_of(row: BitcoinFact) -> Fact:
    kind = FactKind(row.kind)
    return Fact(id=row.pk, kind=kind, loan_ref=row.loan_ref, payload=payload_of(kind, row.payload))


FactHandler = Callable[[Fact], None]
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


def fact_record(*, kind: FactKind, loan_ref: str, dedupe_key: str, payload: FactPayload) -> int:
    """Record a fact once (the dedupe key is unique); 1 when it is new, else 0.

    Called inside the scanner's transaction, so a fact exists iff the state it describes does.
    """
    if not isinstance(payload, PAYLOAD_TYPES[kind]):
        raise TypeError(f"a {kind} fact carries a {PAYLOAD_TYPES[kind].__name__}")
    _fact, created = BitcoinFact.objects.get_or_create(
        dedupe_key=dedupe_key,
        defaults={"kind": kind, "loan_ref": loan_ref, "payload": asdict(payload)},
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
                handler(fact_of(fact))
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
