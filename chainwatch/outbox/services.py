"""The lender's EVM transaction outbox.

A row per intended call (unique per loan and action). `evm_transaction_send` moves a row as far
as it can: queued → signed (nonce, gas and price taken under the account's row lock; the
signature is made after that transaction commits, so a slow or remote signer never holds a
database transaction open) → sent. A signed transaction is never abandoned: its exact bytes
(signed again, deterministically) are resent until the chain has its nonce, so a crash at any
point leaves neither a gap nor a reuse.

Every step that would put the call on the wire asks the action's guard first
(`chainwatch.outbox.hooks`): before signing, before a resend, a fee bump or a retry, and while
the transaction waits in the mempool. A refusal sends nothing; a refused row that already has a
nonce is cancelled by a 0-value self-transfer with the same nonce at a higher gas price.

`evm_transaction_track` follows a sent row to its receipt at EVM_CONFIRMATIONS (looking for
every transaction signed for its nonce: the call, its fee bumps, a cancellation), resends it
when the node dropped it, replaces it at a higher gas price (legacy `gasPrice`: Rootstock has
no EIP-1559) when it waits too long, within EVM_GAS_PRICE_CAP_WEI, and records a revert with
its reason. A reverted or lost call whose guard still holds is retried with backoff, up to
EVM_OUTBOX_MAX_RETRIES. A final row whose block a reorg deeper than the confirmations took
away is tracked again (its nonce would otherwise hold back every later call). No RPC runs
inside `atomic()`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from functools import cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from btcloan.alerts.services import alert_raise
from btcloan.models import AlertSeverity
from chainwatch.client import NODE_ERRORS, NodeUnavailable, RPCError, get_web3, rpc, rpc_batch
from chainwatch.indexer.config import watch_config
from chainwatch.indexer.decoding import LOAN_CONTRACT
from chainwatch.models import (
    AttemptKind,
    EvmAccountNonce,
    EvmTransaction,
    EvmTransactionAttempt,
    OutboxStatus,
)
from chainwatch.outbox.calls import (
    CallError,
    carries_secret,
    encode_call,
    placeholder_secrets,
    resolve_secrets,
    revert_reason,
)
from chainwatch.outbox.hooks import Moment, broadcast_heard, guard_refusal, has_guard

logger = logging.getLogger(__name__)

GAS_MARGIN = Decimal("1.25")
CANCEL_GAS = 21_000
OPEN = (
    OutboxStatus.QUEUED,
    OutboxStatus.SIGNED,
    OutboxStatus.SENT,
    OutboxStatus.MINED,
    OutboxStatus.CANCELLING,
)
_RETRYABLE = (OutboxStatus.REVERTED, OutboxStatus.FAILED)
_TRACKED = (OutboxStatus.SENT, OutboxStatus.MINED, OutboxStatus.CANCELLING)
_ALREADY_THERE = ("already known", "known transaction", "already imported", "nonce too low")


class OutboxConflict(ValueError):
    """The loan already has this action with other arguments."""


# Test hooks: raise here to simulate a crash of the sender between its steps.
def _after_signed(tx: EvmTransaction) -> None:
    """Called after the signed row committed, before it is sent."""


def _after_sent(tx: EvmTransaction) -> None:
    """Called after the node accepted the transaction, before the row says so."""


@cache
def _lender(key: str) -> LocalAccount:
    account: LocalAccount = Account.from_key(key)
    return account


def lender_account() -> LocalAccount:
    if not settings.LENDER_EVM_PRIVATE_KEY:
        raise ImproperlyConfigured("LENDER_EVM_PRIVATE_KEY is not set")
    try:
        return _lender(settings.LENDER_EVM_PRIVATE_KEY)
    except (ValueError, TypeError):
        raise ImproperlyConfigured("LENDER_EVM_PRIVATE_KEY is not a valid key") from None


def lender_key_problems() -> list[str]:
    """Start-up check (btcloan.startup): every lender call signs with this key."""
    try:
        lender_account()
    except ImproperlyConfigured as exc:
        return [str(exc)]
    return []


def _alert(
    tx: EvmTransaction, what: str, reason: str, severity: str = AlertSeverity.CRITICAL
) -> None:
    alert_raise(
        key=f"chainwatch:outbox:{tx.pk}",
        severity=severity,
        title=f"lender call {tx.function} for {tx.loan_ref}/{tx.action} {what}",
        details={"reason": reason, "tx_hash": tx.tx_hash, "nonce": tx.nonce},
        loan_ref=tx.loan_ref,
    )


def _call(w3: Web3, method: str, params: list[Any]) -> Any:
    try:
        return rpc(w3, method, params)
    except NODE_ERRORS as exc:
        raise NodeUnavailable(f"{method}: {type(exc).__name__}") from exc


def evm_transaction_enqueue(
    *,
    loan_ref: str,
    action: str,
    function: str,
    args: list[Any],
    value_wei: int = 0,
    contract_name: str = LOAN_CONTRACT,
    gas_limit: int | None = None,
) -> EvmTransaction:
    """The row for (loan, action), created once; the same call again returns it (a row its
    guard refused or cancelled is queued afresh: the caller judged it due again). Safe inside
    the caller's transaction (no RPC); send it with `send_evm_transaction.delay_on_commit`."""
    tx, _created = evm_transaction_request(
        loan_ref=loan_ref,
        action=action,
        function=function,
        args=args,
        value_wei=value_wei,
        contract_name=contract_name,
        gas_limit=gas_limit,
    )
    return tx


