"""Monitoring refresh: 1,000 open transactions and 1,000 watched outpoints, batched vs one RPC
call at a time, in the same run, against the same node and database state. And fee bumping:
the time from "TX_1 refused by the mempool floor" to "package [TX_1, child] accepted" (the
child built, signed and sent by `transaction_bump` + `transaction_broadcast`), against the
time to broadcast a TX_1 the node takes at once, measured in the same run (devnode only: the
floor is set with its `devsetmempoolminfee`).

The work is `bitcoin.services.transactions_refresh`: getrawtransaction for every open
transaction and gettxout for every watched outpoint, then the monitoring rows' bookkeeping.
`batched=True` sends 500 questions per HTTP request; `batched=False` (the baseline) asks them one
by one over the same keep-alive connection.

    .venv/bin/python bench/bitcoin_bench.py [--count 1000] [--rounds 3]

It starts its own Bitcoin node (bitcoind when on PATH, else the devnode) and creates (then
drops) its own database on 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from btcloan.dev import localnodes  # noqa: E402

DB_NAME = f"btcloan_bench_bitcoin_{os.getpid()}"
PG_ADMIN = "dbname=postgres user=postgres host=127.0.0.1 port=5432"


def admin(sql: str) -> None:
    conn = psycopg2.connect(PG_ADMIN)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(sql)
    conn.close()


def start_node(workdir: Path) -> tuple[localnodes.ManagedProcess, str]:
    binary = localnodes.find_bitcoind()
    if binary:
        return localnodes.start_bitcoind(binary, datadir=workdir / "node"), "bitcoind"
    return localnodes.start_devnode(datadir=workdir / "node"), "devnode"


def make_transactions(url: str, kind: str, count: int) -> list[tuple[str, int]]:
    """`count` faucet payments (txid, vout of the payment), mined 25 to a block."""
    from bitcoin.rpc import BitcoinRPC

    rpc = BitcoinRPC(url, timeout=600)
    faucet = rpc.call("getnewaddress")
    rpc.call("generatetoaddress", 101 + count // 25, faucet)
    target = rpc.call("getnewaddress")
    made: list[tuple[str, int]] = []
    while len(made) < count:
        chunk = min(25, count - len(made))
        txids = rpc.batch([("sendtoaddress", [target, "0.001"])] * chunk)
        for txid in txids:
            if isinstance(txid, Exception):
                raise txid
        decoded = rpc.batch([("getrawtransaction", [txid, True]) for txid in txids])
        for txid, tx in zip(txids, decoded, strict=True):
            vout = next(o["n"] for o in tx["vout"] if o["scriptPubKey"].get("address") == target)
            made.append((txid, int(vout)))
        rpc.call("generatetoaddress", 1, faucet)
    return made


def seed_database(payments: list[tuple[str, int]]) -> None:
    from bitcoin.models import (
        BitcoinTransaction,
        TransactionMonitoring,
        TxPurpose,
        TxStatus,
        WatchedOutpoint,
        WatchPurpose,
    )

    txs = BitcoinTransaction.objects.bulk_create(
        BitcoinTransaction(
            txid=txid,
            raw_hex="",
            purpose=TxPurpose.OTHER,
            loan_ref=f"bench-{i}",
            status=TxStatus.IN_MEMPOOL,
        )
        for i, (txid, _vout) in enumerate(payments)
    )
    TransactionMonitoring.objects.bulk_create(
        TransactionMonitoring(transaction=tx, target_confirmations=6) for tx in txs
    )
    WatchedOutpoint.objects.bulk_create(
        WatchedOutpoint(
            txid=txid,
            vout=vout,
            purpose=WatchPurpose.OTHER,
            loan_ref=f"bench-{i}",
            target_confirmations=6,
        )
        for i, (txid, vout) in enumerate(payments)
    )


def measure(batched: bool, rounds: int, count: int) -> tuple[float, Any]:
    from bitcoin.services import transactions_refresh

    times, summary = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        summary = transactions_refresh(batched=batched)
        times.append(time.perf_counter() - start)
    assert summary is not None
    assert summary.checked_transactions == count
    assert summary.checked_outpoints == count
    assert not summary.rebroadcast
    assert not summary.unexplained_spends
    return statistics.median(times), summary


LENDER_SECRET = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"


def signed_tx1(rpc: Any, faucet: str, index: int) -> Any:
    """A loan's TX_1 at 2 sat/vB, completed by the lender (registered, signed, in the outbox)."""
    import hashlib
    import secrets

    import vaultero
    from bitcoin.models import SpendPurpose, WatchPurpose
    from bitcoin.rpc import sats_to_btc
    from bitcoin.services import collateral_lock_complete, spend_register_template, watch_outpoint

    lender = vaultero.xonly_public_key(LENDER_SECRET)
    borrower_secret = secrets.token_hex(32)
    p_b, p_l = secrets.token_bytes(32), secrets.token_bytes(32)
    keys = {"borrower_key": vaultero.xonly_public_key(borrower_secret), "lender_key": lender}
    escrow = vaultero.escrow_output(
        preimage_hash=hashlib.sha256(p_b).hexdigest(), csv_blocks=144, **keys
    )
    collateral = vaultero.collateral_output(
        preimage_hash=hashlib.sha256(p_l).hexdigest(), csv_blocks=144, **keys
    )
    deposit = 1_030_000
    address = escrow.address("regtest")
    txid = rpc.call("sendtoaddress", address, str(sats_to_btc(deposit)))
    rpc.call("generatetoaddress", 1, faucet)
    vout = next(
        o["n"]
        for o in rpc.raw_transaction(txid)["vout"]
        if o["scriptPubKey"].get("address") == address
    )
    ref = f"bench-bump-{index}"
    watch_outpoint(txid=txid, vout=vout, loan_ref=ref, purpose=WatchPurpose.ESCROW)
    template = vaultero.build_collateral_lock(
        escrow=escrow,
        outpoint=vaultero.Outpoint(txid, vout),
        value=deposit,
        collateral=collateral,
        loan_sats=1_000_000,
        origination_fee_sats=10_000,
        feerate_sat_vb=2,
        network="regtest",
    )
    spend_register_template(loan_ref=ref, purpose=SpendPurpose.COLLATERAL_LOCK, template=template)
    return collateral_lock_complete(
        loan_ref=ref,
        txid=template.txid,
        borrower_signature=vaultero.sign_input(template, borrower_secret),
        borrower_preimage=p_b,
    )


