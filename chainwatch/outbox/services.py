"""The lender's EVM transaction outbox.

A row per intended call (unique per loan and action). `evm_transaction_send` moves a row as far
as it can: queued → signed (nonce taken under the account's row lock, signed locally, nonce and
hash stored in the same transaction) → sent. A signed transaction is never abandoned: its exact
bytes (signed again, deterministically) are resent until the chain has its nonce, so a crash at
any point leaves neither a gap nor a reuse.
`evm_transaction_track` follows a sent one to its receipt at EVM_CONFIRMATIONS, resends it when
the node dropped it, and records a revert with its reason. No RPC runs inside `atomic()`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
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
from chainwatch.client import NODE_ERRORS, NodeUnavailable, RPCError, get_web3, rpc
from chainwatch.indexer.config import watch_config
from chainwatch.indexer.decoding import LOAN_CONTRACT
from chainwatch.models import EvmAccountNonce, EvmTransaction, OutboxStatus
from chainwatch.outbox.calls import (
    CallError,
    encode_call,
    placeholder_secrets,
    resolve_secrets,
    revert_reason,
)

logger = logging.getLogger(__name__)

GAS_MARGIN = Decimal("1.25")
OPEN = (OutboxStatus.QUEUED, OutboxStatus.SIGNED, OutboxStatus.SENT, OutboxStatus.MINED)
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
    """The row for (loan, action), created once; the same call again returns it. Safe inside the
    caller's transaction (no RPC); send it with `send_evm_transaction.delay_on_commit(tx.id)`."""
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
    return tx


def _prepare(w3: Web3, tx: EvmTransaction, sender: str) -> tuple[str, int, int] | None:
    """Call data, gas limit and gas price; None when the call reverts in estimation (recorded)."""
    data = encode_call(tx.contract_name, tx.function, resolve_secrets(tx.loan_ref, tx.args))
    call = {"from": sender, "to": tx.to_address, "data": data, "value": hex(int(tx.value_wei))}
    gas = tx.gas_limit
    if gas is None:
        try:
            estimate = int(_call(w3, "eth_estimateGas", [call]), 16)
        except RPCError as exc:
            reason = revert_reason(exc.error, str(exc.error.get("message", "")))
            EvmTransaction.objects.filter(pk=tx.pk, status=OutboxStatus.QUEUED).update(
                status=OutboxStatus.REVERTED,
                revert_reason=reason,
                last_error="reverted in gas estimation; not sent",
                updated_at=timezone.now(),
            )
            logger.error("ALERT chainwatch outbox: %s would revert: %s", tx, reason)
            _alert(tx, "reverts in gas estimation; not sent", reason)
            return None
        gas = int(Decimal(estimate) * GAS_MARGIN)
    gas_price = int(_call(w3, "eth_gasPrice", []), 16)
    return data, gas, gas_price


def _sign(tx_id: int, sender: LocalAccount, prepared: tuple[str, int, int], floor: int) -> bool:
    """Take the next nonce under the account's row lock and sign; the nonce, gas, price and hash
    are stored in the same transaction. False when another sender got there first."""
    data, gas, gas_price = prepared
    chain_id = int(settings.EVM_CHAIN_ID)
    EvmAccountNonce.objects.get_or_create(
        chain_id=chain_id, address=sender.address, defaults={"next_nonce": floor}
    )
    with transaction.atomic():
        tx = EvmTransaction.objects.select_for_update().get(pk=tx_id)
        if tx.status != OutboxStatus.QUEUED:
            return False
        account = EvmAccountNonce.objects.select_for_update().get(
            chain_id=chain_id, address=sender.address
        )
        # Someone else's use of the key moves the floor up; we never go down.
        nonce = max(account.next_nonce, floor)
        account.next_nonce = nonce + 1
        account.save(update_fields=["next_nonce", "updated_at"])
        tx.from_address = sender.address
        tx.nonce = nonce
        tx.gas_limit = gas
        tx.gas_price_wei = Decimal(gas_price)
        tx.tx_hash = _sign_fields(tx, sender, data)[1]
        tx.status = OutboxStatus.SIGNED
        tx.save()
    return True


