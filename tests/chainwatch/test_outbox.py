"""The lender's transaction outbox on anvil: nonces under concurrency, restarts, drops, reverts."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from django.db import close_old_connections, connection
from django.db.models import F
from eth_typing import HexStr
from web3 import Web3

import chainwatch.outbox.services as outbox
from btcloan.models import Alert
from chainwatch.models import EvmAccountNonce, EvmTransaction, OutboxStatus
from chainwatch.outbox.calls import CallError
from chainwatch.outbox.services import (
    OutboxConflict,
    evm_transaction_enqueue,
    evm_transaction_send,
    evm_transactions_pump,
)
from tests.chainwatch.conftest import Chain, SimulatedCrash
from tests.chainwatch.helpers import request_loan

pytestmark = [pytest.mark.evm]


def pubkey_call(loan_ref: str, action: str = "pubkey") -> EvmTransaction:
    """A lender-only call that always succeeds: updateLenderBtcPubkey."""
    return evm_transaction_enqueue(
        loan_ref=loan_ref,
        action=action,
        function="updateLenderBtcPubkey",
        args=[os.urandom(32).hex()],
    )


def pump_until_settled(rounds: int = 10) -> None:
    for _ in range(rounds):
        evm_transactions_pump()
        if not EvmTransaction.objects.filter(
            status__in=(
                OutboxStatus.QUEUED,
                OutboxStatus.SIGNED,
                OutboxStatus.SENT,
                OutboxStatus.MINED,
            )
        ).exists():
            return


def lender_nonce(chain: Chain) -> int:
    return int(
        chain.w3.eth.get_transaction_count(
            Web3.to_checksum_address(chain.contracts.lender_address), "latest"
        )
    )


@pytest.mark.django_db(transaction=True)
def test_concurrent_senders_leave_no_nonce_gap_or_reuse(chain: Chain) -> None:
    start = lender_nonce(chain)
    threads, per_thread = 6, 4
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def sender(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                tx = pubkey_call(f"loan-{n}-{i}")
                evm_transaction_send(tx_id=tx.pk)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    workers = [threading.Thread(target=sender, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not errors, errors
    pump_until_settled()

    rows = list(EvmTransaction.objects.all())
    nonces = sorted(r.nonce for r in rows if r.nonce is not None)
    assert nonces == list(range(start, start + threads * per_thread))
    assert {r.status for r in rows} == {OutboxStatus.CONFIRMED}
    assert len({r.tx_hash for r in rows}) == len(rows)
    assert lender_nonce(chain) == start + threads * per_thread
    for row in rows:
        receipt = chain.w3.eth.get_transaction_receipt(HexStr(row.tx_hash))
        assert receipt["status"] == 1
        assert receipt["blockNumber"] == row.block_number
    assert EvmAccountNonce.objects.get().next_nonce == start + threads * per_thread


@pytest.mark.django_db
def test_a_restart_after_signing_resends_the_same_transaction(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = lender_nonce(chain)

    def crash(tx: EvmTransaction) -> None:
        raise SimulatedCrash("killed after signing, before sending")

    monkeypatch.setattr(outbox, "_after_signed", crash)
    first = pubkey_call("loan-1")
    with pytest.raises(SimulatedCrash):
        evm_transaction_send(tx_id=first.pk)
    monkeypatch.undo()
    first.refresh_from_db()
    assert (first.status, first.nonce) == (OutboxStatus.SIGNED, start)
    assert lender_nonce(chain) == start  # nothing reached the chain

    # A later call takes the next nonce; the chain holds it back behind the gap until the
    # restarted pump resends the first one's exact bytes.
    second = pubkey_call("loan-2")
    evm_transaction_send(tx_id=second.pk)
    pump_until_settled()
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (OutboxStatus.CONFIRMED, OutboxStatus.CONFIRMED)
    assert (first.nonce, second.nonce) == (start, start + 1)
    assert lender_nonce(chain) == start + 2


@pytest.mark.django_db
def test_a_restart_after_sending_does_not_send_twice(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = lender_nonce(chain)

    def crash(tx: EvmTransaction) -> None:
        raise SimulatedCrash("killed after the node took it, before the row says so")

    monkeypatch.setattr(outbox, "_after_sent", crash)
    tx = pubkey_call("loan-1")
    with pytest.raises(SimulatedCrash):
        evm_transaction_send(tx_id=tx.pk)
    monkeypatch.undo()
    tx.refresh_from_db()
    assert tx.status == OutboxStatus.SIGNED
    pump_until_settled()
    tx.refresh_from_db()
    assert tx.status == OutboxStatus.CONFIRMED
    assert lender_nonce(chain) == start + 1  # one transaction, whatever was resent


@pytest.mark.django_db
def test_a_dropped_transaction_is_resent(chain: Chain) -> None:
    chain.rpc("evm_setAutomine", [False])
    try:
        tx = pubkey_call("loan-1")
        evm_transaction_send(tx_id=tx.pk)
        tx.refresh_from_db()
        assert tx.status == OutboxStatus.SENT
        chain.rpc("anvil_dropTransaction", [tx.tx_hash])
        assert (
            chain.w3.eth.get_transaction_count(Web3.to_checksum_address(tx.from_address), "pending")
            == tx.nonce
        )
        evm_transactions_pump()  # finds it gone: resends the same bytes
        tx.refresh_from_db()
        assert tx.send_attempts == 2
        assert tx.status == OutboxStatus.SENT
        chain.mine(1)
    finally:
        chain.rpc("evm_setAutomine", [True])
    evm_transactions_pump()
    tx.refresh_from_db()
    assert tx.status == OutboxStatus.CONFIRMED


@pytest.mark.django_db
def test_a_confirmed_call_a_deep_reorg_undid_is_sent_again_with_its_nonce(chain: Chain) -> None:
    """Final at EVM_CONFIRMATIONS, then a longer reorg takes its block away: its nonce is free
    again and the next call would wait behind it forever. The pump finds it and sends it again
    (its guard, if any, deciding), so the call after it is mined too."""
    chain.settings.EVM_CONFIRMATIONS = 1
    fork = chain.rpc("evm_snapshot", [])
    first = pubkey_call("loan-1")
    evm_transactions_pump()
    chain.mine(1)
    evm_transactions_pump()
    first.refresh_from_db()
    assert first.status == OutboxStatus.CONFIRMED

    assert chain.rpc("evm_revert", [fork]) is True  # the node forgets the call and its block
    chain.mine(3)
    second = pubkey_call("loan-2")
    for _ in range(3):
        evm_transactions_pump()
        chain.mine(1)
    evm_transactions_pump()
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (OutboxStatus.CONFIRMED, OutboxStatus.CONFIRMED)
    assert second.nonce == int(first.nonce or 0) + 1
    assert chain.w3.eth.get_transaction_receipt(HexStr(first.tx_hash))["status"] == 1
    assert Alert.objects.filter(key=f"chainwatch:outbox:{first.pk}").exists()


@pytest.mark.django_db
def test_receipts_wait_for_the_confirmations(chain: Chain) -> None:
    chain.settings.EVM_CONFIRMATIONS = 2
    tx = pubkey_call("loan-1")
    evm_transactions_pump()
    tx.refresh_from_db()
    assert tx.status == OutboxStatus.MINED
    assert tx.block_number is not None
    evm_transactions_pump()  # no new block: the row is left as it is, not written again
    assert EvmTransaction.objects.get(pk=tx.pk).updated_at == tx.updated_at
    chain.mine(1)
    evm_transactions_pump()
    tx.refresh_from_db()
    assert tx.status == OutboxStatus.MINED
    chain.mine(1)
    evm_transactions_pump()
    tx.refresh_from_db()
    assert tx.status == OutboxStatus.CONFIRMED
    assert tx.gas_used


@contextmanager
def node_traffic(chain: Chain) -> Iterator[tuple[list[str], list[list[tuple[str, Any]]]]]:
    """The methods of every single JSON-RPC request and every batch sent to the node inside."""
    provider: Any = chain.w3.provider
    single: list[str] = []
    batches: list[list[tuple[str, Any]]] = []
    original_single, original_batch = provider.make_request, provider.make_batch_request

    def one(method: str, params: Any) -> Any:
        single.append(str(method))
        return original_single(method, params)

    def many(calls: list[tuple[str, Any]]) -> Any:
        batches.append([(str(method), params) for method, params in calls])
        return original_batch(calls)

    provider.make_request, provider.make_batch_request = one, many
    try:
        yield single, batches
    finally:
        provider.make_request, provider.make_batch_request = original_single, original_batch


@pytest.mark.django_db(transaction=True)
def test_the_pump_reads_every_tracked_receipt_and_the_head_in_one_batch(chain: Chain) -> None:
    chain.settings.EVM_CONFIRMATIONS = 1
    txs = [pubkey_call(f"loan-{i}") for i in range(3)]
    evm_transactions_pump()  # sent, and mined at depth 0
    assert {tx.status for tx in EvmTransaction.objects.all()} == {OutboxStatus.MINED}
    chain.mine(1)
    with node_traffic(chain) as (single, batches):
        evm_transactions_pump()
    assert {tx.status for tx in EvmTransaction.objects.all()} == {OutboxStatus.CONFIRMED}
    assert "eth_getTransactionReceipt" not in single
    assert "eth_blockNumber" not in single
    [batch] = batches
    assert batch[0] == ("eth_blockNumber", [])
    asked = sorted(params[0] for method, params in batch if method == "eth_getTransactionReceipt")
    assert asked == sorted(EvmTransaction.objects.get(pk=tx.pk).tx_hash for tx in txs)


@pytest.mark.django_db(transaction=True)
def test_the_pump_asks_the_mempool_for_every_pending_call_in_one_batch(chain: Chain) -> None:
    """Calls sent but not mined: whether the node still has them is one batch after the
    receipts' (was an eth_getTransactionByHash per row); they stay sent, nothing is resent."""
    chain.rpc("evm_setAutomine", [False])
    try:
        txs = [pubkey_call(f"loan-{i}") for i in range(3)]
        for tx in txs:
            evm_transaction_send(tx_id=tx.pk)
        with node_traffic(chain) as (single, batches):
            evm_transactions_pump()
        rows = [EvmTransaction.objects.get(pk=tx.pk) for tx in txs]
        assert {row.status for row in rows} == {OutboxStatus.SENT}
        assert {row.send_attempts for row in rows} == {1}
        assert "eth_getTransactionByHash" not in single
        assert "eth_sendRawTransaction" not in single
        _receipts, lookups = batches
        assert sorted(params[0] for method, params in lookups) == sorted(r.tx_hash for r in rows)
        assert {method for method, _ in lookups} == {"eth_getTransactionByHash"}
        chain.mine(1)
    finally:
        chain.rpc("evm_setAutomine", [True])
    pump_until_settled()
    assert {tx.status for tx in EvmTransaction.objects.all()} == {OutboxStatus.CONFIRMED}


