"""chainwatch throughput and latency on anvil, with the real contracts and PostgreSQL.

Emits >= 20,000 events (requestLoan from as many borrowers: one event each, decoded by the real
pipeline), then prints, from the same run:
- live: p50/p99 delay from a block being mined to its events being handed on (committed),
  with a poller process running alongside the miner (confirmations 0, 50 ms between passes);
- catch-up: events/s through the whole pipeline (eth_getLogs, decode, bulk insert with block
  hashes and cursor, hand-off with each event's status compare-and-set, committed in chunks)
  over the whole range from scratch, and of its indexing alone (eth_getLogs, decode, insert,
  cursor: `index_pass`, the next window read while one is stored), windows growing from 8
  blocks;
- baseline: events/s of the node's raw eth_getLogs + decode (the indexer's decoder) over the
  same range, in windows of the indexer's final size, one after another.
The catch-up and the baseline are run --repeat times (default 3), alternating, and each
figure is the best of its runs (on a shared machine a single run mostly measures the
neighbours); the ratios compare those best figures, all from this one bench run.

    .venv/bin/python bench/chainwatch_bench.py [--events 20000] [--per-block 90] [--repeat 3]

It starts its own anvil and creates (then drops) its own database on 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2
import requests

if TYPE_CHECKING:
    from web3 import Web3

    from chainwatch.indexer.config import WatchConfig

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

DB_NAME = f"btcloan_bench_chainwatch_{os.getpid()}"
PG_ADMIN = "dbname=postgres user=postgres host=127.0.0.1 port=5432"


class Rpc:
    """Batched JSON-RPC over one HTTP session."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def call(self, method: str, *params: Any) -> Any:
        reply = self.session.post(
            self.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
        ).json()
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def batch(self, method: str, params_list: list[list[Any]]) -> list[Any]:
        body: Any = [
            {"jsonrpc": "2.0", "id": i, "method": method, "params": p}
            for i, p in enumerate(params_list)
        ]
        replies = sorted(self.session.post(self.url, json=body).json(), key=lambda r: r["id"])
        errors = [r["error"] for r in replies if "error" in r]
        if errors:
            raise RuntimeError(f"{method}: {errors[0]} (+{len(errors) - 1} more)")
        return [r["result"] for r in replies]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def setup_database() -> None:
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{DB_NAME}"')
    admin.close()


def drop_database() -> None:
    from django.db import connections

    connections.close_all()
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    admin.close()