def evm_transaction_request(
    *,
    loan_ref: str,
    action: str,
    function: str,
    args: list[Any],
    value_wei: int = 0,
    contract_name: str = LOAN_CONTRACT,
    gas_limit: int | None = None,
) -> tuple[EvmTransaction, bool]:
    """`evm_transaction_enqueue`, and whether this call created the row (the row's unique
    (chain, loan, action) decides: a caller need not look for it first)."""
    cfg = watch_config()
    if contract_name not in cfg.contracts:
        raise CallError(f"no address configured for {contract_name}")
    encode_call(contract_name, function, placeholder_secrets(args))  # bad input fails here
    if value_wei < 0:
        raise CallError("value_wei must not be negative")
    tx, created = EvmTransaction.objects.get_or_create(
        chain_id=cfg.chain_id,
        loan_ref=str(loan_ref),
        action=action,
        defaults={
            "contract_name": contract_name,
            "to_address": cfg.contracts[contract_name],
            "function": function,
            "args": args,
            "value_wei": Decimal(value_wei),
            "gas_limit": gas_limit,
        },
    )
    if not created and (tx.function, tx.args, int(tx.value_wei)) != (function, args, value_wei):
        raise OutboxConflict(
            f"loan {loan_ref} already has {action!r} as {tx.function}{tuple(tx.args)}"
        )
    if tx.status in (OutboxStatus.REFUSED, OutboxStatus.CANCELLED):
        _requeue(
            tx, from_statuses=(OutboxStatus.REFUSED, OutboxStatus.CANCELLED), note="asked again"
        )
        tx.refresh_from_db()
    return tx, created


def _requeue(tx: EvmTransaction, *, from_statuses: tuple[str, ...], note: str) -> bool:
    """Back to queued as a fresh call: a new nonce, a new estimate, a new guard check."""
    return bool(
        EvmTransaction.objects.filter(pk=tx.pk, status__in=from_statuses).update(
            status=OutboxStatus.QUEUED,
            nonce=None,
            tx_hash="",
            gas_price_wei=None,
            gas_limit=None if tx.gas_limit is None or tx.nonce is not None else tx.gas_limit,
            block_number=None,
            block_hash="",
            gas_used=None,
            sent_at=None,
            confirmed_at=None,
            revert_reason="",
            next_retry_at=None,
            last_error=note[:2000],
            updated_at=timezone.now(),
        )
    )


# --- signing --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _PreSignReads:
    gas_limit: int
    gas_price: int
    nonce_floor: int  # the node's pending count: a floor under the account's next nonce


def _pre_sign_reads(w3: Web3, tx: EvmTransaction, sender: str) -> _PreSignReads | None:
    """What signing needs from the node, in one JSON-RPC batch (was a round trip each): the
    gas limit, the gas price and the nonce floor. None when the estimate reverts (recorded).

    The gas limit is fixed, or estimated at EVM_ESTIMATE_BLOCK, `pending` by default (a
    deadline action due in the next block passes there, not at `latest`). A call carrying a
    secret is never estimated: the node would see the secret before it is public. The guard
    is asked after these reads, so it is still the last look at the chains before the nonce
    and the signature; the floor only catches transactions this outbox did not send."""
    fixed: int | None = None
    if tx.gas_limit is not None:
        fixed = int(tx.gas_limit)
    elif carries_secret(tx.args):
        fixed = int(settings.EVM_SECRET_CALL_GAS_LIMIT)
    calls: list[tuple[str, list[Any]]] = [
        ("eth_gasPrice", []),
        ("eth_getTransactionCount", [sender, "pending"]),
    ]
    if fixed is None:
        data = encode_call(tx.contract_name, tx.function, tx.args)
        call = {"from": sender, "to": tx.to_address, "data": data, "value": hex(int(tx.value_wei))}
        calls.append(("eth_estimateGas", [call, settings.EVM_ESTIMATE_BLOCK]))
    price, floor, *estimate = rpc_batch(w3, calls)
    for answer in (price, floor):
        if isinstance(answer, RPCError):
            raise answer
    if fixed is None:
        (answer,) = estimate
        if isinstance(answer, RPCError):
            error = answer.error if isinstance(answer.error, dict) else {}
            _record_revert(
                tx, revert_reason(error, str(error.get("message", ""))), in_estimation=True
            )
            return None
        fixed = int(Decimal(int(answer, 16)) * GAS_MARGIN)
    return _PreSignReads(gas_limit=fixed, gas_price=int(price, 16), nonce_floor=int(floor, 16))