@pytest.mark.django_db(transaction=True)
def test_a_pass_reads_no_row_again_that_it_has_nothing_to_do_for(chain: Chain) -> None:
    """Pending with no guard and no bump due, or mined and short of its confirmations: the
    pump's own read and its view decide, with no read or write of the row; a guarded pending
    row is still tracked, its guard asked."""
    from django.test.utils import CaptureQueriesContext

    from chainwatch.outbox import hooks

    chain.settings.EVM_CONFIRMATIONS = 2
    asked: list[str] = []
    hooks.register_send_guard("guarded", lambda row, moment: asked.append(moment))
    chain.rpc("evm_setAutomine", [False])
    try:
        plain = [pubkey_call(f"loan-{i}") for i in range(2)]
        guarded = pubkey_call("loan-9", action="guarded")
        for tx in [*plain, guarded]:
            evm_transaction_send(tx_id=tx.pk)

        def row_reads() -> set[int]:
            with CaptureQueriesContext(connection) as queries:
                evm_transactions_pump()
            sql = [q["sql"] for q in queries.captured_queries]
            return {
                tx.pk
                for tx in [*plain, guarded]
                for q in sql
                if re.search(rf'"chainwatch_evmtransaction"\."id" = {tx.pk}\b', q)
            }

        asked.clear()
        assert row_reads() == {guarded.pk}  # pending: only the guarded row is read again
        assert asked == ["pending"]
        chain.mine(1)
        evm_transactions_pump()  # mined: recorded
        assert {tx.status for tx in EvmTransaction.objects.all()} == {OutboxStatus.MINED}
        assert row_reads() == set()  # mined, no new block: nothing to do for any
    finally:
        chain.rpc("evm_setAutomine", [True])
        hooks._guards.pop("guarded")
    chain.mine(2)
    pump_until_settled()
    assert {tx.status for tx in EvmTransaction.objects.all()} == {OutboxStatus.CONFIRMED}


