"""The reconciler and the watchdog at scale: N open loans, nodes behind a latency proxy.

    .venv/bin/python bench/scale_bench.py [--loans 1000,10000] [--rtt-ms 0,50]
    .venv/bin/python bench/scale_bench.py --loans 1000,10000,100000   # ~10 min more here

For each N (ascending; loans are added to reach it) the open loans are bulk-created in
PostgreSQL (its own database, dropped after) and the same loans are written into the loan
contract's storage on this run's anvil (`anvil_setStorageAt`: the `loans` mapping, so
`getLoan` returns what the database says), their escrow and collateral outpoints real unspent
outputs on this run's Bitcoin node (the devnode, or bitcoind when installed). A small asyncio
TCP proxy on loopback sits in front of each node and delays every byte by half the round-trip
time each way (0 and 50 ms by default). The passes are called directly, in this process, with
the clients a worker builds from the settings (pointed at the proxies).

Per pass it prints: seconds, HTTP round trips and JSON-RPC calls (counted by the proxies), SQL
statements, Celery tasks enqueued (counted, not sent) and alert rows written.
- reconcile: passes from a reset cursor until one full sweep of every open loan is done
  (the pass budget is LOAN_RECONCILE_PASS_SECONDS: a sweep longer than it takes several
  passes); the longest pass is what must stay inside the 600 s single-flight timeout.
- watchdog: the first pass (every loan new to it), a pass with nothing changed, a pass after
  1% of the loans changed, and a pass where every step still due reaches its redrive time.
- baseline, same run: `getLoan` through web3 and `gettxout` one loan at a time (the
  reconciler's old way), over a sample, as seconds per loan.
Goals (issue 18): a 10,000-loan sweep <= 10 s and a 100,000-loan sweep <= 100 s at 50 ms, no
pass past the lease; a watchdog pass at 100,000 loans <= 5 s with 0 tasks and 0 alert writes
when nothing changed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

DB_NAME = f"btcloan_bench_scale_{os.getpid()}"
PG_ADMIN = "dbname=postgres user=postgres host=127.0.0.1 port=5432"
AMOUNT_WEI = 10**16
JSON = {"Content-Type": "application/json"}
UTXO_POOL = 200  # real outputs the loans' escrows and collaterals point at (shared)
# (status, Bitcoin stage, share of the loans): a loan book at cruising speed.
MIX = (
    ("requested", "escrow_confirmed", 0.20),
    ("offered", "presigned", 0.10),
    ("active", "collateral_confirmed", 0.65),
    ("repayment_in_progress", "collateral_confirmed", 0.05),
)
CONTRACT_STATUS = {
    "requested": 0,
    "offered": 1,
    "active": 2,
    "repayment_in_progress": 4,
}


def bench_line(name: str, value: float, unit: str, **extra: Any) -> None:
    """A machine-readable figure for bench/run_all.py, beside the human output."""
    print("BENCH " + json.dumps({"name": name, "value": round(value, 3), "unit": unit, **extra}))


# --- the latency proxy ------------------------------------------------------------------------
class LatencyProxy:
    """A TCP proxy on loopback that delivers every chunk `delay` seconds after it arrived (half
    the RTT each way, order kept, no head-of-line sleep), counting HTTP requests and
    JSON-RPC calls (`"method"` keys) of the traffic towards the node."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.one_way = 0.0
        self.requests = 0
        self.calls = 0
        self.port = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", 0, limit=2**20)
        )
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def set_rtt(self, milliseconds: float) -> None:
        self.one_way = milliseconds / 2000

    def reset_counts(self) -> None:
        self.requests = self.calls = 0

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(
            self._pipe(reader, up_writer, count=True),
            self._pipe(up_reader, writer, count=False),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    break
                wait = due - self.loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(deliver())
        tail = b""
        while True:
            chunk = await reader.read(2**16)
            if count and chunk:
                seen = tail + chunk
                self.requests += seen.count(b"POST ") - tail.count(b"POST ")
                self.calls += seen.count(b'"method"') - tail.count(b'"method"')
                tail = chunk[-16:]
            await queue.put((self.loop.time() + self.one_way, chunk))
            if not chunk:
                break
        await sender


# --- counting what a pass does ---------------------------------------------------------------
class Meter:
    def __init__(self, proxies: dict[str, LatencyProxy]) -> None:
        self.proxies = proxies
        self.sql = 0
        self.alert_writes = 0
        self.tasks: Counter[str] = Counter()

    def sql_wrapper(self, execute: Callable[..., Any], sql: str, *args: Any) -> Any:
        self.sql += 1
        lowered = sql.lstrip()[:40].lower()
        if "btcloan_alert" in sql[:80] and lowered.startswith(("insert", "update")):
            self.alert_writes += 1
        return execute(sql, *args)

    @contextmanager
    def measure(self) -> Iterator[dict[str, Any]]:
        from django.db import connection

        for proxy in self.proxies.values():
            proxy.reset_counts()
        self.sql = self.alert_writes = 0
        self.tasks.clear()
        figures: dict[str, Any] = {}
        started = time.perf_counter()
        with connection.execute_wrapper(self.sql_wrapper):
            yield figures
        figures.update(
            seconds=time.perf_counter() - started,
            round_trips=sum(p.requests for p in self.proxies.values()),
            rpc_calls=sum(p.calls for p in self.proxies.values()),
            sql=self.sql,
            tasks=sum(self.tasks.values()),
            alert_writes=self.alert_writes,
        )


def count_tasks(meter: Meter) -> None:
    """Tasks are counted and dropped: the bench measures the passes, not the steps."""
    from celery.app.task import Task

    def apply_async(task: Task, *args: Any, **kwargs: Any) -> None:
        meter.tasks[task.name] += 1

    Task.apply_async = apply_async


# --- the loans, in PostgreSQL and in the contract's storage ----------------------------------
def mapping_slot(w3: Any, loan_address: str, loan_id: int, borrower: str) -> int:
    """The storage slot of the `loans` mapping, found from one real requested loan."""
    from eth_utils import keccak

    for slot in range(64):
        key = keccak(loan_id.to_bytes(32, "big") + slot.to_bytes(32, "big"))
        word = w3.eth.get_storage_at(loan_address, key)
        if word[-20:] == bytes.fromhex(borrower[2:].lower()):
            return slot
    raise RuntimeError("the loans mapping was not found in the first 64 slots")


def loan_storage(slot: int, loan_id: int, fields: dict[str, Any]) -> list[tuple[str, str]]:
    """(slot, value) pairs writing a Loan struct: address, pubkey string (64 bytes: the long
    form), amount, bond, status, H_B, H_L, txid, vout, offer/activation/repayment blocks."""
    from eth_utils import keccak

    base = int.from_bytes(keccak(loan_id.to_bytes(32, "big") + slot.to_bytes(32, "big")), "big")
    text = fields["pubkey"].encode()
    data_at = int.from_bytes(keccak((base + 1).to_bytes(32, "big")), "big")
    words = {
        base: int(fields["borrower"], 16),
        base + 1: len(text) * 2 + 1,
        data_at: int.from_bytes(text[:32], "big"),
        data_at + 1: int.from_bytes(text[32:], "big"),
        base + 2: fields["amount"],
        base + 3: fields["amount"] // 10,
        base + 4: fields["status"],
        base + 5: int(fields["hash_b"], 16),
        base + 6: int(fields["hash_l"], 16),
        base + 7: int(fields["txid"], 16),
        base + 8: fields["vout"],
        base + 9: fields["offer_block"] or 0,
        base + 10: fields["activation_block"] or 0,
        base + 11: fields["repayment_block"] or 0,
    }
    return [(hex(k), "0x" + f"{v:064x}") for k, v in words.items()]


def write_storage(url: str, address: str, writes: list[tuple[str, str]]) -> None:
    import requests

    session = requests.Session()
    for start in range(0, len(writes), 2000):
        body = [
            {"jsonrpc": "2.0", "id": i, "method": "anvil_setStorageAt", "params": [address, k, v]}
            for i, (k, v) in enumerate(writes[start : start + 2000])
        ]
        answers = session.post(url, data=json.dumps(body), headers=JSON, timeout=300).json()
        errors = [a["error"] for a in answers if "error" in a]
        if errors:
            raise RuntimeError(f"anvil_setStorageAt: {errors[0]}")


def add_loans(ctx: dict[str, Any], first: int, last: int) -> None:
    """Loans first..last (on-chain ids), in the database and in the contract's storage."""
    import requests

    from loans.models import Loan

    rng = random.Random(first)
    evm_head = ctx["evm_head"]
    rows, writes = [], []
    for onchain_id in range(first, last + 1):
        status, stage = pick_state(onchain_id)
        utxo = ctx["utxos"][onchain_id % len(ctx["utxos"])]
        fields = {
            "borrower": f"0x{rng.getrandbits(160):040x}",
            "pubkey": f"{rng.getrandbits(256):064x}",
            "amount": AMOUNT_WEI,
            "status": CONTRACT_STATUS[status],
            "hash_b": f"{rng.getrandbits(256):064x}",
            "hash_l": f"{rng.getrandbits(256):064x}",
            "txid": utxo,
            "vout": 0,
            "offer_block": evm_head - 5 if status != "requested" else None,
            "activation_block": evm_head - 4
            if status in ("active", "repayment_in_progress")
            else None,
            "repayment_block": evm_head - 3 if status == "repayment_in_progress" else None,
        }
        writes += loan_storage(ctx["slot"], onchain_id, fields)
        rows.append(loan_row(ctx, onchain_id, status, stage, fields))
    write_storage(ctx["evm_url"], ctx["loan_address"], writes)
    Loan.objects.bulk_create(rows, batch_size=5000)
    # The writes apply to the latest state: mine past them so the safe block (head - 2, as
    # indexed) holds them.
    from chainwatch.models import ChainCursor
    from loans.chain import evm_head

    mine = [{"jsonrpc": "2.0", "id": 1, "method": "anvil_mine", "params": ["0x3"]}]
    requests.post(ctx["evm_url"], data=json.dumps(mine), headers=JSON, timeout=60)
    ChainCursor.objects.filter(chain_id=ctx["chain_id"]).update(block_number=evm_head() - 2)


def pick_state(onchain_id: int) -> tuple[str, str]:
    point = (onchain_id * 7919 % 1000) / 1000
    for status, stage, share in MIX:
        if point < share:
            return status, stage
        point -= share
    return MIX[-1][0], MIX[-1][1]


def loan_row(ctx: dict[str, Any], onchain_id: int, status: str, stage: str, f: dict[str, Any]):
    from eth_utils import to_checksum_address

    from loans.models import Loan

    collateral = stage == "collateral_confirmed"
    return Loan(
        chain_id=ctx["chain_id"],
        contract_address=ctx["loan_address"],
        onchain_id=onchain_id,
        status=status,
        bitcoin_stage=stage,
        borrower_address=to_checksum_address(f["borrower"]),
        borrower_btc_pubkey=f["pubkey"],
        lender_btc_pubkey="aa" * 32,
        amount_wei=AMOUNT_WEI,
        bond_wei=AMOUNT_WEI // 10 if status != "requested" else None,
        loan_sats=1_000_000,
        preimage_hash_borrower=f["hash_b"],
        preimage_hash_lender=f["hash_l"],
        escrow_address=f"bcrt1p{onchain_id:058d}",
        escrow_internal_key="bb" * 32,
        escrow_txid=f["txid"],
        escrow_vout=0,
        escrow_value_sats=1_200_000,
        escrow_confirmed_height=ctx["btc_height"],
        collateral_txid=f["txid"] if collateral else "",
        collateral_vout=1 if collateral else None,
        collateral_confirmed_height=ctx["btc_height"] if collateral else None,
        collateral_lock_feerate=2,
        # Far deadlines: a loan book where nothing is due (the steady state the goals name).
        loan_duration=500_000,
        timelock_borrower=50_000,
        timelock_btc_escrow=60_000,
        timelock_lender=50_000,
        timelock_btc_collateral=600_000,
        escrow_csv_blocks=60_000,
        collateral_csv_blocks=60_000,
        request_block=ctx["evm_head"] - 6,
        offer_block=f["offer_block"],
        activation_block=f["activation_block"],
        repayment_block=f["repayment_block"],
    )


# --- the passes -------------------------------------------------------------------------------
def reconcile_sweep(meter: Meter) -> dict[str, Any]:
    from loans.models import PassCursor
    from loans.services.reconciler import reconcile_run

    PassCursor.objects.all().delete()
    passes = []
    total: Counter[str] = Counter()
    while True:
        with meter.measure() as figures:
            if os.environ.get("SCALE_BENCH_PROFILE"):  # where a pass spends its time
                import cProfile

                with cProfile.Profile() as profile:
                    summary = reconcile_run()
                profile.print_stats("cumulative")
            else:
                summary = reconcile_run()
        passes.append(figures["seconds"])
        total.update({k: v for k, v in figures.items() if k != "seconds"})
        total["checked"] += summary.checked
        total["alerted"] += len(summary.alerted)
        if summary.sweep_completed or summary.checked == 0:
            break
    if total["alerted"]:  # the bench's loans must agree with the chains: say why not
        from btcloan.models import Alert

        first = Alert.objects.order_by("id").first()
        print("  DISAGREEMENT:", first.details if first else None, flush=True)
    return {"seconds": sum(passes), "passes": len(passes), "longest": max(passes), **total}


def watchdog_pass(meter: Meter) -> dict[str, Any]:
    from loans.services.watchdog import watchdog_run

    with meter.measure() as figures:
        summary = watchdog_run()
    figures["looked_at"] = summary.loans
    return figures


def redrive_pass(meter: Meter) -> dict[str, Any]:
    """Every loan with a step still due reaches its redrive time at once (the worst case: in
    a deployment their redrive times are spread by when each was last looked at)."""
    from django.utils import timezone

    from loans.models import LoanWatch

    LoanWatch.objects.exclude(redrive_at=None).update(redrive_at=timezone.now())
    return watchdog_pass(meter)


def touch(fraction: float) -> int:
    """A handler's write on `fraction` of the open loans (their revision moves)."""
    from loans.models import Loan

    ids = list(Loan.objects.values_list("pk", flat=True))
    chosen = ids[:: max(int(1 / fraction), 1)]
    Loan.objects.filter(pk__in=chosen).update(last_event_log_index=1)
    return len(chosen)


def baseline(ctx: dict[str, Any], sample: int) -> dict[str, float]:
    """The old reconciler's reads: getLoan through web3 and gettxout, one loan at a time."""
    from bitcoin.rpc import get_client
    from loans.chain import loan_contracts

    contracts = loan_contracts()
    client = get_client()
    started = time.perf_counter()
    for onchain_id in range(1, sample + 1):
        contracts.get_loan(onchain_id, block=ctx["evm_head"])
        client.tx_out(ctx["utxos"][onchain_id % len(ctx["utxos"])], 1)
    return {"seconds_per_loan": (time.perf_counter() - started) / sample}


# --- the run ----------------------------------------------------------------------------------
def setup_chains(workdir: Path) -> dict[str, Any]:
    from django.conf import settings
    from web3 import Web3

    from bitcoin.rpc import BitcoinRPC, set_client
    from btcloan.dev import localnodes
    from btcloan.dev.contracts import deploy_for_tests
    from chainwatch.client import reset_web3, use_web3
    from chainwatch.evm.deploy import TimelockParameters
    from chainwatch.evm.driver import BorrowerActions
    from chainwatch.models import ChainCursor

    anvil = localnodes.start_anvil(log_path=workdir / "anvil.log")
    binary = localnodes.find_bitcoind()
    if binary:
        node = localnodes.start_bitcoind(binary, datadir=workdir / "bitcoind")
    else:
        node = localnodes.start_devnode(datadir=workdir / "devnode")
    ctx: dict[str, Any] = {"processes": [anvil, node], "evm_url": anvil.url}
    w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 300}))
    deployed = deploy_for_tests(
        w3,
        parameters=TimelockParameters(
            loan_duration=500_000,
            t_borrower=50_000,
            t_btc_escrow=60_000,
            t_lender=50_000,
            t_btc_collateral=600_000,
        ),
    )
    # One real request shows where the `loans` mapping lives; the bench's loans start at 2.
    borrower = BorrowerActions(deployed.contracts, localnodes.ANVIL_DEFAULT_KEYS[1])
    borrower.request_loan(
        amount_wei=AMOUNT_WEI,
        btc_address="bcrt1p" + "q" * 58,
        btc_pubkey="cc" * 32,
        preimage_hash="dd" * 32,
        escrow_txid="ee" * 32,
        escrow_vout=0,
    )
    ctx["slot"] = mapping_slot(w3, deployed.loan_address, 1, borrower.address)
    w3.provider.make_request("anvil_mine", [hex(20)])  # type: ignore[arg-type]
    ctx["evm_head"] = int(w3.eth.block_number)
    ctx["chain_id"] = deployed.chain_id
    ctx["loan_address"] = deployed.loan_address

    rpc = BitcoinRPC(node.url)
    faucet = rpc.call("getnewaddress")
    rpc.call("generatetoaddress", 120, faucet)
    sent = [str(t) for t in rpc.batch([("sendtoaddress", (faucet, "0.1"))] * UTXO_POOL)]
    rpc.call("generatetoaddress", 1, faucet)
    # The wallet spends earlier change in later sends: keep the transactions whose two
    # outputs (the escrow's vout 0, the collateral's vout 1) are both unspent.
    found = rpc.tx_outs([(txid, vout) for txid in sent for vout in (0, 1)])
    ctx["utxos"] = [t for i, t in enumerate(sent) if found[2 * i] and found[2 * i + 1]]
    print(f"{len(ctx['utxos'])} transactions with both outputs unspent", flush=True)
    ctx["btc_height"] = rpc.block_count()

    proxies = {"evm": LatencyProxy(_port(anvil.url)), "bitcoin": LatencyProxy(_port(node.url))}
    ctx["proxies"] = proxies
    settings.EVM_RPC_URL = f"http://127.0.0.1:{proxies['evm'].port}"
    settings.EVM_CHAIN_ID = deployed.chain_id
    settings.LOAN_CONTRACT_ADDRESS = deployed.loan_address
    settings.ETHERSWAP_CONTRACT_ADDRESS = deployed.etherswap_address
    settings.EVM_START_BLOCK = deployed.block_number
    settings.EVM_CONFIRMATIONS = 2
    settings.BITCOIN_RPC_URL = node.url.replace(
        f":{_port(node.url)}", f":{proxies['bitcoin'].port}"
    )
    settings.BITCOIN_NETWORK = "regtest"
    use_web3(None)
    reset_web3()
    set_client(None)
    ChainCursor.objects.create(chain_id=deployed.chain_id, block_number=ctx["evm_head"] - 2)
    return ctx


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def show(label: str, n: int, rtt: float, figures: dict[str, Any]) -> None:
    keys = ("seconds", "round_trips", "rpc_calls", "sql", "tasks", "alert_writes")
    cells = "  ".join(
        f"{k}={figures[k]:.2f}" if k == "seconds" else f"{k}={figures[k]}" for k in keys
    )
    extra = {k: v for k, v in figures.items() if k not in keys}
    print(f"  {label:<22} N={n:>7,} rtt={rtt:>3.0f} ms  {cells}  {extra}", flush=True)
    bench_line(f"{label} N={n} rtt={rtt:.0f}ms", figures["seconds"], "s")


