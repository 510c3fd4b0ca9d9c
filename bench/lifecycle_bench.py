"""The loan engine end to end: N loans at once through the repaid path, on real parts.

Each loan is played by its own borrower thread (requestLoan, pre-sign TX_1, acceptLoanOffer,
attemptRepayment, then the collateral release with the P_L the lender revealed) while the
backend acts as the lender in **real Celery processes**: one `celery worker` (prefork, all
queues) and one `celery beat` driving the pollers, the watchdog and the reconciler, on
PostgreSQL and Redis. The chains are this run's own anvil (automine off: a miner thread mines
a block every --evm-block-seconds, as a real chain would) and its own Bitcoin node (bitcoind
when installed, else the devnode; a block every --btc-block-seconds).

It prints loans per minute (first requestLoan sent to the last loan closed) and, for each
on-chain event and the backend's resulting action, p50/p99 of:
- mined → action: what a borrower waits (includes the confirmations the desk requires);
- confirmed → action: the backend's own latency, from the moment the event's block reached
  EVM_CONFIRMATIONS (the indexer may read it) to the action.
The pairs: LoanRequested → associateLenderPreimageHash sent, LoanActivated → TX_1 broadcast,
RepaymentAttempted → acceptLoanRepayment sent. Block times are the miner's clock; action times
are the backend's own rows (EvmTransaction.sent_at, BitcoinTransaction.first_broadcast_at).

The intake's own path is broken down too: LoanRequested confirmed -> event stored -> event
applied (intake row) -> loan created -> associateLenderPreimageHash queued -> sent, each
timed by the row it leaves. The loans start once beat's pollers have caught up with both
chains (the first poll comes seconds after beat starts: a start-up cost, not intake's).

    .venv/bin/python bench/lifecycle_bench.py [--loans 20] [--workers 4]
    .venv/bin/python bench/lifecycle_bench.py --loans 20,100,200   # the cost curve, ~10 min

It also prints the backend's CPU seconds per closed loan (every process of the worker and
beat sessions, from /proc) and loans per minute; a list of points runs each on a fresh stack
(its own process), one after the other. Every figure is named after its point ("lifecycle:
loans closed per minute, 100 in flight") and carries the 1-minute load average when it was
taken (`load1`): the machine may be shared, and CPU seconds per loan are the figure that load
disturbs least.

It creates (then drops) the database btcloan_bench_<pid> on 127.0.0.1:5432 and uses Redis
database --redis-db (default 11), which it flushes before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

DB_NAME = f"btcloan_bench_{os.getpid()}"
PG_ADMIN = "dbname=postgres user=postgres host=127.0.0.1 port=5432"
AMOUNT_WEI = 10**16  # 0.01 rBTC = 1,000,000 sats a loan


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# Every figure names the point it belongs to: "lifecycle: ..., 20 in flight" (set by main).
IN_FLIGHT = 0


def bench_line(name: str, value: float, unit: str, **extra: Any) -> None:
    """One machine-readable figure for bench/run_all.py, beside the human output, with the
    1-minute load average when it was taken (the machine is shared)."""
    label = f"lifecycle: {name}, {IN_FLIGHT} in flight"
    line = {"name": label, "value": round(value, 3), "unit": unit, **extra}
    print("BENCH " + json.dumps({**line, "load1": round(os.getloadavg()[0], 2)}))


# --- stores and processes ---------------------------------------------------------------------
def create_database() -> None:
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{DB_NAME}"')
    admin.close()


def drop_database() -> None:
    from django.db import connections

    with suppress(Exception):  # Django never set up: nothing to close
        connections.close_all()
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    admin.close()


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def env_value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def start_service(name: str, argv: list[str], env: dict[str, str], workdir: Path) -> Service:
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "btcloan", *argv],
            cwd=BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Service(name, proc, log)


def session_cpu_seconds(session_id: int) -> float:
    """User + system CPU of every process in a session (a service and its pool children),
    reaped children included, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[3]) == session_id:
            total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / ticks


def wait_for_worker(worker: Service, timeout: float = 90.0) -> None:
    from btcloan.tasks import ping

    deadline = time.monotonic() + timeout
    while True:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"celery worker exited:\n{worker.tail()}")
        try:
            ping.apply_async(args=["ready"], expires=5).get(timeout=3)
            return
        except Exception:  # not consuming yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"celery worker never became ready:\n{worker.tail()}") from None