def _record_revert(tx: EvmTransaction, reason: str, *, in_estimation: bool) -> None:
    """REVERTED with its reason; a guarded action is retried later by policy."""
    now = timezone.now()
    retry_at = _next_retry(tx, now)
    update: dict[str, Any] = {
        "status": OutboxStatus.REVERTED,
        "revert_reason": reason,
        "next_retry_at": retry_at,
        "updated_at": now,
    }
    if in_estimation:
        update["last_error"] = "reverted in gas estimation; not sent"
        moved = EvmTransaction.objects.filter(pk=tx.pk, status=OutboxStatus.QUEUED).update(**update)
    else:
        update["confirmed_at"] = now
        moved = EvmTransaction.objects.filter(pk=tx.pk, status=tx.status).update(**update)
    if not moved:
        return
    where = "in gas estimation; not sent" if in_estimation else "on chain"
    logger.error("ALERT chainwatch outbox: %s reverted %s: %s", tx, where, reason)
    if retry_at is not None:
        _alert(tx, f"reverted {where}; retried", reason, AlertSeverity.WARNING)
    else:
        _alert(tx, f"reverted {where}", reason)


def _next_retry(tx: EvmTransaction, now: Any) -> Any:
    """When a reverted or lost call is tried again, or None: unguarded, or out of tries."""
    if not has_guard(tx.action) or tx.retries >= int(settings.EVM_OUTBOX_MAX_RETRIES):
        return None
    base = float(settings.EVM_OUTBOX_RETRY_BASE_SECONDS)
    delay = min(base * 2**tx.retries, float(settings.EVM_OUTBOX_RETRY_MAX_SECONDS))
    return now + timedelta(seconds=delay)


def _take_nonce(tx_id: int, sender: str, gas: int, gas_price: int, floor: int) -> bool:
    """Take the next nonce under the account's row lock; nonce, gas and price are stored in the
    same transaction. No signature here. False when another sender got there first."""
    chain_id = int(settings.EVM_CHAIN_ID)
    EvmAccountNonce.objects.get_or_create(
        chain_id=chain_id, address=sender, defaults={"next_nonce": floor}
    )
    with transaction.atomic():
        tx = EvmTransaction.objects.select_for_update().get(pk=tx_id)
        if tx.status != OutboxStatus.QUEUED:
            return False
        account = EvmAccountNonce.objects.select_for_update().get(chain_id=chain_id, address=sender)
        # Someone else's use of the key moves the floor up; we never go down.
        nonce = max(account.next_nonce, floor)
        account.next_nonce = nonce + 1
        account.save(update_fields=["next_nonce", "updated_at"])
        EvmTransaction.objects.filter(pk=tx_id).update(
            from_address=sender,
            nonce=nonce,
            gas_limit=gas,
            gas_price_wei=Decimal(gas_price),
            tx_hash="",
            status=OutboxStatus.SIGNED,
            updated_at=timezone.now(),
        )
    return True


def _fields(tx: EvmTransaction, *, gas_price: int | None = None, cancel: bool = False) -> dict:
    """The transaction's fields: the row's call, or the 0-value self-transfer that cancels it."""
    price = int(tx.gas_price_wei or 0) if gas_price is None else gas_price
    common = {"chainId": int(tx.chain_id), "nonce": tx.nonce, "gasPrice": price}
    if cancel:
        return {**common, "to": tx.from_address, "value": 0, "data": "0x", "gas": CANCEL_GAS}
    # The secret (P_L) is resolved here, in memory, only to be signed.
    data = encode_call(tx.contract_name, tx.function, resolve_secrets(tx.loan_ref, tx.args))
    return {**common, "to": tx.to_address, "value": int(tx.value_wei), "data": data,
            "gas": tx.gas_limit}  # fmt: skip


def _sign(fields: dict) -> tuple[str, str]:
    """Signed bytes and hash. Deterministic (RFC 6979): signing the stored fields again gives
    the same bytes, so the signed transaction (and any secret in it) is never stored."""
    signed = lender_account().sign_transaction(fields)
    return "0x" + bytes(signed.raw_transaction).hex(), "0x" + bytes(signed.hash).hex()


def _seal(tx: EvmTransaction) -> EvmTransaction:
    """The hash of a row signed under its nonce, recorded (once) after the nonce committed."""
    _raw, tx_hash = _sign(_fields(tx))
    with transaction.atomic():
        if EvmTransaction.objects.filter(pk=tx.pk, tx_hash="").update(tx_hash=tx_hash):
            _record_attempt(tx, AttemptKind.SIGNED, int(tx.gas_price_wei or 0), tx_hash)
    return EvmTransaction.objects.get(pk=tx.pk)


def _record_attempt(
    tx: EvmTransaction, kind: str, gas_price: int, tx_hash: str, reason: str = ""
) -> None:
    EvmTransactionAttempt.objects.get_or_create(
        tx_hash=tx_hash,
        defaults={
            "transaction": tx,
            "kind": kind,
            "nonce": int(tx.nonce or 0),
            "gas_price_wei": Decimal(gas_price),
            "reason": reason[:300],
        },
    )


def _signed_bytes(tx: EvmTransaction) -> str:
    raw, tx_hash = _sign(_fields(tx, cancel=tx.status == OutboxStatus.CANCELLING))
    if tx_hash != tx.tx_hash:  # another key, or a secret that changed: never a second tx
        raise ImproperlyConfigured(
            f"{tx} signs to {tx_hash}, not its recorded {tx.tx_hash}: lender key changed?"
        )
    return raw


def _send_raw(w3: Web3, raw: str) -> str | None:
    """None when the node has it (now or already), else the node's refusal."""
    try:
        _call(w3, "eth_sendRawTransaction", [raw])
    except RPCError as exc:
        message = str(exc)
        if not any(words in message.lower() for words in _ALREADY_THERE):
            return message
    return None