@pytest.mark.django_db
def test_a_send_reads_the_node_in_one_batch_before_its_guard_then_sends(chain: Chain) -> None:
    """Estimate, gas price and nonce floor in one round trip (was three), the guard asked after
    them and before the nonce, then eth_sendRawTransaction: two round trips in all."""
    from chainwatch.outbox import hooks

    provider: Any = chain.w3.provider
    wire: list[Any] = []
    original_single, original_batch = provider.make_request, provider.make_batch_request

    def one(method: str, params: Any) -> Any:
        wire.append(str(method))
        return original_single(method, params)

    def many(calls: list[tuple[str, Any]]) -> Any:
        wire.append(sorted(str(method) for method, _ in calls))
        return original_batch(calls)

    def guard(row: EvmTransaction, moment: str) -> None:
        wire.append(f"guard at {moment}")

    hooks.register_send_guard("guarded", guard)
    tx = pubkey_call("loan-1", action="guarded")
    provider.make_request, provider.make_batch_request = one, many
    try:
        sent = evm_transaction_send(tx_id=tx.pk)
    finally:
        provider.make_request, provider.make_batch_request = original_single, original_batch
        hooks._guards.pop("guarded")
    assert sent.status == OutboxStatus.SENT
    assert sent.gas_limit is not None
    assert sent.gas_limit > 21_000  # estimated, with its margin
    assert sent.gas_price_wei
    assert sent.nonce is not None
    assert wire == [
        ["eth_estimateGas", "eth_gasPrice", "eth_getTransactionCount"],
        "guard at sign",
        "eth_sendRawTransaction",
    ]