def wait_for_pollers(w3: Any, *, evm_confirmations: int, timeout: float = 120.0) -> None:
    """Until beat's pollers have caught up with both chains once: the loans then meet a desk
    at work, not one still starting (its first poll comes seconds after beat starts)."""
    from bitcoin.models import ScanCursor
    from chainwatch.models import ChainCursor

    indexed_to = int(w3.eth.block_number) - evm_confirmations
    wait_until(
        lambda: (
            ChainCursor.objects.filter(block_number__gte=indexed_to).exists()
            and ScanCursor.objects.exists()
        ),
        what="beat's first polls of both chains",
        timeout=timeout,
    )


class NodeRpc:
    """The Bitcoin node as the desk's borrower wallet talks to it (`Desk.node`)."""

    # A few calls at once from all the borrowers: 200 releases sent together overflowed the
    # node's accept queue (connections reset).
    _slots = threading.BoundedSemaphore(4)

    def __init__(self, url: str) -> None:
        self.url = url

    def rpc(self, method: str, *params: Any) -> Any:
        from btcloan.dev.localnodes import json_rpc

        with self._slots:
            return json_rpc(self.url, method, params, timeout=60.0)


# --- the chains' clocks -----------------------------------------------------------------------
class Miner:
    """Mines the EVM chain (automine off) and the Bitcoin chain at a steady pace, and keeps
    the wall-clock time each EVM block was mined."""

    def __init__(self, evm_url: str, btc_rpc: Callable[..., Any], faucet: str) -> None:
        from btcloan.dev.localnodes import json_rpc

        self._evm = lambda method, *params: json_rpc(evm_url, method, params, timeout=30.0)
        self._btc = btc_rpc
        self._faucet = faucet
        self.evm_block_times: dict[int, float] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def start(self, *, evm_seconds: float, btc_seconds: float) -> None:
        self._evm("evm_setAutomine", False)
        self.evm_block_times[int(self._evm("eth_blockNumber"), 16)] = time.time()
        for target, every in ((self._mine_evm, evm_seconds), (self._mine_btc, btc_seconds)):
            thread = threading.Thread(target=self._loop, args=(target, every), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _loop(self, mine: Callable[[], None], every: float) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                mine()
            except Exception as exc:  # a node hiccup: note it, keep the clock going
                self.errors.append(f"{type(exc).__name__}: {exc}")
            next_at += every
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _mine_evm(self) -> None:
        self._evm("evm_mine")
        self.evm_block_times[int(self._evm("eth_blockNumber"), 16)] = time.time()

    def _mine_btc(self) -> None:
        self._btc("generatetoaddress", 1, self._faucet)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        with suppress(Exception):  # the node is going away anyway
            self._evm("evm_setAutomine", True)


# --- one loan ---------------------------------------------------------------------------------
@dataclass
class LoanRun:
    index: int
    onchain_id: int | None = None
    loan_pk: int | None = None
    request_block: int | None = None
    activation_block: int | None = None
    repayment_block: int | None = None
    started_at: float = 0.0
    closed_at: float | None = None
    error: str = ""
    steps: list[str] = field(default_factory=list)


def known_time(value: float | None) -> float:
    assert value is not None
    return value


def wait_until(check: Callable[[], Any], *, what: str, timeout: float, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll)


@dataclass(frozen=True)
class LoanView:
    pk: int
    status: str
    bitcoin_stage: str
    tx1_built: bool


class LoanBoard:
    """What the borrowers wait on, read for all of them by one thread in one query every
    0.1 s: a connection per borrower thread would exhaust PostgreSQL's at 100 loans (and its
    polling would load the database the backend is measured on)."""

    def __init__(self, contract_address: str) -> None:
        self._contract = contract_address
        self._loans: dict[int, LoanView] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        # The borrowers' own few database steps (pre-sign, read for the release), a few at once.
        self._slots = threading.BoundedSemaphore(8)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        from django.db import connection

        from loans.models import Loan

        try:
            while not self._stop.wait(0.1):
                rows = Loan.objects.filter(contract_address=self._contract).values_list(
                    "onchain_id", "pk", "status", "bitcoin_stage", "collateral_lock_feerate"
                )
                self._loans = {
                    int(onchain_id): LoanView(pk, status, stage, feerate is not None)
                    for onchain_id, pk, status, stage, feerate in rows
                }
        finally:
            connection.close()

    def view(self, onchain_id: int) -> LoanView | None:
        return self._loans.get(onchain_id)

    def wait(self, onchain_id: int, done: Callable[[LoanView], bool], **kwargs: Any) -> LoanView:
        def reached() -> LoanView | None:
            view = self.view(onchain_id)
            return view if view is not None and done(view) else None

        found: LoanView = wait_until(reached, **kwargs)
        return found

    @contextmanager
    def database(self) -> Iterator[None]:
        """A borrower thread's database step, on a connection closed right after."""
        from django.db import connection

        with self._slots:
            try:
                yield
            finally:
                connection.close()


def play_loan(
    run: LoanRun,
    desk: Any,
    board: LoanBoard,
    borrower: Any,
    escrow: tuple[str, str, int],
    timeout: float,
) -> None:
    """The borrower's side of one repaid loan, as a wallet and dApp would play it."""
    from loans.models import BitcoinStage, Loan, LoanStatus

    address, txid, vout = escrow
    try:
        run.started_at = time.time()
        result = borrower.actions.request_loan(
            amount_wei=AMOUNT_WEI,
            btc_address=address,
            btc_pubkey=borrower.btc_key,
            preimage_hash=borrower.preimage_hash,
            escrow_txid=txid,
            escrow_vout=vout,
        )
        run.onchain_id = onchain_id = int(result.loan_id)
        run.request_block = int(result.receipt["blockNumber"])
        run.steps.append("requested")
        built = board.wait(
            onchain_id, lambda v: v.tx1_built, what="TX_1 to be built", timeout=timeout
        )
        run.loan_pk = built.pk
        with board.database():
            desk.presign(borrower, onchain_id)
        run.steps.append("presigned")
        board.wait(
            onchain_id,
            lambda v: v.status == LoanStatus.OFFERED,
            what="the offer",
            timeout=timeout,
        )
        receipt = borrower.actions.accept_offer(onchain_id, borrower.preimage)
        run.activation_block = int(receipt["blockNumber"])
        run.steps.append("activated")
        board.wait(
            onchain_id,
            lambda v: v.bitcoin_stage == BitcoinStage.COLLATERAL_CONFIRMED,
            what="TX_1 to confirm",
            timeout=timeout,
        )
        receipt = borrower.actions.attempt_repayment(onchain_id)
        run.repayment_block = int(receipt["blockNumber"])
        run.steps.append("repayment attempted")
        board.wait(
            onchain_id,
            lambda v: v.status == LoanStatus.REPAID,
            what="the repayment to be accepted",
            timeout=timeout,
        )
        with board.database():
            loan = Loan.objects.get(pk=run.loan_pk)
        desk.send_btc(borrower.release(loan, desk.revealed_lender_preimage(onchain_id)))
        run.steps.append("released")
        board.wait(
            onchain_id,
            lambda v: v.status == LoanStatus.CLOSED,
            what="the close",
            timeout=timeout,
        )
        run.closed_at = time.time()
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc} (after {run.steps})"
        traceback.print_exc()