def _broadcast(w3: Web3, tx: EvmTransaction) -> bool:
    """Send the row's signed transaction; True when the node has it (now or already)."""
    refusal = _send_raw(w3, _signed_bytes(tx))
    if refusal is not None:
        EvmTransaction.objects.filter(pk=tx.pk).update(
            send_attempts=F("send_attempts") + 1,
            last_error=refusal[:2000],
            updated_at=timezone.now(),
        )
        logger.error(
            "ALERT chainwatch outbox: %s (nonce %s) not accepted: %s", tx, tx.nonce, refusal
        )
        _alert(tx, "not accepted by the node; retried", refusal, AlertSeverity.WARNING)
        return False
    broadcast_heard(tx)
    return True


def _refuse(tx: EvmTransaction, reason: str) -> None:
    """The guard said no before a nonce was taken: nothing was or will be sent."""
    moved = EvmTransaction.objects.filter(pk=tx.pk, status__in=(OutboxStatus.QUEUED, *_RETRYABLE))
    if moved.update(
        status=OutboxStatus.REFUSED,
        last_error=f"refused by its guard: {reason}"[:2000],
        next_retry_at=None,
        updated_at=timezone.now(),
    ):
        logger.warning("chainwatch outbox: %s refused by its guard: %s", tx, reason)


def _sign_queued(w3: Web3, tx: EvmTransaction) -> EvmTransaction | None:
    """Read gas and price (one batch), ask the guard, take a nonce, sign: the guard's look at
    the chains is the last thing before the nonce and the signature. None when nothing may be
    signed."""
    sender = lender_account().address
    reads = _pre_sign_reads(w3, tx, sender)
    if reads is None:
        return None
    refusal = guard_refusal(tx, Moment.SIGN)
    if refusal is not None:
        _refuse(tx, refusal)
        return None
    if not _take_nonce(tx.pk, sender, reads.gas_limit, reads.gas_price, reads.nonce_floor):
        return None
    return _seal(EvmTransaction.objects.get(pk=tx.pk))


def evm_transaction_send(*, tx_id: int) -> EvmTransaction:
    """Drive one row from queued or signed to sent. Safe to call twice, from many workers."""
    tx = EvmTransaction.objects.get(pk=tx_id)
    w3 = get_web3()
    if tx.status == OutboxStatus.QUEUED:
        signed = _sign_queued(w3, tx)  # its guard was asked just before the nonce
        if signed is None:
            return EvmTransaction.objects.get(pk=tx_id)
        if signed.status == OutboxStatus.SIGNED:
            _after_signed(signed)
        tx = signed
    elif tx.status == OutboxStatus.SIGNED:  # signed earlier (a crash, an outage): ask again
        if not tx.tx_hash:  # the signer died after the nonce was taken
            tx = _seal(tx)
        refusal = guard_refusal(tx, Moment.RESEND if tx.send_attempts else Moment.SIGN)
        if refusal is not None:  # perhaps sent already: the nonce must be filled
            _cancel(w3, tx, refusal)
            return EvmTransaction.objects.get(pk=tx_id)
    if tx.status != OutboxStatus.SIGNED:
        return tx
    if _broadcast(w3, tx):
        _after_sent(tx)
        EvmTransaction.objects.filter(pk=tx.pk, status=OutboxStatus.SIGNED).update(
            status=OutboxStatus.SENT,
            sent_at=timezone.now(),
            send_attempts=F("send_attempts") + 1,
            last_error="",
            updated_at=timezone.now(),
        )
    return EvmTransaction.objects.get(pk=tx_id)


# --- replacements: fee bumps and cancellations ----------------------------------------------
def _replacement_price(w3: Web3, tx: EvmTransaction) -> int | None:
    """A gas price the node takes as a replacement (EVM_FEE_BUMP_PERCENT above the last one,
    at least the node's current price), capped at EVM_GAS_PRICE_CAP_WEI; None at the cap."""
    last = int(tx.gas_price_wei or 0)
    cap = int(settings.EVM_GAS_PRICE_CAP_WEI)
    if last >= cap:
        return None
    bumped = last * (100 + int(settings.EVM_FEE_BUMP_PERCENT)) // 100 + 1
    current = int(_call(w3, "eth_gasPrice", []), 16)
    return min(max(bumped, current), cap)


def _replace(w3: Web3, tx: EvmTransaction, *, kind: str, reason: str) -> bool:
    """Sign (outside any transaction) and send a same-nonce replacement: the call at a higher
    price, or the cancelling self-transfer. The attempt is recorded before it is sent, so the
    tracker finds whichever of the nonce's transactions is mined. True when the node took it."""
    price = _replacement_price(w3, tx)
    if price is None:
        _alert(tx, "is stuck at the gas price cap", f"{tx.gas_price_wei} wei/gas")
        return False
    cancel = kind == AttemptKind.CANCEL
    raw, tx_hash = _sign(_fields(tx, gas_price=price, cancel=cancel))
    _record_attempt(tx, kind, price, tx_hash, reason)
    try:
        _call(w3, "eth_sendRawTransaction", [raw])
    except RPCError as exc:
        # "nonce too low": one of the nonce's transactions was mined meanwhile; the tracker
        # finds which. Anything else (underpriced, ...): the current one stays.
        EvmTransaction.objects.filter(pk=tx.pk).update(last_error=str(exc)[:2000])
        logger.warning("chainwatch outbox: %s replacement not taken: %s", tx, exc)
        return False
    status = OutboxStatus.CANCELLING if cancel else tx.status
    updated = EvmTransaction.objects.filter(pk=tx.pk, tx_hash=tx.tx_hash).update(
        status=status,
        tx_hash=tx_hash,
        gas_price_wei=Decimal(price),
        send_attempts=F("send_attempts") + 1,
        sent_at=timezone.now(),
        last_error=reason[:2000],
        updated_at=timezone.now(),
    )
    if updated and not cancel:
        broadcast_heard(EvmTransaction.objects.get(pk=tx.pk))
    return bool(updated)


