"""Reads of the loan domain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import JSONField, Q, QuerySet
from django.db.models.expressions import RawSQL
from eth_utils import is_address, to_checksum_address

from loans.deadlines import Deadline, loan_deadlines
from loans.models import (
    AuditAction,
    AuditCause,
    AuditEntry,
    BitcoinStage,
    Loan,
    LoanStatus,
    LoanWorkflow,
)
from loans.services.accounting import LoanAccounting, loan_accounting

# Loans with something still to do on either chain.
OPEN_STATUSES = frozenset(LoanStatus) - {LoanStatus.CLOSED, LoanStatus.INVALID}


def loan_get(*, chain_id: int, contract_address: str, onchain_id: int) -> Loan | None:
    return Loan.objects.filter(
        chain_id=chain_id, contract_address=contract_address, onchain_id=onchain_id
    ).first()


def loans_open() -> QuerySet[Loan]:
    return Loan.objects.filter(status__in=OPEN_STATUSES).order_by("id")


def loans_watched() -> QuerySet[Loan]:
    """What the watchdog and the reconciler look at: every open loan, and every invalid one the
    contract may hold open beyond its request (an offer went out for it): chain facts win, so
    such a loan is never out of sight."""
    from chainwatch.models import EvmTransaction
    from loans.policy import LenderAction

    offered = EvmTransaction.objects.filter(action=LenderAction.OFFER.value).values_list(
        "loan_ref", flat=True
    )
    invalid_offered = Q(status=LoanStatus.INVALID) & Q(
        pk__in=[int(ref) for ref in offered if ref.isdigit()]
    )
    return Loan.objects.filter(Q(status__in=OPEN_STATUSES) | invalid_offered).order_by("id")


def loans_of_borrower(*, address: str) -> QuerySet[Loan]:
    """Loans store the address as the contract's event gave it (EIP-55). An exact match on its
    spellings uses the column's index; `iexact` (UPPER) scanned every loan (bench/api_bench)."""
    spellings = {address, address.lower()}
    if is_address(address):
        spellings.add(to_checksum_address(address))
    return Loan.objects.filter(borrower_address__in=spellings).order_by("-id")


def loans_visible_to(user: Any) -> QuerySet[Loan]:
    """Operators see every loan; a borrower the loans of the wallet they signed in with."""
    from btcloan.api.selectors import is_operator, wallet_address_of

    if is_operator(user):
        return Loan.objects.order_by("-id")
    address = wallet_address_of(user)
    if address is None:
        return Loan.objects.none()
    return loans_of_borrower(address=address)


def known_heads(*, chain_id: int) -> tuple[int | None, int | None]:
    """The newest EVM and Bitcoin blocks the watchers have seen (no node is asked)."""
    from bitcoin.selectors import scan_cursor
    from chainwatch.models import ChainCursor

    evm = ChainCursor.objects.filter(chain_id=chain_id).values_list("block_number", flat=True)
    btc = scan_cursor()
    return _heads(evm.first(), btc.height if btc is not None else None)


def _heads(evm_cursor: int | None, btc_height: int | None) -> tuple[int | None, int | None]:
    """The EVM head counts as known once its confirmations are indexed (the cursor)."""
    evm_head = int(evm_cursor) + int(settings.EVM_CONFIRMATIONS) if evm_cursor is not None else None
    return evm_head, btc_height


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    source: str  # "evm", "bitcoin" or "backend"
    what: str
    ref: str
    block: int | None
    details: dict[str, Any]