@pytest.mark.django_db(transaction=True)
def test_the_pump_leaves_a_new_row_to_its_send_task_then_redrives_it(chain: Chain) -> None:
    chain.settings.EVM_OUTBOX_REDRIVE_AFTER_SECONDS = 60.0
    new = pubkey_call("loan-1")
    operator_retried = pubkey_call("loan-2")
    EvmTransaction.objects.filter(pk=operator_retried.pk).update(
        status=OutboxStatus.REVERTED, revert_reason="estimation"
    )
    assert outbox.evm_transaction_retry(tx_id=operator_retried.pk)
    evm_transactions_pump()
    new.refresh_from_db()
    operator_retried.refresh_from_db()
    assert new.status == OutboxStatus.QUEUED  # its task is on the way
    assert operator_retried.status == OutboxStatus.CONFIRMED  # no task: the pump sent it
    # The task was lost: once the wait has passed, the pump sends the row.
    an_hour = timedelta(hours=1)
    EvmTransaction.objects.filter(pk=new.pk).update(created_at=F("created_at") - an_hour)
    evm_transactions_pump()
    new.refresh_from_db()
    assert new.status == OutboxStatus.CONFIRMED
    assert new.nonce == (operator_retried.nonce or 0) + 1


@pytest.mark.django_db
def test_a_revert_is_recorded_with_its_reason(chain: Chain) -> None:
    loan_id, _, _ = request_loan(chain, 1)
    hash_l = "0x" + "11" * 32
    associate: dict[str, Any] = {
        "function": "associateLenderPreimageHash",
        "args": [loan_id, hash_l],
    }
    evm_transaction_send(
        tx_id=evm_transaction_enqueue(loan_ref=str(loan_id), action="associate", **associate).pk
    )
    # Associating again reverts; with a fixed gas limit it is sent and reverts on chain.
    again = evm_transaction_enqueue(
        loan_ref=str(loan_id), action="associate-again", gas_limit=200_000, **associate
    )
    # Without one, the estimate already reverts, and nothing is sent.
    estimated = evm_transaction_enqueue(loan_ref=str(loan_id), action="associate-3", **associate)
    pump_until_settled()
    again.refresh_from_db()
    estimated.refresh_from_db()
    assert again.status == OutboxStatus.REVERTED
    assert again.nonce is not None
    assert again.revert_reason == "lender preimage hash already set"
    assert chain.w3.eth.get_transaction_receipt(HexStr(again.tx_hash))["status"] == 0
    assert estimated.status == OutboxStatus.REVERTED
    assert estimated.nonce is None
    assert estimated.revert_reason == "lender preimage hash already set"
    alerts = Alert.objects.filter(key__in=[f"chainwatch:outbox:{t.pk}" for t in (again, estimated)])
    assert {a.severity for a in alerts} == {"critical"}
    assert len(alerts) == 2