def _cancel(w3: Web3, tx: EvmTransaction, reason: str) -> None:
    """The guard refused a call that holds a nonce: take the nonce with a 0-value transfer."""
    if _replace(w3, tx, kind=AttemptKind.CANCEL, reason=f"cancelled: {reason}"):
        logger.error("ALERT chainwatch outbox: %s cancelled: %s", tx, reason)
        _alert(tx, "cancelled by a same-nonce replacement", reason)


def _bump_due(tx: EvmTransaction) -> bool:
    last = (
        tx.attempts.filter(nonce=int(tx.nonce or 0))
        .order_by("-id")
        .values_list("created_at", flat=True)
    )
    since = last.first() or tx.sent_at or tx.updated_at
    wait = timedelta(seconds=float(settings.EVM_FEE_BUMP_AFTER_SECONDS))
    return timezone.now() - since >= wait


def _while_pending(w3: Web3, tx: EvmTransaction) -> None:
    """A sent transaction waiting in the mempool: cancelled if its guard no longer holds,
    replaced at a higher gas price once it has waited EVM_FEE_BUMP_AFTER_SECONDS."""
    if tx.status == OutboxStatus.SENT:
        refusal = guard_refusal(tx, Moment.PENDING)
        if refusal is not None:
            _cancel(w3, tx, refusal)
            return
    if not _bump_due(tx):
        return
    if tx.status == OutboxStatus.SENT:
        refusal = guard_refusal(tx, Moment.BUMP)
        if refusal is not None:
            _cancel(w3, tx, refusal)
            return
    kind = AttemptKind.CANCEL if tx.status == OutboxStatus.CANCELLING else AttemptKind.BUMPED
    if _replace(w3, tx, kind=kind, reason="stuck in the mempool: gas price raised"):
        logger.warning("chainwatch outbox: %s replaced at a higher gas price", tx)


# --- tracking ----------------------------------------------------------------------------------
def _nonce_hashes(tx: EvmTransaction) -> list[str]:
    """Every transaction signed for the row's current nonce, the current one first."""
    others = (
        tx.attempts.filter(nonce=int(tx.nonce or 0)).exclude(tx_hash=tx.tx_hash).order_by("-id")
        .values_list("tx_hash", flat=True)
    )  # fmt: skip
    return [tx.tx_hash, *others]


@dataclass(frozen=True)
class ChainView:
    """The receipts of many transactions and the head, read together in one JSON-RPC batch:
    the pump's look at the chain for every row it tracks (one round trip, not one per hash);
    then, in a second batch, whether the node still has each hash that had no receipt."""

    receipts: dict[str, dict[str, Any] | None]
    head: int
    # Each row's (status, tx_hash) when it was read: a row that moved since is tracked live.
    rows: dict[int, tuple[str, str]]
    # eth_getTransactionByHash answered (the node has it) for each hash without a receipt.
    known: dict[str, bool] = field(default_factory=dict)
    # Each row's hashes signed for its nonce, and when its last attempt was signed.
    nonce_hashes: dict[int, list[str]] = field(default_factory=dict)
    last_attempt_at: dict[int, Any] = field(default_factory=dict)

    def holds(self, tx: EvmTransaction) -> bool:
        return self.rows.get(tx.pk) == (tx.status, tx.tx_hash)


def _nothing_to_do(tx: EvmTransaction, view: ChainView | None, now: Any) -> bool:
    """Whether the pump's own read of a row and its view of the chain leave this pass nothing
    to do for it: mined at the same block and still short of its confirmations, or waiting in
    the node's mempool with no guard to ask (a guarded row is always tracked, its guard asked)
    and no fee bump due. Nothing is written either way; any other row is tracked in full, from
    a fresh read, and a row that moved since the read is seen at the next pass."""
    if view is None or tx.pk not in view.nonce_hashes:
        return False
    if tx.status == OutboxStatus.MINED:
        receipt = view.receipts.get(tx.tx_hash)
        return (
            receipt is not None
            and receipt["blockHash"].lower() == tx.block_hash
            and view.head - int(receipt["blockNumber"], 16) < settings.EVM_CONFIRMATIONS
        )
    if tx.status != OutboxStatus.SENT or has_guard(tx.action):
        return False
    hashes = view.nonce_hashes[tx.pk]
    if any(h not in view.receipts or view.receipts[h] is not None for h in hashes):
        return False  # mined, or its receipt not read: tracked in full
    if not any(view.known.get(h) for h in hashes):
        return False  # perhaps dropped by the node: tracked in full (resent)
    since = view.last_attempt_at.get(tx.pk) or tx.sent_at or tx.updated_at
    return bool(now - since < timedelta(seconds=float(settings.EVM_FEE_BUMP_AFTER_SECONDS)))