# The loan's timeline sources, its audit trail, and for the detail its workflows and the known
# heads, as one value of the loan's row: rows of uniform columns (part, at, id, three texts,
# three more texts, two numbers, a flag, a JSON document) from a UNION ALL, as a JSON array.
# The detail read each separately, six round trips and as many times Django's query building;
# read with the loan, it is one statement for both (bench/api_bench.py).
_STORY_SQL = """
SELECT coalesce(
         jsonb_agg(jsonb_build_array(p, at, id, t1, t2, t3, t4, t5, t6, n1, n2, flag, doc)
                   ORDER BY p, id),
         '[]'::jsonb)
  FROM (
SELECT 0 AS p, created_at AS at, id, event_name AS t1, transaction_hash AS t2, status AS t3,
       NULL AS t4, NULL AS t5, NULL AS t6, log_index::bigint AS n1, block_number AS n2,
       NULL::boolean AS flag, NULL::jsonb AS doc
  FROM evm_events
 WHERE chain_id = {loan}.chain_id AND contract_address = {loan}.contract_address
   AND loan_id = {loan}.onchain_id AND status <> %s
UNION ALL
SELECT 1, created_at, id, kind, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, payload
  FROM {facts} WHERE loan_ref = {loan}.id::text
UNION ALL
SELECT 2, at, id, cause, cause_ref, action, field, from_value, to_value, NULL, NULL, applied,
       details
  FROM {audit} WHERE loan_id = {loan}.id
UNION ALL
SELECT 3, created_at, id, type, status, current_step, NULL, NULL, NULL, retry_count, NULL, NULL,
       steps_completed
  FROM {workflows} WHERE loan_id = {loan}.id AND %s
UNION ALL
SELECT 4, NULL, id, NULL, NULL, NULL, NULL, NULL, NULL, block_number, NULL, NULL, NULL
  FROM {evm_cursor} WHERE chain_id = {loan}.chain_id AND %s
UNION ALL
SELECT 5, NULL, id, NULL, NULL, NULL, NULL, NULL, NULL, height, NULL, NULL, NULL
  FROM {btc_cursor} WHERE network = %s AND %s
) part
"""
EVM, BITCOIN, BACKEND, WORKFLOW, EVM_CURSOR, BTC_CURSOR = range(6)
# A loan read `with_detail_story` carries its story as this attribute.
_DETAIL_STORY = "detail_story"


def _story(*, for_detail: bool) -> RawSQL:
    from bitcoin.models import BitcoinFact, ScanCursor
    from chainwatch.models import ChainCursor, DeliveryStatus

    sql = _STORY_SQL.format(
        loan=Loan._meta.db_table,
        facts=BitcoinFact._meta.db_table,
        audit=AuditEntry._meta.db_table,
        workflows=LoanWorkflow._meta.db_table,
        evm_cursor=ChainCursor._meta.db_table,
        btc_cursor=ScanCursor._meta.db_table,
    )
    params = (
        DeliveryStatus.ORPHANED.value,
        for_detail,
        for_detail,
        settings.BITCOIN_NETWORK,
        for_detail,
    )
    # Table names from the models, every value a parameter.
    return RawSQL(sql, params, output_field=JSONField())  # noqa: S611


def _one_statement() -> bool:
    """The story's one statement is PostgreSQL's (jsonb); the embedded SQLite of `make demo`
    reads the same rows one source at a time (`_story_rows_by_source`)."""
    return connection.vendor == "postgresql"


def with_detail_story(loans: QuerySet[Loan]) -> QuerySet[Loan]:
    """The loans with their stories for the detail (`loan_story`) in the same query."""
    if not _one_statement():
        return loans
    return loans.annotate(**{_DETAIL_STORY: _story(for_detail=True)})


def _story_rows(loan: Loan, *, for_detail: bool) -> list[list[Any]]:
    """The story's rows (part, at, id, t1..t6, n1, n2, flag, doc), `at` as a datetime."""
    rows = getattr(loan, _DETAIL_STORY, None) if for_detail else None
    if rows is None and not _one_statement():
        return _story_rows_by_source(loan, for_detail=for_detail)
    if rows is None:
        rows = (
            Loan.objects.filter(pk=loan.pk)
            .annotate(story=_story(for_detail=for_detail))
            .values_list("story", flat=True)
            .get()
        )
    return [[part, datetime.fromisoformat(at) if at else None, *row] for part, at, *row in rows]