# --- measurement ------------------------------------------------------------------------------
@dataclass
class Latencies:
    label: str
    from_mined: list[float] = field(default_factory=list)
    from_confirmed: list[float] = field(default_factory=list)


def collect(runs: list[LoanRun], block_times: dict[int, float], confirmations: int):
    from bitcoin.models import BitcoinTransaction, TxPurpose
    from chainwatch.models import EvmTransaction

    pairs = [
        Latencies("LoanRequested mined -> associateLenderPreimageHash sent"),
        Latencies("LoanActivated mined -> TX_1 broadcast"),
        Latencies("RepaymentAttempted mined -> acceptLoanRepayment sent"),
    ]

    def sent_at(loan_pk: int, action: str) -> float | None:
        row = EvmTransaction.objects.filter(loan_ref=str(loan_pk), action=action).first()
        return row.sent_at.timestamp() if row and row.sent_at else None

    def broadcast_at(loan_pk: int) -> float | None:
        row = BitcoinTransaction.objects.filter(
            loan_ref=str(loan_pk), purpose=TxPurpose.COLLATERAL_LOCK
        ).first()
        return row.first_broadcast_at.timestamp() if row and row.first_broadcast_at else None

    for run in runs:
        if run.loan_pk is None:
            continue
        samples = (
            (pairs[0], run.request_block, sent_at(run.loan_pk, "associate_hash")),
            (pairs[1], run.activation_block, broadcast_at(run.loan_pk)),
            (pairs[2], run.repayment_block, sent_at(run.loan_pk, "accept_repayment")),
        )
        for pair, block, acted in samples:
            if block is None or acted is None or block not in block_times:
                continue
            pair.from_mined.append(acted - block_times[block])
            confirmed = block_times.get(block + confirmations)
            if confirmed is not None:
                pair.from_confirmed.append(acted - confirmed)
    return pairs