def _chain_view(rows: list[EvmTransaction]) -> ChainView | None:
    """None when there is nothing to look at or the node refused the head: rows are then
    tracked with their own calls. A receipt the node refused is left out (asked on its own)."""
    tracked = {tx.pk: tx for tx in rows if tx.status in _TRACKED}
    nonce_hashes = {pk: [tx.tx_hash] for pk, tx in tracked.items() if tx.tx_hash}
    last_attempt_at: dict[int, Any] = {}
    attempts = (
        EvmTransactionAttempt.objects.filter(transaction_id__in=tracked)
        .order_by("id")
        .values_list("transaction_id", "nonce", "tx_hash", "created_at")
    )
    for pk, nonce, tx_hash, created_at in attempts:
        if nonce != tracked[pk].nonce:
            continue
        last_attempt_at[pk] = created_at
        if tx_hash not in nonce_hashes.setdefault(pk, []):
            nonce_hashes[pk].append(tx_hash)
    hashes = list(dict.fromkeys(h for row_hashes in nonce_hashes.values() for h in row_hashes))
    if not hashes:
        return None
    w3 = get_web3()
    calls = [("eth_getTransactionReceipt", [h]) for h in hashes]
    head, *answers = rpc_batch(w3, [("eth_blockNumber", []), *calls])
    if isinstance(head, RPCError):
        return None
    receipts = {
        h: receipt
        for h, receipt in zip(hashes, answers, strict=True)
        if not isinstance(receipt, RPCError)
    }
    unmined = [h for h, receipt in receipts.items() if receipt is None]
    lookups = rpc_batch(w3, [("eth_getTransactionByHash", [h]) for h in unmined])
    return ChainView(
        receipts=receipts,
        head=int(head, 16),
        rows={pk: (tx.status, tx.tx_hash) for pk, tx in tracked.items()},
        known={
            h: bool(found)
            for h, found in zip(unmined, lookups, strict=True)
            if not isinstance(found, RPCError)
        },
        nonce_hashes=nonce_hashes,
        last_attempt_at=last_attempt_at,
    )


def _find_receipt(
    w3: Web3, tx: EvmTransaction, view: ChainView | None = None, hashes: list[str] | None = None
) -> tuple[dict[str, Any], str] | None:
    """The receipt of whichever of the nonce's transactions is mined. The hashes are read from
    the database now (or given, just read); one the view does not have (signed since) is asked
    of the node."""
    for tx_hash in _nonce_hashes(tx) if hashes is None else hashes:
        if view is not None and tx_hash in view.receipts:
            receipt = view.receipts[tx_hash]
        else:
            receipt = _call(w3, "eth_getTransactionReceipt", [tx_hash])
        if receipt is not None:
            return receipt, tx_hash
    return None


def _reason_of_revert(w3: Web3, tx: EvmTransaction, block_number: int) -> str:
    call = {
        "from": tx.from_address,
        "to": tx.to_address,
        "value": hex(int(tx.value_wei)),
        # Public by now (mined), but a simulation never needs the secret itself.
        "data": encode_call(tx.contract_name, tx.function, placeholder_secrets(tx.args)),
        "gas": hex(tx.gas_limit or 0),
    }
    try:
        _call(w3, "eth_call", [call, hex(max(0, block_number - 1))])
    except RPCError as exc:
        error = exc.error if isinstance(exc.error, dict) else {}
        return revert_reason(error, str(error.get("message", exc)))
    if tx.gas_limit:
        return "reverted (out of gas or state changed earlier in the block)"
    return "reverted without a reason"


def _known_to_node(w3: Web3, hashes: list[str], view: ChainView | None) -> bool:
    """Whether the node has any of the hashes (in its mempool, or mined since): from the view
    when it asked, else live. A stale "no" only resends bytes the node already has."""
    for tx_hash in hashes:
        known = view.known.get(tx_hash) if view is not None else None
        if known is None:
            known = bool(_call(w3, "eth_getTransactionByHash", [tx_hash]))
        if known:
            return True
    return False


def _unmined(
    w3: Web3, tx: EvmTransaction, hashes: list[str], view: ChainView | None = None
) -> None:
    """No receipt for any of the nonce's transactions (`hashes`): pending, dropped, or nonce
    lost."""
    now = timezone.now()
    if tx.status == OutboxStatus.MINED:  # its block was reorged away
        EvmTransaction.objects.filter(pk=tx.pk, status=OutboxStatus.MINED).update(
            status=OutboxStatus.SENT, block_number=None, block_hash="", updated_at=now
        )
        tx.status = OutboxStatus.SENT
    if _known_to_node(w3, hashes, view):
        _while_pending(w3, tx)
        return
    mined = int(_call(w3, "eth_getTransactionCount", [tx.from_address, "latest"]), 16)
    if tx.nonce is not None and mined > tx.nonce:
        _nonce_lost(tx)
        return
    refusal = guard_refusal(tx, Moment.RESEND) if tx.status == OutboxStatus.SENT else None
    if refusal is not None:
        _cancel(w3, tx, refusal)
        return
    logger.warning("chainwatch outbox: %s dropped by the node; resending", tx)
    if _broadcast(w3, tx):
        EvmTransaction.objects.filter(pk=tx.pk).update(
            send_attempts=F("send_attempts") + 1, updated_at=now
        )
        return
    # Refused as it is: typically priced below what the node now takes (a base fee that rose,
    # a full pool). The same call, same nonce, at a higher price.
    kind = AttemptKind.CANCEL if tx.status == OutboxStatus.CANCELLING else AttemptKind.BUMPED
    _replace(w3, tx, kind=kind, reason="refused by the node at its price: gas price raised")