def _story_rows_by_source(loan: Loan, *, for_detail: bool) -> list[list[Any]]:
    """The rows of `_STORY_SQL`, one query per source (the same columns, in the same places)."""
    from bitcoin.models import BitcoinFact, ScanCursor
    from chainwatch.models import ChainCursor, DeliveryStatus, EvmEvent

    events = EvmEvent.objects.filter(
        chain_id=loan.chain_id, contract_address=loan.contract_address, loan_id=loan.onchain_id
    ).exclude(status=DeliveryStatus.ORPHANED)
    rows: list[list[Any]] = [
        [EVM, at, pk, name, tx, status, None, None, None, log_index, block, None, None]
        for at, pk, name, tx, status, log_index, block in events.values_list(
            "created_at", "id", "event_name", "transaction_hash", "status", "log_index",
            "block_number",
        )
    ]  # fmt: skip
    facts = BitcoinFact.objects.filter(loan_ref=str(loan.pk))
    rows += [
        [BITCOIN, at, pk, kind, *[None] * 8, payload]
        for at, pk, kind, payload in facts.values_list("created_at", "id", "kind", "payload")
    ]
    rows += [
        [BACKEND, *columns[:8], None, None, *columns[8:]]
        for columns in AuditEntry.objects.filter(loan_id=loan.pk).values_list(
            "at", "id", "cause", "cause_ref", "action", "field", "from_value", "to_value",
            "applied", "details",
        )
    ]  # fmt: skip
    if not for_detail:
        return rows
    rows += [
        [WORKFLOW, at, pk, type_, status, step, None, None, None, retries, None, None, steps]
        for at, pk, type_, status, step, retries, steps in LoanWorkflow.objects.filter(
            loan_id=loan.pk
        ).values_list(
            "created_at", "id", "type", "status", "current_step", "retry_count", "steps_completed"
        )
    ]
    cursors = (
        (EVM_CURSOR, ChainCursor.objects.filter(chain_id=loan.chain_id), "block_number"),
        (BTC_CURSOR, ScanCursor.objects.filter(network=settings.BITCOIN_NETWORK), "height"),
    )
    for part, cursor, number in cursors:
        rows += [
            [part, None, pk, *[None] * 6, n, None, None, None]
            for pk, n in cursor.values_list("id", number)
        ]
    return rows


@dataclass(frozen=True)
class LoanStory:
    """A loan's timeline (as `loan_timeline`) and its audit trail in order (at, id); for the
    detail also its workflows (oldest first) and the known heads (as `known_heads`)."""

    timeline: list[TimelineEntry]
    audit_trail: list[AuditEntry]
    workflows: list[LoanWorkflow]
    heads: tuple[int | None, int | None]


def loan_story(*, loan: Loan, operator_names: bool = True, for_detail: bool = False) -> LoanStory:
    """Without `operator_names` (a borrower asking) an operator's action names "operator", not
    who. Without `for_detail` no workflow and no head is read. A loan read `with_detail_story`
    has its detail's story already; otherwise it is read here, in one statement."""
    by_source: dict[int, list[list[Any]]] = {part: [] for part in range(6)}
    for part, *row in _story_rows(loan, for_detail=for_detail):
        by_source[part].append(row)
    # In the order each is kept: the trail by (at, id), workflows oldest first.
    trail = [_audit_entry(loan.pk, *row) for row in sorted(by_source[BACKEND])]
    return LoanStory(
        timeline=_timeline(by_source[EVM], by_source[BITCOIN], trail, operator_names),
        audit_trail=trail,
        workflows=[_workflow(loan.pk, *row) for row in sorted(by_source[WORKFLOW])],
        heads=_heads(_cursor(by_source[EVM_CURSOR]), _cursor(by_source[BTC_CURSOR])),
    )


def _cursor(rows: list[list[Any]]) -> int | None:
    """A cursor's number; each is unique per chain / network (at most one row)."""
    return int(rows[0][8]) if rows else None


def _audit_entry(loan_id: int, at: datetime, pk: int, *columns: Any) -> AuditEntry:
    cause, cause_ref, action, field, from_value, to_value, _, _, applied, details = columns
    return AuditEntry(
        id=pk,
        loan_id=loan_id,
        at=at,
        cause=cause,
        cause_ref=cause_ref,
        action=action,
        field=field,
        from_value=from_value,
        to_value=to_value,
        applied=applied,
        details=details,
    )