@pytest.mark.django_db
def test_one_row_per_loan_and_action_and_bad_calls_refused(chain: Chain) -> None:
    args = ["ab" * 32]
    first = evm_transaction_enqueue(
        loan_ref="7", action="pubkey", function="updateLenderBtcPubkey", args=args
    )
    same = evm_transaction_enqueue(
        loan_ref="7", action="pubkey", function="updateLenderBtcPubkey", args=args
    )
    assert first.pk == same.pk
    with pytest.raises(OutboxConflict):
        evm_transaction_enqueue(
            loan_ref="7", action="pubkey", function="updateLenderBtcPubkey", args=["cd" * 32]
        )
    with pytest.raises(CallError, match="no function"):
        evm_transaction_enqueue(loan_ref="7", action="x", function="emergencyWithdraw", args=[])
    with pytest.raises(CallError, match="32 bytes"):
        evm_transaction_enqueue(
            loan_ref="7", action="y", function="associateLenderPreimageHash", args=[7, "0x12"]
        )
    assert EvmTransaction.objects.count() == 1


@pytest.mark.django_db
def test_a_secret_argument_is_resolved_only_when_signing(chain: Chain) -> None:
    from django.forms.models import model_to_dict

    from chainwatch.outbox import calls

    loan_id, _, _ = request_loan(chain, 1)
    secret = os.urandom(32)
    calls.register_secret_resolver("$cw_test_secret", lambda loan_ref: secret)
    try:
        tx = evm_transaction_enqueue(
            loan_ref=str(loan_id),
            action="associate",
            function="associateLenderPreimageHash",
            args=[loan_id, "$cw_test_secret"],
        )
        pump_until_settled()
    finally:
        calls._secret_resolvers.pop("$cw_test_secret")
    tx.refresh_from_db()
    assert tx.status == OutboxStatus.CONFIRMED
    assert secret.hex() not in str(model_to_dict(tx)).lower()
    sent = chain.w3.eth.get_transaction(HexStr(tx.tx_hash))
    assert secret.hex() in bytes(sent["input"]).hex()


def _stuck(chain: Chain, tx: EvmTransaction) -> None:
    """The node's base fee rises above the row's gas price: the next block leaves it out and
    the node evicts it; sent again as it is, it is refused ("below the block base fee")."""
    chain.rpc("anvil_setNextBlockBaseFeePerGas", [hex(int(tx.gas_price_wei or 0) * 10)])
    chain.mine(1)
    assert chain.w3.eth.get_transaction_count(Web3.to_checksum_address(tx.from_address)) == tx.nonce