# The intake's hand-offs, each timed by the row it leaves (for "why is intake slow").
INTAKE_STAGES = (
    "event stored",
    "event applied (intake row)",
    "loan created",
    "associate queued (outbox row)",
    "associateLenderPreimageHash sent",
)


def intake_breakdown(
    runs: list[LoanRun], block_times: dict[int, float], confirmations: int
) -> dict[str, list[float]]:
    """Seconds from LoanRequested's confirmation to each stage of the intake, per loan."""
    from chainwatch.models import EvmEvent, EvmTransaction
    from loans.models import Loan, LoanRequestIntake

    stages: dict[str, list[float]] = {name: [] for name in INTAKE_STAGES}
    for run in runs:
        if run.loan_pk is None or run.request_block is None:
            continue
        confirmed = block_times.get(run.request_block + confirmations)
        if confirmed is None:
            continue
        loan = Loan.objects.get(pk=run.loan_pk)
        event = EvmEvent.objects.filter(
            event_name="LoanRequested", loan_id=loan.onchain_id, block_number=run.request_block
        ).first()
        intake = LoanRequestIntake.objects.filter(loan=loan).first()
        outbox = EvmTransaction.objects.filter(
            loan_ref=str(loan.pk), action="associate_hash"
        ).first()
        moments = (
            event.created_at if event else None,
            intake.created_at if intake else None,
            loan.created_at,
            outbox.created_at if outbox else None,
            outbox.sent_at if outbox else None,
        )
        for name, moment in zip(INTAKE_STAGES, moments, strict=True):
            if moment is not None:
                stages[name].append(moment.timestamp() - confirmed)
    return stages


def rows_per_loan(loans: int) -> dict[str, float]:
    """What one repaid loan leaves in PostgreSQL, table by table (for docs/scaling.md)."""
    from bitcoin.models import BitcoinFact, BitcoinTransaction, TransactionTransition
    from chainwatch.models import EvmEvent, EvmTransaction
    from loans.models import AuditEntry

    if not loans:
        return {}
    tables: dict[str, Any] = {
        "audit": AuditEntry,
        "EVM events": EvmEvent,
        "EVM outbox": EvmTransaction,
        "Bitcoin facts": BitcoinFact,
        "Bitcoin txs": BitcoinTransaction,
        "Bitcoin tx transitions": TransactionTransition,
    }
    return {name: model.objects.count() / loans for name, model in tables.items()}


def alerts_raised() -> dict[str, int]:
    """The run's alerts by kind (digits in the key as N), times raised: noise an operator of a
    healthy desk would see (a healthy run should raise none)."""
    from btcloan.models import Alert

    kinds: Counter[str] = Counter()
    for key, count in Alert.objects.values_list("key", "count"):
        kinds[re.sub(r"\d+", "N", key)] += count
    return dict(kinds.most_common())