def _workflow(loan_id: int, at: datetime, pk: int, *columns: Any) -> LoanWorkflow:
    type_, status, step, _, _, _, retries, _, _, steps = columns
    return LoanWorkflow(
        id=pk,
        loan_id=loan_id,
        created_at=at,
        type=type_,
        status=status,
        current_step=step,
        retry_count=retries,
        steps_completed=steps,
    )


def _timeline(
    events: list[list[Any]],
    facts: list[list[Any]],
    trail: list[AuditEntry],
    operator_names: bool,
) -> list[TimelineEntry]:
    # Just the columns shown (an event's args and a fact's delivery state are not).
    entries = [
        TimelineEntry(at, "evm", name, f"{tx}:{log_index}", block, {"status": status})
        for at, _, name, tx, status, _, _, _, log_index, block, _, _ in events
    ]
    for at, _, kind, *_, payload in facts:
        entries.append(
            TimelineEntry(
                at,
                "bitcoin",
                kind,
                str(payload.get("spending_txid") or payload.get("txid") or ""),
                payload.get("block_height"),
                {
                    k: payload[k]
                    for k in ("confirmations", "path", "purpose", "value_sats")
                    if payload.get(k) is not None
                },
            )
        )
    entries += [
        TimelineEntry(
            a.at,
            "backend",
            f"{a.field} {a.from_value} -> {a.to_value}" if a.field else a.action,
            a.cause_ref if operator_names or a.cause != AuditCause.OPERATOR else "operator",
            None,
            {"cause": a.cause, "applied": a.applied, **a.details},
        )
        for a in trail
    ]
    return sorted(entries, key=lambda entry: entry.at)


def loan_timeline(*, loan: Loan, operator_names: bool = True) -> list[TimelineEntry]:
    """One story across both chains: confirmed EVM events, Bitcoin observations and the
    backend's own transitions and actions, in the order they happened (`loan_story`)."""
    return loan_story(loan=loan, operator_names=operator_names).timeline


@dataclass(frozen=True)
class NextAction:
    party: str  # "borrower", "lender" or "nobody"
    action: str


# A borrower's step whose deadline has passed becomes the lender's (the watchdog takes it).
_AFTER_DEADLINE = {
    LoanStatus.OFFERED: ("offer_expiry", NextAction("lender", "withdraw the expired offer")),
    LoanStatus.ACTIVE: (
        "repayment_due",
        NextAction("lender", "mark the loan defaulted (the due block has passed)"),
    ),
}


def _deadlines_now(loan: Loan) -> list[Deadline]:
    """By the newest blocks the watchers have seen (no node is asked); none before any."""
    evm_head, btc_head = known_heads(chain_id=loan.chain_id)
    if evm_head is None:
        return []
    return loan_deadlines(loan, evm_head=evm_head, btc_head=btc_head)


@dataclass(frozen=True)
class LoanDetail:
    """The loan detail's read model: the loan and what is derived for it now."""

    loan: Loan
    heads: dict[str, int | None]
    deadlines: list[Deadline]
    next_action: NextAction
    timeline: list[TimelineEntry]
    workflows: list[LoanWorkflow]
    accounting: LoanAccounting


def loan_detail_for(*, user: Any, pk: int) -> LoanDetail | None:
    """The detail of loan `pk` if `user` may see it (`loans_visible_to`), else None. A
    borrower's timeline names no operator."""
    from btcloan.api.selectors import is_operator

    loan = with_detail_story(loans_visible_to(user)).filter(pk=pk).first()
    if loan is None:
        return None
    return loan_detail(loan=loan, operator_names=is_operator(user))