def _sign_fields(tx: EvmTransaction, sender: LocalAccount, data: str) -> tuple[str, str]:
    """The signed bytes and hash of the row's transaction. Signing is deterministic (RFC 6979),
    so signing the stored fields again gives the same bytes: the signed transaction is never
    stored, and neither is a secret argument it carries before the chain has it."""
    fields: dict[str, Any] = {
        "chainId": int(tx.chain_id),
        "nonce": tx.nonce,
        "to": tx.to_address,
        "value": int(tx.value_wei),
        "data": data,
        "gas": tx.gas_limit,
        "gasPrice": int(tx.gas_price_wei or 0),  # legacy pricing: Rootstock has no EIP-1559
    }
    signed = sender.sign_transaction(fields)
    return "0x" + bytes(signed.raw_transaction).hex(), "0x" + bytes(signed.hash).hex()


def _signed_bytes(tx: EvmTransaction) -> str:
    data = encode_call(tx.contract_name, tx.function, resolve_secrets(tx.loan_ref, tx.args))
    raw, tx_hash = _sign_fields(tx, lender_account(), data)
    if tx_hash != tx.tx_hash:  # another key, or a secret that changed: never a second tx
        raise ImproperlyConfigured(
            f"{tx} signs to {tx_hash}, not its recorded {tx.tx_hash}: lender key changed?"
        )
    return raw


def _broadcast(w3: Web3, tx: EvmTransaction) -> bool:
    """Send the row's signed transaction; True when the node has it (now or already)."""
    try:
        _call(w3, "eth_sendRawTransaction", [_signed_bytes(tx)])
    except RPCError as exc:
        message = str(exc).lower()
        if not any(words in message for words in _ALREADY_THERE):
            EvmTransaction.objects.filter(pk=tx.pk).update(
                send_attempts=F("send_attempts") + 1,
                last_error=str(exc)[:2000],
                updated_at=timezone.now(),
            )
            logger.error(
                "ALERT chainwatch outbox: %s (nonce %s) not accepted: %s", tx, tx.nonce, exc
            )
            _alert(tx, "not accepted by the node; retried", str(exc), AlertSeverity.WARNING)
            return False
    return True


def evm_transaction_send(*, tx_id: int) -> EvmTransaction:
    """Drive one row from queued or signed to sent. Safe to call twice, from many workers."""
    tx = EvmTransaction.objects.get(pk=tx_id)
    if tx.status == OutboxStatus.QUEUED:
        w3 = get_web3()
        sender = lender_account()
        prepared = _prepare(w3, tx, sender.address)
        if prepared is None:
            return EvmTransaction.objects.get(pk=tx_id)
        floor = int(_call(w3, "eth_getTransactionCount", [sender.address, "pending"]), 16)
        _sign(tx_id, sender, prepared, floor)
        tx = EvmTransaction.objects.get(pk=tx_id)
        if tx.status == OutboxStatus.SIGNED:
            _after_signed(tx)
    if tx.status != OutboxStatus.SIGNED:
        return tx
    if _broadcast(get_web3(), tx):
        _after_sent(tx)
        EvmTransaction.objects.filter(pk=tx.pk, status=OutboxStatus.SIGNED).update(
            status=OutboxStatus.SENT,
            sent_at=timezone.now(),
            send_attempts=F("send_attempts") + 1,
            last_error="",
            updated_at=timezone.now(),
        )
    return EvmTransaction.objects.get(pk=tx_id)