# --- the run ----------------------------------------------------------------------------------
@contextmanager
def bench_stack(args: argparse.Namespace, workdir: Path) -> Iterator[dict[str, Any]]:
    """Nodes, database and Redis for the run; everything stopped and dropped at the end."""
    from btcloan.dev import localnodes

    stack: dict[str, Any] = {"services": []}
    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    anvil = localnodes.start_anvil(log_path=workdir / "anvil.log")
    stack["anvil"] = anvil
    try:
        binary = localnodes.find_bitcoind()
        if binary:
            node = localnodes.start_bitcoind(binary, datadir=workdir / "bitcoind")
            stack["node_kind"] = "bitcoind"
        else:
            node = localnodes.start_devnode(datadir=workdir / "devnode")
            stack["node_kind"] = "devnode"
        stack["node"] = node
        try:
            create_database()
            flush_redis(redis_url)
            stack["redis_url"] = redis_url
            try:
                yield stack
            finally:
                for service in stack["services"]:
                    service.stop()
                drop_database()
                flush_redis(redis_url)
        finally:
            node.stop()
    finally:
        anvil.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--loans",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[20],
        help="loans in flight at once; a list (20,100,200) runs each point on a fresh stack",
    )
    parser.add_argument("--workers", type=int, default=4, help="worker processes (prefork)")
    parser.add_argument("--evm-block-seconds", type=float, default=0.5)
    parser.add_argument("--btc-block-seconds", type=float, default=1.0)
    parser.add_argument("--evm-confirmations", type=int, default=2)
    parser.add_argument("--btc-confirmations", type=int, default=2)
    parser.add_argument("--poll-seconds", type=float, default=0.25, help="beat's poll interval")
    parser.add_argument("--redis-db", type=int, default=11)
    parser.add_argument("--timeout", type=float, default=240.0, help="per step of a loan")
    args = parser.parse_args()
    if len(args.loans) > 1:
        return run_points(args.loans)
    (args.loans,) = args.loans
    global IN_FLIGHT
    IN_FLIGHT = args.loans

    workdir = Path(tempfile.mkdtemp(prefix="btcloan-lifecycle-bench-"))
    with bench_stack(args, workdir) as stack:
        status = run(args, workdir, stack)
    if status == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"  logs of the nodes, worker and beat: {workdir}")
    return status


def run_points(points: list[int]) -> int:
    """Each point in its own process (own database, nodes, worker and beat), one after the
    other, with the same options: the cost curve from one invocation."""
    others, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg.startswith("--loans="):
            skip = False
            continue
        skip = arg == "--loans"
        if not skip:
            others.append(arg)
    status = 0
    for loans in points:
        sys.stdout.flush()
        command = [sys.executable, __file__, *others, f"--loans={loans}"]
        status = max(status, subprocess.call(command))
    return status


def fund_borrowers(
    count: int, w3: Any, desk: Any, btc_rpc: Any
) -> tuple[list[Any], list[tuple[str, str, int]]]:
    """Fresh EVM accounts with a balance, fresh Bitcoin keys; escrows funded now (a borrower
    funds before requesting), in one thread since the wallet is the node's."""
    from eth_account import Account

    from bitcoin.rpc import sats_to_btc  # after django.setup(), as in run()
    from loans.services.quote import escrow_quote

    borrowers: list[Any] = []
    escrows: list[tuple[str, str, int]] = []
    for _ in range(count):
        account = Account.create()
        w3.provider.make_request("anvil_setBalance", [account.address, hex(10**20)])
        borrower = desk.borrower(evm_key=account.key.hex())
        quote = escrow_quote(
            borrower_btc_pubkey=borrower.btc_key,
            preimage_hash_borrower=borrower.preimage_hash,
            amount_wei=AMOUNT_WEI,
        )
        txid = str(
            btc_rpc(
                "sendtoaddress",
                quote.escrow_address,
                str(sats_to_btc(quote.deposit.total_sats + 1000)),
            )
        )
        decoded = btc_rpc("getrawtransaction", txid, True)
        vout = next(
            o["n"]
            for o in decoded["vout"]
            if o["scriptPubKey"].get("address") == quote.escrow_address
        )
        borrowers.append(borrower)
        escrows.append((quote.escrow_address, txid, int(vout)))
    return borrowers, escrows