def loan_detail(*, loan: Loan, operator_names: bool = True) -> LoanDetail:
    """Everything the detail page shows, from what the watchers have seen (no node asked);
    `operator_names` as in `loan_timeline`. Everything beyond the loan is read in one statement
    (`loan_story`) and shared by the parts that need it (the heads, the audit trail)."""
    story = loan_story(loan=loan, operator_names=operator_names, for_detail=True)
    evm_head, btc_head = story.heads
    deadlines = (
        loan_deadlines(loan, evm_head=evm_head, btc_head=btc_head) if evm_head is not None else []
    )
    return LoanDetail(
        loan=loan,
        heads={"evm": evm_head, "bitcoin": btc_head},
        deadlines=deadlines,
        next_action=loan_next_action(loan=loan, deadlines=deadlines, audit_trail=story.audit_trail),
        timeline=story.timeline,
        workflows=story.workflows,
        accounting=loan_accounting(loan, audit_trail=story.audit_trail),
    )


def _deposit_shortfall(loan: Loan, audit_trail: list[AuditEntry] | None) -> NextAction | None:
    """The escrow deposit cannot pay TX_1 at the relay floor yet: exactly what is missing."""
    if loan.collateral_lock_feerate is not None:
        return None
    if audit_trail is None:
        short = (
            loan.audit_entries.filter(action=AuditAction.ESCROW_DEPOSIT_SHORT)
            .order_by("-id")
            .values_list("details", flat=True)
            .first()
        )
    else:
        newest = max(
            (a for a in audit_trail if a.action == AuditAction.ESCROW_DEPOSIT_SHORT),
            key=lambda a: a.pk,
            default=None,
        )
        short = newest.details if newest is not None else None
    if short is None:
        return None
    return NextAction(
        "borrower",
        f"the escrow deposit of {short['deposit_sats']} sats is {short['missing_sats']} sats "
        f"short of paying TX_1 at the relay floor ({short['feerate_floor_sat_vb']} sat/vB): "
        "no offer can be made from it; take it back after t0 (GET exit-tx) and request "
        "again with the quoted amount",
    )


def loan_next_action(
    *,
    loan: Loan,
    deadlines: list[Deadline] | None = None,
    audit_trail: list[AuditEntry] | None = None,
) -> NextAction:
    """What the loan waits for, and who must do it. `deadlines` (by the known heads) and
    `audit_trail`: the loan's, when the caller has them already."""
    s, b = LoanStatus, BitcoinStage
    after = _AFTER_DEADLINE.get(LoanStatus(loan.status))
    if after is not None:
        if deadlines is None:
            deadlines = _deadlines_now(loan)
        passed = next((d for d in deadlines if d.kind == after[0] and d.passed), None)
        if passed is not None:
            # The seed's remedies open a block after its deadline: nobody can act in between.
            if not passed.remedy_open:
                return NextAction(
                    after[1].party, f"{after[1].action} from block {passed.remedy_block}"
                )
            return after[1]
    if loan.status == s.REQUESTED:
        if b(loan.bitcoin_stage) == b.AWAITING_ESCROW:
            return NextAction("borrower", "fund the escrow outpoint named in the request")
        short = _deposit_shortfall(loan, audit_trail)
        if short is not None:
            return short
        if loan.collateral_lock_feerate is not None and not loan.borrower_signatures.exists():
            return NextAction("borrower", "pre-sign TX_1 (GET collateral-tx, POST signature)")
        return NextAction("lender", "offer once the escrow is confirmed and TX_1 pre-signed")
    return {
        s.OFFERED: NextAction("borrower", "accept the offer before it expires"),
        s.ACTIVE: NextAction("borrower", "repay before the due block"),
        s.REPAYMENT_IN_PROGRESS: NextAction("lender", "accept the repayment"),
        s.REPAID: NextAction("borrower", "release the collateral (GET release-tx)"),
        s.REFUNDED_TO_LENDER: NextAction("borrower", "take the escrow back (GET exit-tx)"),
        s.DEFAULTED: NextAction("lender", "sweep the collateral once t1 matures"),
        s.REFUNDED_TO_BORROWER: NextAction("lender", "sweep the collateral once t1 matures"),
    }.get(LoanStatus(loan.status), NextAction("nobody", "nothing: the loan is settled"))