@pytest.mark.django_db
def test_a_stuck_transaction_is_replaced_at_a_higher_gas_price_and_mined(chain: Chain) -> None:
    chain.settings.EVM_FEE_BUMP_AFTER_SECONDS = 0
    base_fee = int(chain.w3.eth.get_block("latest")["baseFeePerGas"])
    chain.rpc("evm_setAutomine", [False])
    try:
        tx = pubkey_call("loan-1")
        evm_transaction_send(tx_id=tx.pk)
        tx.refresh_from_db()
        first_hash, first_price = tx.tx_hash, int(tx.gas_price_wei or 0)
        _stuck(chain, tx)
        evm_transactions_pump()  # not mined, not accepted as it is: same nonce, higher price
        tx.refresh_from_db()
        assert tx.tx_hash != first_hash
        assert int(tx.gas_price_wei or 0) > first_price
        chain.mine(1)
    finally:
        chain.rpc("evm_setAutomine", [True])
        chain.rpc("anvil_setNextBlockBaseFeePerGas", [hex(base_fee)])
    pump_until_settled()
    tx.refresh_from_db()
    assert tx.status == OutboxStatus.CONFIRMED
    receipt = chain.w3.eth.get_transaction_receipt(HexStr(tx.tx_hash))
    assert receipt["status"] == 1
    assert int(chain.w3.eth.get_transaction(HexStr(tx.tx_hash))["gasPrice"]) > first_price
    attempts = list(tx.attempts.order_by("id").values_list("kind", "nonce", "tx_hash"))
    assert [kind for kind, _, _ in attempts] == ["signed", "bumped"]
    assert {nonce for _, nonce, _ in attempts} == {tx.nonce}
    assert attempts[0][2] == first_hash
    assert chain.w3.eth.get_transaction_count(Web3.to_checksum_address(tx.from_address)) == (
        int(tx.nonce or 0) + 1
    )


@pytest.mark.django_db
def test_a_pending_call_in_the_mempool_is_bumped_after_the_wait(chain: Chain) -> None:
    chain.settings.EVM_FEE_BUMP_AFTER_SECONDS = 0
    chain.rpc("evm_setAutomine", [False])
    try:
        tx = pubkey_call("loan-1")
        evm_transaction_send(tx_id=tx.pk)
        tx.refresh_from_db()
        first_hash = tx.tx_hash
        evm_transactions_pump()  # waited "long enough" (0 s): replaced, still one nonce
        tx.refresh_from_db()
        assert tx.tx_hash != first_hash
        chain.mine(1)
    finally:
        chain.rpc("evm_setAutomine", [True])
    pump_until_settled()
    tx.refresh_from_db()
    assert tx.status == OutboxStatus.CONFIRMED
    assert chain.w3.eth.get_transaction_receipt(HexStr(tx.tx_hash))["status"] == 1
    with pytest.raises(Exception, match="not found"):
        chain.w3.eth.get_transaction_receipt(HexStr(first_hash))


@pytest.mark.django_db
def test_the_gas_price_cap_is_never_passed(chain: Chain) -> None:
    chain.settings.EVM_FEE_BUMP_AFTER_SECONDS = 0
    chain.rpc("evm_setAutomine", [False])
    try:
        tx = pubkey_call("loan-1")
        evm_transaction_send(tx_id=tx.pk)
        tx.refresh_from_db()
        chain.settings.EVM_GAS_PRICE_CAP_WEI = int(tx.gas_price_wei or 0)
        evm_transactions_pump()
        tx.refresh_from_db()
        assert tx.attempts.count() == 1  # at the cap: no replacement, an alert
        assert Alert.objects.filter(key=f"chainwatch:outbox:{tx.pk}", title__contains="cap")
        chain.mine(1)
    finally:
        chain.rpc("evm_setAutomine", [True])
    pump_until_settled()
    tx.refresh_from_db()
    assert tx.status == OutboxStatus.CONFIRMED