def _reason_of_revert(w3: Web3, tx: EvmTransaction, block_number: int) -> str:
    call = {
        "from": tx.from_address,
        "to": tx.to_address,
        "value": hex(int(tx.value_wei)),
        "data": encode_call(tx.contract_name, tx.function, resolve_secrets(tx.loan_ref, tx.args)),
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


def evm_transaction_track(*, tx_id: int) -> EvmTransaction:
    """Follow a sent row to its receipt: mined, then confirmed or reverted at depth
    EVM_CONFIRMATIONS; resent when dropped; failed when another transaction took its nonce."""
    tx = EvmTransaction.objects.get(pk=tx_id)
    if tx.status not in (OutboxStatus.SENT, OutboxStatus.MINED):
        return tx
    w3 = get_web3()
    receipt = _call(w3, "eth_getTransactionReceipt", [tx.tx_hash])
    now = timezone.now()
    if receipt is None:
        if tx.status == OutboxStatus.MINED:  # its block was reorged away
            EvmTransaction.objects.filter(pk=tx.pk, status=OutboxStatus.MINED).update(
                status=OutboxStatus.SENT, block_number=None, block_hash="", updated_at=now
            )
        if _call(w3, "eth_getTransactionByHash", [tx.tx_hash]) is None:
            mined = int(_call(w3, "eth_getTransactionCount", [tx.from_address, "latest"]), 16)
            if tx.nonce is not None and mined > tx.nonce:
                EvmTransaction.objects.filter(pk=tx.pk, status__in=OPEN).update(
                    status=OutboxStatus.FAILED,
                    updated_at=now,
                    last_error=f"nonce {tx.nonce} was used by another transaction",
                )
                logger.error("ALERT chainwatch outbox: %s lost its nonce %s", tx, tx.nonce)
                _alert(tx, "lost its nonce to another transaction", f"nonce {tx.nonce}")
            else:
                logger.warning("chainwatch outbox: %s dropped by the node; resending", tx)
                if _broadcast(w3, tx):
                    EvmTransaction.objects.filter(pk=tx.pk).update(
                        send_attempts=F("send_attempts") + 1, updated_at=now
                    )
        return EvmTransaction.objects.get(pk=tx_id)
    block_number = int(receipt["blockNumber"], 16)
    depth = int(_call(w3, "eth_blockNumber", []), 16) - block_number
    update: dict[str, Any] = {
        "block_number": block_number,
        "block_hash": receipt["blockHash"].lower(),
        "gas_used": int(receipt["gasUsed"], 16),
        "updated_at": now,
    }
    if depth < settings.EVM_CONFIRMATIONS:
        update["status"] = OutboxStatus.MINED
    elif int(receipt["status"], 16) == 1:
        update.update(status=OutboxStatus.CONFIRMED, confirmed_at=now)
    else:
        reason = _reason_of_revert(w3, tx, block_number)
        update.update(status=OutboxStatus.REVERTED, revert_reason=reason, confirmed_at=now)
        logger.error("ALERT chainwatch outbox: %s reverted on chain: %s", tx, reason)
        _alert(tx, "reverted on chain", reason)
    EvmTransaction.objects.filter(pk=tx.pk, status=tx.status).update(**update)
    return EvmTransaction.objects.get(pk=tx_id)


def evm_transaction_retry(*, tx_id: int) -> bool:
    """An operator's retry of a call that reverted in estimation (it never took a nonce)."""
    return bool(
        EvmTransaction.objects.filter(
            pk=tx_id, status=OutboxStatus.REVERTED, nonce__isnull=True
        ).update(status=OutboxStatus.QUEUED, revert_reason="", last_error="")
    )


@dataclass
class PumpSummary:
    sent: int = 0
    tracked: int = 0
    confirmed: int = 0
    reverted: int = 0
    failed: int = 0


def evm_transactions_pump(*, limit: int = 200) -> PumpSummary:
    """Send what is queued or signed, track what is sent; oldest nonce first."""
    summary = PumpSummary()
    rows = EvmTransaction.objects.filter(chain_id=settings.EVM_CHAIN_ID, status__in=OPEN).order_by(
        F("nonce").asc(nulls_last=True), "id"
    )[:limit]
    for tx in list(rows):
        if tx.status in (OutboxStatus.QUEUED, OutboxStatus.SIGNED):
            tx = evm_transaction_send(tx_id=tx.pk)
            summary.sent += tx.status == OutboxStatus.SENT
        if tx.status in (OutboxStatus.SENT, OutboxStatus.MINED):
            tx = evm_transaction_track(tx_id=tx.pk)
            summary.tracked += 1
        summary.confirmed += tx.status == OutboxStatus.CONFIRMED
        summary.reverted += tx.status == OutboxStatus.REVERTED
        summary.failed += tx.status == OutboxStatus.FAILED
    return summary