def run(args: argparse.Namespace, workdir: Path) -> None:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    ctx = setup_chains(workdir)
    try:
        measure_all(args, ctx)
    finally:
        for process in ctx["processes"]:
            process.stop()


def measure_all(args: argparse.Namespace, ctx: dict[str, Any]) -> None:
    from django.conf import settings

    from loans.services.watchdog import watchdog_run

    meter = Meter(ctx["proxies"])
    count_tasks(meter)
    # Longer than a run: "no change" means no redrive due either; the redrive's own cost is
    # measured apart ("redrive due"), once per N.
    settings.LOAN_WATCHDOG_REDRIVE_SECONDS = 3600
    have = 1  # loan 1 is the real request (not in the database)
    curve = []
    for n in sorted(args.loans):
        started = time.perf_counter()
        add_loans(ctx, have + 1, n + 1)
        have = n + 1
        print(f"{n:,} open loans created in {time.perf_counter() - started:.1f} s", flush=True)
        with meter.measure() as first:
            watchdog_run()
        show("watchdog first look", n, 0, first)
        for rtt in args.rtt_ms:
            for proxy in ctx["proxies"].values():
                proxy.set_rtt(rtt)
            sweep = reconcile_sweep(meter)
            show("reconcile sweep", n, rtt, sweep)
            quiet = watchdog_pass(meter)
            show("watchdog, no change", n, rtt, quiet)
            changed = touch(0.01)
            busy = watchdog_pass(meter)
            busy["changed"] = changed
            show("watchdog, 1% changed", n, rtt, busy)
            if n == min(args.loans):
                base = baseline(ctx, min(200, n))
                print(f"  baseline one by one  rtt={rtt:.0f} ms  {base}", flush=True)
                bench_line(
                    f"baseline one-by-one rtt={rtt:.0f}ms", base["seconds_per_loan"], "s/loan"
                )
            curve.append((n, rtt, sweep, quiet))
        for proxy in ctx["proxies"].values():
            proxy.set_rtt(0)
        redrive = redrive_pass(meter)
        show("watchdog, redrive due", n, 0, redrive)
    print("\ncost curve (per pass):")
    print(
        f"{'open loans':>10} {'rtt':>4} {'sweep s':>8} {'passes':>6} {'longest':>8} "
        f"{'rpc calls':>9} {'round trips':>11} {'sql':>7} {'watchdog s':>10} {'wd sql':>6}"
    )
    for n, rtt, sweep, quiet in curve:
        print(
            f"{n:>10,} {rtt:>4.0f} {sweep['seconds']:>8.2f} {sweep['passes']:>6} "
            f"{sweep['longest']:>8.2f} {sweep['rpc_calls']:>9,} {sweep['round_trips']:>11,} "
            f"{sweep['sql']:>7,} {quiet['seconds']:>10.3f} {quiet['sql']:>6}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--loans", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10_000]
    )
    parser.add_argument(
        "--rtt-ms", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 50.0]
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="btcloan-scale-bench-"))
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{DB_NAME}"')
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "btcloan.settings",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
            "REDIS_URL": "",
            "CELERY_BROKER_URL": "memory://",
            "CELERY_RESULT_BACKEND": "cache+memory://",
            "BTCLOAN_VAR_DIR": str(workdir / "var"),
            "LOG_LEVEL": "CRITICAL",
            "LENDER_BTC_PRIVATE_KEY": "6b" * 32,
        }
    )
    try:
        run(args, workdir)
    finally:
        from django.db import connections

        connections.close_all()
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()