def _nonce_lost(tx: EvmTransaction) -> None:
    now = timezone.now()
    retry_at = _next_retry(tx, now)
    EvmTransaction.objects.filter(pk=tx.pk, status__in=OPEN).update(
        status=OutboxStatus.FAILED,
        updated_at=now,
        next_retry_at=retry_at,
        last_error=f"nonce {tx.nonce} was used by another transaction",
    )
    logger.error("ALERT chainwatch outbox: %s lost its nonce %s", tx, tx.nonce)
    severity = AlertSeverity.WARNING if retry_at else AlertSeverity.CRITICAL
    _alert(tx, "lost its nonce to another transaction", f"nonce {tx.nonce}", severity)


def _mined(
    w3: Web3, tx: EvmTransaction, receipt: dict[str, Any], tx_hash: str, head: int | None
) -> None:
    """`head`: the block number read with the receipt (never behind it), or None to ask."""
    block_number = int(receipt["blockNumber"], 16)
    if head is None:
        head = int(_call(w3, "eth_blockNumber", []), 16)
    depth = head - block_number
    if (
        tx.status == OutboxStatus.MINED
        and tx_hash == tx.tx_hash
        and tx.block_hash == receipt["blockHash"].lower()
        and depth < settings.EVM_CONFIRMATIONS
    ):
        return  # as the last pass left it, still short of its confirmations: nothing to write
    cancelled = tx.attempts.filter(tx_hash=tx_hash, kind=AttemptKind.CANCEL).exists()
    update: dict[str, Any] = {
        "tx_hash": tx_hash,
        "block_number": block_number,
        "block_hash": receipt["blockHash"].lower(),
        "gas_used": int(receipt["gasUsed"], 16),
        "updated_at": timezone.now(),
    }
    if cancelled:
        update["status"] = (
            OutboxStatus.CANCELLED
            if depth >= settings.EVM_CONFIRMATIONS
            else OutboxStatus.CANCELLING
        )
    elif depth < settings.EVM_CONFIRMATIONS:
        update["status"] = OutboxStatus.MINED
    elif int(receipt["status"], 16) == 1:
        update.update(status=OutboxStatus.CONFIRMED, confirmed_at=timezone.now())
    else:
        EvmTransaction.objects.filter(pk=tx.pk, status=tx.status).update(**update)
        tx.refresh_from_db()
        _record_revert(tx, _reason_of_revert(w3, tx, block_number), in_estimation=False)
        return
    EvmTransaction.objects.filter(pk=tx.pk, status=tx.status).update(**update)


def evm_transaction_track(*, tx_id: int, view: ChainView | None = None) -> EvmTransaction:
    """Follow a sent row to its receipt: mined, then confirmed or reverted at depth
    EVM_CONFIRMATIONS; resent when dropped, replaced when stuck, cancelled when its guard no
    longer holds; failed when another transaction took its nonce. `view`: receipts the pump
    read for many rows at once (a missing receipt is still checked live before anything is
    resent, replaced or declared lost: `_unmined` asks the node for the transactions)."""
    tx = EvmTransaction.objects.get(pk=tx_id)
    if tx.status not in _TRACKED:
        return tx
    if view is not None and not view.holds(tx):
        view = None
    w3 = get_web3()
    hashes = _nonce_hashes(tx)
    found = _find_receipt(w3, tx, view, hashes)
    if found is None:
        _unmined(w3, tx, hashes, view)
    else:
        receipt, tx_hash = found
        head = view.head if view is not None and tx_hash in view.receipts else None
        _mined(w3, tx, receipt, tx_hash, head)
    return EvmTransaction.objects.get(pk=tx_id)


# --- retries ------------------------------------------------------------------------------------
def evm_transaction_retry(*, tx_id: int) -> bool:
    """An operator's retry of a call that reverted in estimation (it never took a nonce); its
    guard is asked again before it is signed."""
    return bool(
        EvmTransaction.objects.filter(
            pk=tx_id, status=OutboxStatus.REVERTED, nonce__isnull=True
        ).update(
            status=OutboxStatus.QUEUED,
            revert_reason="",
            last_error="retried by an operator",  # no task: the pump sends it
            next_retry_at=None,
        )
    )