def measure_bumps(url: str, rounds: int) -> tuple[list[float], list[float]]:
    """(floor refusal -> package accepted, plain accepted broadcast) in seconds, per round."""
    from bitcoin.rpc import BitcoinRPC
    from bitcoin.services import transaction_broadcast, transaction_bump

    rpc = BitcoinRPC(url, timeout=600)
    faucet = rpc.call("getnewaddress")
    bumped, plain = [], []
    for index in range(rounds):
        rpc.call("devsetmempoolminfee", 0)
        tx1 = signed_tx1(rpc, faucet, 2 * index)
        start = time.perf_counter()
        assert transaction_broadcast(tx_id=tx1.pk).outcome == "accepted"
        plain.append(time.perf_counter() - start)

        tx1 = signed_tx1(rpc, faucet, 2 * index + 1)
        rpc.call("devsetmempoolminfee", "0.0001")  # 10 sat/vB: TX_1 at 2 is refused
        start = time.perf_counter()
        assert transaction_broadcast(tx_id=tx1.pk).outcome == "fee_too_low"
        child = transaction_bump(tx_id=tx1.pk)
        assert child is not None
        assert transaction_broadcast(tx_id=child.pk).outcome == "accepted"
        bumped.append(time.perf_counter() - start)
        rpc.call("generatetoaddress", 1, faucet)
    rpc.call("devsetmempoolminfee", 0)
    return bumped, plain


def bench_line(name: str, value: float, unit: str) -> None:
    """A machine-readable figure for bench/run_all.py, beside the human output."""
    print("BENCH " + json.dumps({"name": name, "value": round(value, 3), "unit": unit}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bumps", type=int, default=20, help="floor -> package rounds")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bitcoin-bench-"))
    admin(f'CREATE DATABASE "{DB_NAME}"')
    node, kind = start_node(workdir)
    try:
        os.environ.update(
            DJANGO_SETTINGS_MODULE="btcloan.settings",
            DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
            BITCOIN_RPC_URL=node.url,
            BTCLOAN_VAR_DIR=str(workdir / "var"),
            LOG_LEVEL="WARNING",
            LENDER_BTC_PRIVATE_KEY=LENDER_SECRET,
        )
        import django

        django.setup()
        from django.core.management import call_command

        from bitcoin.rpc import BitcoinRPC, set_client

        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        payments = make_transactions(node.url, kind, args.count)
        print(f"node: {kind}; made {len(payments)} transactions in "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip
        seed_database(payments)
        set_client(BitcoinRPC(node.url, timeout=600))

        batched, _ = measure(True, args.rounds, args.count)
        single, _ = measure(False, args.rounds, args.count)
        questions = 2 * args.count
        print(f"refresh {args.count} transactions + {args.count} outpoints "
              f"(median of {args.rounds}):")  # fmt: skip
        print(f"  batched (500 per request): {batched:8.3f} s  {questions / batched:9.0f} calls/s")
        print(f"  one call at a time:        {single:8.3f} s  {questions / single:9.0f} calls/s")
        print(f"  batched is {single / batched:.1f}x faster")
        bench_line("bitcoin: monitor refresh, batched", questions / batched, "calls/s")
        bench_line(
            "bitcoin: monitor refresh, one call at a time (baseline)", questions / single, "calls/s"
        )
        if kind == "devnode":
            report_bumps(*measure_bumps(node.url, args.bumps))
    finally:
        node.stop()
        from django.db import connections

        connections.close_all()
        admin(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


def report_bumps(bumped: list[float], plain: list[float]) -> None:
    def p(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    print(f"TX_1 refused by the floor -> package [TX_1, child] accepted ({len(bumped)} rounds):")
    print(f"  p50 {p(bumped, 0.5):7.1f} ms  p95 {p(bumped, 0.95):7.1f} ms")
    print(f"  baseline, TX_1 accepted at once: p50 {p(plain, 0.5):7.1f} ms  "
          f"p95 {p(plain, 0.95):7.1f} ms")  # fmt: skip
    print(f"  the floor costs {p(bumped, 0.5) / p(plain, 0.5):.1f}x a plain broadcast (p50)")
    bench_line("bitcoin: TX_1 refused by the floor -> package accepted, p50", p(bumped, 0.5), "ms")
    bench_line("bitcoin: TX_1 accepted at once (baseline), p50", p(plain, 0.5), "ms")


if __name__ == "__main__":
    main()