def report(
    args: argparse.Namespace,
    stack: dict[str, Any],
    runs: list[LoanRun],
    *,
    started: float,
    miner: Miner,
    worker: Any,
) -> None:
    finished = [r for r in runs if r.closed_at is not None]
    failed = [r for r in runs if r.closed_at is None]
    wall = max(known_time(r.closed_at) for r in finished) - started if finished else float("nan")
    pairs = collect(runs, dict(miner.evm_block_times), args.evm_confirmations)
    print(
        f"lifecycle bench: {args.loans} loans at once through the repaid path "
        f"(request, offer, activation, TX_1, repayment, release, close)"
    )
    print(
        "  load average (1 min) at the start / end of the loans: "
        f"{stack['load_start']:.2f} / {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)"
    )
    print(
        f"  backend: real Celery worker (prefork, {args.workers} processes, all queues) + beat "
        f"(pollers every {args.poll_seconds} s), PostgreSQL, Redis"
    )
    print(
        f"  chains: anvil, a block every {args.evm_block_seconds} s, "
        f"{args.evm_confirmations} confirmations; {stack['node_kind']}, a block every "
        f"{args.btc_block_seconds} s, {args.btc_confirmations} confirmations"
    )
    if failed:
        print(f"  FAILED: {len(failed)} loans did not close:")
        for run_ in failed:
            print(f"    loan #{run_.index} (on-chain id {run_.onchain_id}): {run_.error}")
        print(f"  worker log tail:\n{worker.tail(15)}")
    if miner.errors:
        print(f"  miner errors: {miner.errors[:3]}")
    if finished:
        per_minute = len(finished) / wall * 60
        per_loan = [r.closed_at - r.started_at for r in finished if r.closed_at is not None]
        print(
            f"  throughput: {len(finished)} loans closed in {wall:.1f} s = "
            f"{per_minute:.1f} loans/min; one loan takes p50 {statistics.median(per_loan):.1f} s "
            "(dominated by the block pace and confirmations above)"
        )
        cpu = float(stack["cpu_seconds"])
        print(
            f"  backend CPU (worker + beat, all processes): {cpu:.1f} s = "
            f"{cpu / len(finished):.2f} CPU s per closed loan"
        )
        bench_line("loans closed per minute", per_minute, "loans/min", n=len(finished))
        bench_line("backend CPU per closed loan", cpu / len(finished), "s", n=len(finished))
        bench_line("one loan, request to close (p50)", statistics.median(per_loan), "s")
    rows = rows_per_loan(len(finished))
    if rows:
        print("  rows per closed loan: " + ", ".join(f"{k} {v:.1f}" for k, v in rows.items()))
    alerts = alerts_raised()
    print(
        f"  alerts raised: {sum(alerts.values())}"
        + "".join(f"\n    {count:>4} {kind}" for kind, count in alerts.items())
    )
    print(
        f"  {'event -> backend action':<58} {'n':>3} {'mined->action p50/p99':>23} "
        f"{'confirmed->action p50/p99':>27}"
    )
    report_latencies(pairs)
    stages = intake_breakdown(runs, dict(miner.evm_block_times), args.evm_confirmations)
    print("  intake, LoanRequested confirmed -> each stage, p50 / p99:")
    for name, values in stages.items():
        if values:
            print(
                f"    {name:<40} {percentile(values, 0.5):>6.2f} / "
                f"{percentile(values, 0.99):>6.2f} s"
            )


def report_latencies(pairs: list[Any]) -> None:
    for pair in pairs:
        if not pair.from_mined:
            print(f"  {pair.label:<58}   0  (no samples)")
            continue
        mined = (percentile(pair.from_mined, 0.5), percentile(pair.from_mined, 0.99))
        confirmed = (
            (percentile(pair.from_confirmed, 0.5), percentile(pair.from_confirmed, 0.99))
            if pair.from_confirmed
            else (float("nan"), float("nan"))
        )
        print(
            f"  {pair.label:<58} {len(pair.from_mined):>3} "
            f"{mined[0]:>10.2f} / {mined[1]:>6.2f} s {confirmed[0]:>12.2f} / {confirmed[1]:>6.2f} s"
        )
        short = pair.label.split(" mined -> ")
        name = f"{short[0]} -> {short[1]}"
        bench_line(f"{name}, from mined (p50)", mined[0], "s")
        bench_line(f"{name}, from mined (p99)", mined[1], "s")
        bench_line(f"{name}, from confirmed (p50)", confirmed[0], "s")
        bench_line(f"{name}, from confirmed (p99)", confirmed[1], "s")