def bench_line(name: str, value: float, unit: str) -> None:
    """A machine-readable figure for bench/run_all.py, beside the human output."""
    print("BENCH " + json.dumps({"name": name, "value": round(value, 3), "unit": unit}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument(
        "--per-block", type=int, default=90, help="requestLoan txs a block (94 fit in 30M gas)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="catch-up and baseline runs")
    parser.add_argument("--poller", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.poller:
        poller_main()
        return

    from btcloan.dev import localnodes

    workdir = Path(tempfile.mkdtemp(prefix="btcloan-cw-bench-"))
    anvil = localnodes.start_anvil(log_path=workdir / "anvil.log")
    setup_database()
    os.environ.update(
        DJANGO_SETTINGS_MODULE="btcloan.settings",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        REDIS_URL="",  # single-flight falls back to a file lock in the bench's own var dir
        CELERY_BROKER_URL="memory://",
        CELERY_RESULT_BACKEND="cache+memory://",
        BTCLOAN_VAR_DIR=str(workdir / "var"),
        EVM_RPC_URL=anvil.url,
        EVM_CHAIN_ID=str(anvil.extra["chain_id"]),
        EVM_CONFIRMATIONS="0",
        LOG_LEVEL="WARNING",
    )
    try:
        run(anvil.url, args.events, args.per_block, args.repeat)
    finally:
        drop_database()
        anvil.stop()


class NoopConsumer:
    """The consumer side of the hand-off costs nothing here: what is measured is chainwatch."""

    def handle_event(self, event: Any) -> None:
        pass

    def handle_reorg(self, notice: Any) -> None:
        pass


def poller_main() -> None:
    """The child process: the poller loop (index, then hand on) until told to stop."""
    import django

    django.setup()
    from chainwatch.client import get_web3
    from chainwatch.indexer.config import watch_config
    from chainwatch.indexer.consumer import register_event_consumer
    from chainwatch.indexer.delivery import deliver_events
    from chainwatch.indexer.sync import index_pass

    register_event_consumer(NoopConsumer())
    stop = Path(os.environ["CW_BENCH_STOP"])
    cfg, w3 = watch_config(), get_web3()
    Path(os.environ["CW_BENCH_READY"]).touch()
    while True:
        finished = stop.exists()  # one more pass after the last block
        index_pass(w3, cfg, max_seconds=5)
        deliver_events(chain_id=cfg.chain_id, max_seconds=5)
        if finished:
            return
        time.sleep(0.05)


def run(url: str, total: int, per_block: int, repeat: int) -> None:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from eth_utils import keccak, to_checksum_address
    from web3 import Web3

    from btcloan.dev.contracts import deploy_for_tests
    from chainwatch.client import use_web3
    from chainwatch.indexer.config import watch_config
    from chainwatch.indexer.consumer import register_event_consumer
    from chainwatch.models import ChainCursor, EvmEvent
    from chainwatch.outbox.calls import encode_call

    call_command("migrate", verbosity=0)
    rpc = Rpc(url)
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 60}))
    use_web3(w3)
    deployed = deploy_for_tests(w3)
    settings.LOAN_CONTRACT_ADDRESS = deployed.loan_address
    settings.ETHERSWAP_CONTRACT_ADDRESS = deployed.etherswap_address
    settings.EVM_START_BLOCK = int(w3.eth.block_number) + 1
    settings.CHAINWATCH_LOG_WINDOW = 50
    cfg = watch_config()

    # --- the borrowers: funded, impersonated (no signing needed), one request each -------
    borrowers = [to_checksum_address(keccak(text=f"bench borrower {i}")[12:]) for i in range(total)]
    for start in range(0, total, 1000):
        rpc.batch("anvil_setBalance", [[a, hex(10**19)] for a in borrowers[start : start + 1000]])
    rpc.call("anvil_autoImpersonateAccount", True)
    rpc.call("evm_setAutomine", False)
    data = encode_call(
        "BtcCollateralLoan",
        "requestLoan",
        [10**16, "bcrt1p" + "q" * 58, "ab" * 32, "0x" + "11" * 32, "0x" + "22" * 32, 0],
    )
    fee = hex(10**15)
    gas = hex(340_000)  # requestLoan uses about 316k-333k

    register_event_consumer(NoopConsumer())

    # --- live: mine while a poller process runs; measure mined -> handed on ------------------
    mined_at: dict[int, float] = {}
    stop = Path(settings.VAR_DIR) / "stop-poller"
    env = dict(os.environ)
    env.update(
        LOAN_CONTRACT_ADDRESS=deployed.loan_address,
        ETHERSWAP_CONTRACT_ADDRESS=deployed.etherswap_address,
        EVM_START_BLOCK=str(settings.EVM_START_BLOCK),
        CHAINWATCH_LOG_WINDOW="50",
        CW_BENCH_STOP=str(stop),
        CW_BENCH_READY=str(stop.with_name("poller-ready")),
    )
    poller = subprocess.Popen([sys.executable, __file__, "--poller"], env=env)
    while not stop.with_name("poller-ready").exists():  # mine only once it polls
        if poller.poll() is not None:
            raise SystemExit("the poller process failed to start")
        time.sleep(0.05)
    started = time.monotonic()
    for start in range(0, total, per_block):
        chunk = borrowers[start : start + per_block]
        rpc.batch(
            "eth_sendTransaction",
            [
                [
                    {
                        "from": a,
                        "to": cfg.contracts["BtcCollateralLoan"],
                        "data": data,
                        "value": fee,
                        "gas": gas,
                    }
                ]
                for a in chunk
            ],
        )
        # Full blocks would push the EIP-1559 base fee up 12.5% a block: keep it flat.
        rpc.call("anvil_setNextBlockBaseFeePerGas", hex(10**9))
        rpc.call("evm_mine")
        mined_at[int(rpc.call("eth_blockNumber"), 16)] = time.time()
    while int(rpc.call("txpool_status")["pending"], 16):  # what a full block left over
        rpc.call("evm_mine")
        mined_at[int(rpc.call("eth_blockNumber"), 16)] = time.time()
    emitted = time.monotonic() - started
    stop.touch()
    if poller.wait(timeout=600) != 0:
        raise SystemExit("the poller process failed")
    events = EvmEvent.objects.filter(event_name="LoanRequested")
    first_block, last_block = min(mined_at), max(mined_at)
    delays = [
        handed_at.timestamp() - mined_at[block]
        for block, handed_at in events.values_list("block_number", "processed_at")
        if handed_at is not None
    ]
    assert len(delays) == total, f"{len(delays)} events handed on, {total} emitted"

    # --- catch-up and baseline, alternating; the best of each -------------------------------
    runs = [catch_up_and_baseline(rpc, w3, cfg, total, last_block) for _ in range(repeat)]
    t_index, t_pipeline, t_raw = (min(r[i] for r in runs) for i in range(3))
    window = ChainCursor.objects.get().window_size

    blocks = last_block - first_block + 1
    print(
        f"chainwatch bench: {total} LoanRequested events in {blocks} blocks "
        f"({per_block}/block), PostgreSQL, anvil"
    )
    print(f"  emitted in {emitted:.1f} s ({total / emitted:,.0f} events/s by the emitter)")
    print(
        f"  live   mined -> handed on: p50 {statistics.median(delays) * 1000:,.0f} ms, "
        f"p99 {percentile(delays, 0.99) * 1000:,.0f} ms  (a poller process alongside, "
        f"50 ms between passes, 0 confirmations)"
    )
    print(f"  catch-up, best of {repeat} runs each:")
    print(
        f"  pipeline (getLogs+decode+store+hand-off): {total / t_pipeline:>9,.0f} events/s "
        f"({t_pipeline:.2f} s)"
    )
    print(
        f"  indexing (getLogs+decode+store):          {total / t_index:>9,.0f} events/s "
        f"({t_index:.2f} s)"
    )
    print(
        f"  baseline (raw eth_getLogs+decode):        {total / t_raw:>9,.0f} events/s "
        f"({t_raw:.2f} s, final window {window} blocks)"
    )
    print(
        f"  pipeline / baseline: {t_raw / t_pipeline:.2f}; "
        f"indexing / baseline: {t_raw / t_index:.2f}"
    )
    bench_line("chainwatch: live, mined -> handed on (p50)", statistics.median(delays) * 1000, "ms")
    bench_line("chainwatch: live, mined -> handed on (p99)", percentile(delays, 0.99) * 1000, "ms")
    bench_line("chainwatch: catch-up pipeline", total / t_pipeline, "events/s")
    bench_line("chainwatch: catch-up indexing", total / t_index, "events/s")
    bench_line("chainwatch: raw eth_getLogs + decode (baseline)", total / t_raw, "events/s")


def catch_up_and_baseline(
    rpc: Rpc, w3: Web3, cfg: WatchConfig, total: int, last_block: int
) -> tuple[float, float, float]:
    """One catch-up over the whole range from scratch, then the baseline over the same range:
    (indexing s, pipeline s, baseline s)."""
    from django.conf import settings

    from chainwatch.indexer.decoding import default_decoder
    from chainwatch.indexer.delivery import deliver_events
    from chainwatch.indexer.sync import index_pass
    from chainwatch.models import ChainCursor, EvmEvent, IndexedBlock

    EvmEvent.objects.all().delete()
    IndexedBlock.objects.all().delete()
    ChainCursor.objects.all().delete()
    settings.CHAINWATCH_LOG_WINDOW = 8
    t0 = time.monotonic()
    summary = index_pass(w3, cfg, max_seconds=3600)
    t_index = time.monotonic() - t0
    delivery = deliver_events(chain_id=cfg.chain_id, max_seconds=3600)
    t_pipeline = time.monotonic() - t0
    assert summary.inserted == total, summary
    assert delivery.delivered == total, delivery

    decoder = default_decoder()
    addresses = list(cfg.contracts.values())
    window = ChainCursor.objects.get().window_size
    t0 = time.monotonic()
    decoded = 0
    position = cfg.start_block
    while position <= last_block:
        upper = min(last_block, position + window - 1)
        logs = rpc.call(
            "eth_getLogs", {"address": addresses, "fromBlock": hex(position), "toBlock": hex(upper)}
        )
        decoded += len([decoder.decode(log) for log in logs])
        position = upper + 1
    t_raw = time.monotonic() - t0
    assert decoded == total
    return t_index, t_pipeline, t_raw


if __name__ == "__main__":
    main()