def evm_transaction_retry_due(*, tx_id: int) -> bool:
    """A reverted or lost call retried by policy: queued again as a fresh call when its guard
    still holds, refused when it does not; after EVM_OUTBOX_MAX_RETRIES it stays and alerts."""
    tx = EvmTransaction.objects.get(pk=tx_id)
    if tx.status not in _RETRYABLE or tx.next_retry_at is None:
        return False
    refusal = guard_refusal(tx, Moment.RETRY)
    if refusal is not None:
        _refuse(tx, refusal)
        return False
    if not _requeue(
        tx,
        from_statuses=_RETRYABLE,
        note=f"retry {tx.retries + 1}: {tx.revert_reason or tx.last_error}",
    ):
        return False
    EvmTransaction.objects.filter(pk=tx.pk).update(retries=F("retries") + 1)
    logger.warning("chainwatch outbox: %s retried (%s)", tx, tx.retries + 1)
    return True


# --- reorgs deeper than the confirmations -------------------------------------------------------
# A final row whose nonce the chain has not reached again was undone by such a reorg.
_FINAL_ON_CHAIN = (OutboxStatus.CONFIRMED, OutboxStatus.REVERTED, OutboxStatus.CANCELLED)


def _reopen(tx: EvmTransaction) -> bool:
    status = OutboxStatus.CANCELLING if tx.status == OutboxStatus.CANCELLED else OutboxStatus.SENT
    reopened = EvmTransaction.objects.filter(pk=tx.pk, status=tx.status).update(
        status=status,
        block_number=None,
        block_hash="",
        gas_used=None,
        confirmed_at=None,
        next_retry_at=None,
        last_error=f"its block (nonce {tx.nonce}) was reorged away after it was final",
        updated_at=timezone.now(),
    )
    if reopened:
        logger.error("ALERT chainwatch outbox: %s undone by a reorg; tracked again", tx)
        _alert(tx, "was undone by a reorg deeper than the confirmations", f"nonce {tx.nonce}")
    return bool(reopened)


def evm_transactions_reopen_undone(*, chain_id: int) -> int:
    """A reorg deeper than EVM_CONFIRMATIONS can take away a call we took as final: its nonce is
    free again and every later call of the lender waits behind it. Such a row is tracked again,
    so its guard decides at once: the same call resent, or the nonce taken by a cancellation."""
    reopened = 0
    w3: Web3 | None = None
    for account in EvmAccountNonce.objects.filter(chain_id=chain_id):
        w3 = w3 or get_web3()
        mined = int(_call(w3, "eth_getTransactionCount", [account.address, "latest"]), 16)
        undone = EvmTransaction.objects.filter(
            chain_id=chain_id,
            from_address=account.address,
            status__in=_FINAL_ON_CHAIN,
            nonce__gte=mined,
        )
        reopened += sum(_reopen(tx) for tx in undone if _find_receipt(w3, tx) is None)
    return reopened


@dataclass
class PumpSummary:
    sent: int = 0
    tracked: int = 0
    confirmed: int = 0
    reverted: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    refused: int = 0
    reopened: int = 0


def _with_its_send_task(tx: EvmTransaction, *, redrive_from: Any) -> bool:
    """A new row created since `redrive_from` has its send task on the way (enqueued with it):
    the pump sending it too would only repeat its estimate and guard. A row queued again (a
    retry, asked again: its `last_error` says why) has no task and is sent by the pump; so is
    a new row whose task was lost, once EVM_OUTBOX_REDRIVE_AFTER_SECONDS have passed."""
    return tx.status == OutboxStatus.QUEUED and tx.created_at > redrive_from and not tx.last_error


def evm_transactions_pump(*, limit: int = 200) -> PumpSummary:
    """Queue again what is due for a retry; send what is queued or signed, track what is sent;
    oldest nonce first. A new row is left to its send task for a few seconds."""
    summary = PumpSummary()
    chain_id = settings.EVM_CHAIN_ID
    summary.reopened = evm_transactions_reopen_undone(chain_id=chain_id)
    due = EvmTransaction.objects.filter(
        chain_id=chain_id, status__in=_RETRYABLE, next_retry_at__lte=timezone.now()
    ).values_list("pk", flat=True)[:limit]
    for tx_id in list(due):
        summary.retried += evm_transaction_retry_due(tx_id=tx_id)
    redrive_from = timezone.now() - timedelta(
        seconds=float(settings.EVM_OUTBOX_REDRIVE_AFTER_SECONDS)
    )
    rows = list(
        EvmTransaction.objects.filter(chain_id=chain_id, status__in=OPEN).order_by(
            F("nonce").asc(nulls_last=True), "id"
        )[:limit]
    )
    view = _chain_view(rows)
    now = timezone.now()
    for tx in rows:
        if _with_its_send_task(tx, redrive_from=redrive_from):
            continue
        if _nothing_to_do(tx, view, now):
            summary.tracked += 1
            continue
        if tx.status in (OutboxStatus.QUEUED, OutboxStatus.SIGNED):
            tx = evm_transaction_send(tx_id=tx.pk)
            summary.sent += tx.status == OutboxStatus.SENT
        if tx.status in _TRACKED:
            tx = evm_transaction_track(tx_id=tx.pk, view=view)
            summary.tracked += 1
        summary.confirmed += tx.status == OutboxStatus.CONFIRMED
        summary.reverted += tx.status == OutboxStatus.REVERTED
        summary.failed += tx.status == OutboxStatus.FAILED
        summary.cancelled += tx.status == OutboxStatus.CANCELLED
        summary.refused += tx.status == OutboxStatus.REFUSED
    return summary