def run(args: argparse.Namespace, workdir: Path, stack: dict[str, Any]) -> int:
    from btcloan.dev.stack import run_secrets

    anvil, node = stack["anvil"], stack["node"]
    btc_rpc = NodeRpc(node.url).rpc

    base_env = {
        "DJANGO_SETTINGS_MODULE": "btcloan.settings",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        "REDIS_URL": stack["redis_url"],
        "CELERY_BROKER_URL": stack["redis_url"],
        "CELERY_RESULT_BACKEND": stack["redis_url"],
        "BTCLOAN_VAR_DIR": str(workdir / "var"),
        "LOG_LEVEL": "WARNING",
        "EVM_POLL_INTERVAL": str(args.poll_seconds),
        "BITCOIN_POLL_INTERVAL": str(args.poll_seconds),
        "BITCOIN_MONITOR_INTERVAL": "2",
        "LOAN_WATCHDOG_INTERVAL": "2",
        "LOAN_RECONCILE_INTERVAL": "30",
        **run_secrets(),
    }
    os.environ.update(base_env)

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from web3 import Web3

    import vaultero
    from bitcoin import signer as signer_module
    from bitcoin.rpc import BitcoinRPC, set_client
    from btcloan.dev.contracts import deploy_for_tests
    from chainwatch.client import use_web3
    from chainwatch.evm.deploy import TimelockParameters
    from tests.support.desk import LENDER_BTC_SECRET, Desk, desk_settings

    call_command("migrate", verbosity=0)
    w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 60}))
    # Wide windows: the bench measures speed, and no deadline may pass while loans queue.
    deployed = deploy_for_tests(
        w3,
        parameters=TimelockParameters(
            loan_duration=5000,
            t_borrower=500,
            t_btc_escrow=2000,
            t_lender=500,
            t_btc_collateral=6000,
        ),
        lender_btc_pubkey=vaultero.xonly_public_key(LENDER_BTC_SECRET),
    )
    overrides = desk_settings(
        evm_url=anvil.url,
        deployed=deployed,
        bitcoin_url=node.url,
        evm_confirmations=args.evm_confirmations,
        bitcoin_confirmations=args.btc_confirmations,
    )
    # The desk redrives at every pump (its fault tests lose tasks on purpose); a deployment
    # waits for the default before sending a still-due step again.
    overrides["LOAN_WATCHDOG_REDRIVE_SECONDS"] = 120
    for name, value in overrides.items():
        setattr(settings, name, value)
    service_env = {**os.environ, **base_env, **{k: env_value(v) for k, v in overrides.items()}}
    use_web3(w3)
    rpc = BitcoinRPC(node.url)
    set_client(rpc)
    signer_module.set_signer(None)

    faucet = str(btc_rpc("getnewaddress"))
    btc_rpc("generatetoaddress", 110 + args.loans // 20, faucet)
    desk = Desk(w3=w3, node=NodeRpc(node.url), rpc=rpc, deployed=deployed, faucet=faucet)

    borrowers, escrows = fund_borrowers(args.loans, w3, desk, btc_rpc)

    worker = start_service(
        "worker",
        [
            "worker",  # every queue of celeryconfig.task_queues, as docker-compose's worker
            "--pool=prefork",
            f"--concurrency={args.workers}",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=WARNING",
            f"--hostname=bench-{uuid.uuid4().hex[:8]}@%h",
        ],
        service_env,
        workdir,
    )
    stack["services"].append(worker)
    wait_for_worker(worker)
    beat = start_service(
        "beat",
        ["beat", "--loglevel=WARNING", f"--schedule={workdir / 'beat-schedule'}"],
        service_env,
        workdir,
    )
    stack["services"].append(beat)
    wait_for_pollers(w3, evm_confirmations=args.evm_confirmations)

    miner = Miner(anvil.url, btc_rpc, faucet)
    miner.start(evm_seconds=args.evm_block_seconds, btc_seconds=args.btc_block_seconds)
    runs = [LoanRun(index=i) for i in range(args.loans)]
    sessions = [service.proc.pid for service in stack["services"]]
    cpu_before = sum(session_cpu_seconds(sid) for sid in sessions)
    stack["load_start"] = os.getloadavg()[0]
    started = time.time()
    board = LoanBoard(deployed.loan_address)
    board.start()
    threads = [
        threading.Thread(
            target=play_loan, args=(run_, desk, board, borrowers[i], escrows[i], args.timeout)
        )
        for i, run_ in enumerate(runs)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        board.stop()
        miner.stop()
    stack["cpu_seconds"] = sum(session_cpu_seconds(sid) for sid in sessions) - cpu_before
    report(args, stack, runs, started=started, miner=miner, worker=worker)
    return 1 if any(r.closed_at is None for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