@pytest.mark.django_db
def test_a_guard_that_no_longer_holds_cancels_the_pending_call_with_its_nonce(
    chain: Chain,
) -> None:
    from chainwatch.outbox import hooks

    verdicts: dict[str, str | None] = {"reason": None}
    moments: list[str] = []

    def guard(row: EvmTransaction, moment: str) -> str | None:
        moments.append(moment)
        return verdicts["reason"]

    hooks.register_send_guard("guarded", guard)
    chain.rpc("evm_setAutomine", [False])
    try:
        tx = pubkey_call("loan-1", action="guarded")
        evm_transaction_send(tx_id=tx.pk)
        tx.refresh_from_db()
        assert (tx.status, moments) == (OutboxStatus.SENT, ["sign"])
        verdicts["reason"] = "the escrow was spent"
        evm_transactions_pump()
        tx.refresh_from_db()
        assert tx.status == OutboxStatus.CANCELLING
        assert moments[-1] == "pending"
        chain.mine(1)
    finally:
        chain.rpc("evm_setAutomine", [True])
        hooks._guards.pop("guarded")
    pump_until_settled()
    tx.refresh_from_db()
    assert tx.status == OutboxStatus.CANCELLED
    mined = chain.w3.eth.get_transaction(HexStr(tx.tx_hash))
    assert (mined["to"], mined["value"], bytes(mined["input"])) == (tx.from_address, 0, b"")
    assert [a.kind for a in tx.attempts.order_by("id")] == ["signed", "cancel"]
    assert Alert.objects.filter(key=f"chainwatch:outbox:{tx.pk}", severity="critical").exists()


@pytest.mark.django_db
def test_a_refused_call_is_never_signed_and_is_queued_afresh_when_asked_again(
    chain: Chain,
) -> None:
    from chainwatch.outbox import hooks

    start = lender_nonce(chain)
    hooks.register_send_guard("guarded", lambda row, moment: "not now")
    try:
        tx = pubkey_call("loan-1", action="guarded")
        evm_transactions_pump()
        tx.refresh_from_db()
        assert (tx.status, tx.nonce, tx.tx_hash) == (OutboxStatus.REFUSED, None, "")
        assert "not now" in tx.last_error
        assert lender_nonce(chain) == start
        hooks._guards["guarded"] = lambda row, moment: None
        again = evm_transaction_enqueue(
            loan_ref="loan-1", action="guarded", function=tx.function, args=tx.args
        )
        assert again.pk == tx.pk
        assert again.status == OutboxStatus.QUEUED
        pump_until_settled()
    finally:
        hooks._guards.pop("guarded")
    tx.refresh_from_db()
    assert tx.status == OutboxStatus.CONFIRMED


@pytest.mark.django_db
def test_a_guarded_call_that_reverts_is_retried_while_its_guard_holds(chain: Chain) -> None:
    from chainwatch.outbox import hooks

    chain.settings.EVM_OUTBOX_RETRY_BASE_SECONDS = 0
    chain.settings.EVM_OUTBOX_MAX_RETRIES = 2
    loan_id, _, _ = request_loan(chain, 1)
    # Associating a hash once one is set reverts; the guard keeps saying it is due.
    tx = evm_transaction_enqueue(
        loan_ref=str(loan_id),
        action="guarded",
        function="associateLenderPreimageHash",
        args=[loan_id, "0x" + "22" * 32],
    )
    chain.lender.associate_preimage_hash(loan_id, "0x" + "11" * 32)
    hooks.register_send_guard("guarded", lambda row, moment: None)
    try:
        for _ in range(6):
            evm_transactions_pump()
        tx.refresh_from_db()
        # Reverted in estimation, retried twice (each re-estimated), then left with an alert.
        assert (tx.status, tx.retries, tx.nonce) == (OutboxStatus.REVERTED, 2, None)
        assert tx.next_retry_at is None
        assert tx.revert_reason == "lender preimage hash already set"
        assert Alert.objects.get(key=f"chainwatch:outbox:{tx.pk}").severity == "critical"
    finally:
        hooks._guards.pop("guarded")
