"""The loan API under concurrent load, served as in production: p50/p99 latency and
requests/s of the loan list and the loan detail with 10,000 loans in PostgreSQL.

    .venv/bin/python bench/api_bench.py [--loans 10000] [--threads 8] [--seconds 6] [--rounds 3]
        [--workers N]

It creates (then drops) its own database on 127.0.0.1:5432, fills it with bulk_create (the
loans, three audit rows and two EVM events each, so every detail has a timeline across two
sources, and the cursors the deadlines are computed from) and VACUUM ANALYZEs it, as autovacuum
would soon after such a load. It then starts gunicorn with the project's deploy/gunicorn.conf.py
(sync workers, app preloaded, access log on; `--workers` sets WEB_CONCURRENCY, else the file's
default) on a free port, outside DEBUG with this run's own throwaway secrets, and drives it from
a second process with `--threads` client threads for `--seconds` per scenario, in `--rounds`
interleaved slices (the scenarios take turns, so a shared machine's drifting load is spread
over all of them alike). The throttles run as deployed but with rates no run reaches (their
counters in each worker's local memory: the bench has no Redis).

Every request is authenticated (an operator's bearer token, or a borrower's for its own loans).
The baseline, measured in the same run, is GET /api/v1/auth/me: authentication (token lookup,
the caller's permissions), throttles and the stack, no loan; the ratio column is each
scenario's p50 over the baseline's. On a machine other work shares, latency follows that
work's load too, so the bench also reads the gunicorn workers' CPU time (/proc) around each
slice: "cpu ms" is their CPU per request (PostgreSQL's not included), and its ratio the same
against the baseline's. The queries column is the SQL statements one request runs (counted in
this process with the test client): it must not grow with the page size (no N+1).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import runpy
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2

BASE_DIR = Path(__file__).resolve().parent.parent
GUNICORN_CONF = BASE_DIR / "deploy/gunicorn.conf.py"
sys.path.insert(0, str(BASE_DIR))

DB_NAME = f"btcloan_bench_api_{os.getpid()}"
PG_ADMIN = "dbname=postgres user=postgres host=127.0.0.1 port=5432"
CHAIN_ID = 31337
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
BORROWERS = 100  # the loans are spread over this many wallets
# Throttles on, as deployed, at a rate no run reaches: per second, so each counter's history
# (one timestamp per request within the period) stays short.
UNREACHED_RATE = "1000000/second"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_per_request(result: dict[str, Any]) -> float | None:
    served = len(result["latencies"]) + len(result["errors"])
    return result["cpu"] / served if result["cpu"] is not None and served else None


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_line(name: str, value: float, unit: str) -> None:
    """A machine-readable figure for bench/run_all.py, beside the human output."""
    print("BENCH " + json.dumps({"name": name, "value": round(value, 3), "unit": unit}))


def environment(workdir: Path) -> dict[str, str]:
    """Outside DEBUG (as served), so the service wants real secrets: random ones for this run.
    The lender keys are never used (the API reads no key) but start-up refuses to go without."""
    from btcloan.dev.stack import run_secrets

    return {
        "DJANGO_DEBUG": "0",
        **run_secrets(),
        "LENDER_EVM_PRIVATE_KEY": "0x" + secrets.token_hex(32),
        "LENDER_BTC_PRIVATE_KEY": secrets.token_hex(32),
        "API_THROTTLE_IP": UNREACHED_RATE,
        "API_THROTTLE_USER": UNREACHED_RATE,
        "DJANGO_SETTINGS_MODULE": "btcloan.settings",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        "REDIS_URL": "",
        "CELERY_BROKER_URL": "memory://",
        "CELERY_RESULT_BACKEND": "cache+memory://",
        "BTCLOAN_VAR_DIR": str(workdir / "var"),
        "EVM_CHAIN_ID": str(CHAIN_ID),
        "LOG_LEVEL": "WARNING",
    }


# --- the data ---------------------------------------------------------------------------------
def populate(n_loans: int) -> dict[str, Any]:
    """10,000 loans in every state, their audit rows and events; returns tokens and ids."""
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from eth_utils import to_checksum_address

    from bitcoin.models import ScanCursor
    from btcloan.api.services import access_token_issue
    from btcloan.models import BorrowerWallet
    from btcloan.roles import VIEWER, user_role_set
    from chainwatch.models import ChainCursor, EvmEvent
    from loans.models import AuditCause, AuditEntry, BitcoinStage, Loan, LoanStatus

    rng = random.Random(7)
    # EIP-55, as the contract's events give them.
    wallets = [to_checksum_address(f"0x{rng.getrandbits(160):040x}") for _ in range(BORROWERS)]
    states = [
        (LoanStatus.REQUESTED, BitcoinStage.ESCROW_CONFIRMED),
        (LoanStatus.OFFERED, BitcoinStage.PRESIGNED),
        (LoanStatus.ACTIVE, BitcoinStage.COLLATERAL_CONFIRMED),
        (LoanStatus.CLOSED, BitcoinStage.RELEASED),
    ]
    loans = []
    for i in range(1, n_loans + 1):
        status, stage = states[i % len(states)]
        loans.append(
            Loan(
                chain_id=CHAIN_ID,
                contract_address=CONTRACT,
                onchain_id=i,
                status=status,
                bitcoin_stage=stage,
                borrower_address=wallets[i % BORROWERS],
                borrower_btc_pubkey=f"{rng.getrandbits(256):064x}",
                lender_btc_pubkey="aa" * 32,
                amount_wei=10**16,
                bond_wei=10**15,
                loan_sats=1_000_000,
                preimage_hash_borrower=f"{rng.getrandbits(256):064x}",
                preimage_hash_lender=f"{rng.getrandbits(256):064x}",
                escrow_address=f"bcrt1p{i:058d}",
                escrow_internal_key="bb" * 32,
                escrow_txid=f"{rng.getrandbits(256):064x}",
                escrow_vout=0,
                escrow_value_sats=1_200_000,
                escrow_confirmed_height=200 + i % 50,
                loan_duration=2880,
                timelock_borrower=720,
                timelock_btc_escrow=4320,
                timelock_lender=720,
                timelock_btc_collateral=8640,
                escrow_csv_blocks=216,
                collateral_csv_blocks=432,
                request_block=1000 + i,
                offer_block=1010 + i if status != LoanStatus.REQUESTED else None,
                activation_block=1020 + i
                if status in (LoanStatus.ACTIVE, LoanStatus.CLOSED)
                else None,
            )
        )
    with transaction.atomic():
        created = Loan.objects.bulk_create(loans, batch_size=2000)
        AuditEntry.objects.bulk_create(
            [
                AuditEntry(
                    loan=loan,
                    cause=AuditCause.EVM_EVENT,
                    cause_ref=f"evm:0x{loan.escrow_txid}",
                    action=action,
                    field=field,
                    from_value=before,
                    to_value=after,
                )
                for loan in created
                for action, field, before, after in (
                    ("loan_requested", "", "", ""),
                    ("transition", "status", "requested", str(loan.status)),
                    ("transition", "bitcoin_stage", "awaiting_escrow", str(loan.bitcoin_stage)),
                )
            ],
            batch_size=5000,
        )
        EvmEvent.objects.bulk_create(
            [
                EvmEvent(
                    chain_id=CHAIN_ID,
                    contract_address=CONTRACT,
                    contract_name="BtcCollateralLoan",
                    event_name=name,
                    block_number=loan.request_block + k,
                    block_hash=f"0x{rng.getrandbits(256):064x}",
                    transaction_hash=f"0x{rng.getrandbits(256):064x}",
                    log_index=0,
                    args={"loanId": int(loan.onchain_id)},
                    loan_id=loan.onchain_id,
                    delivery_key=f"loan:{loan.contract_address.lower()}:{loan.onchain_id}",
                    status="processed",
                )
                for loan in created
                for k, name in enumerate(("LoanRequested", "LoanOffered"))
            ],
            batch_size=5000,
        )
        ChainCursor.objects.create(chain_id=CHAIN_ID, block_number=1000 + n_loans + 100)
        ScanCursor.objects.create(network="regtest", height=300, block_hash="cc" * 32)

    users = get_user_model().objects
    operator = users.create_user(username="operator", password="-", is_staff=True)
    user_role_set(user=operator, role=VIEWER)
    borrower = users.create_user(username="borrower", password="-")
    BorrowerWallet.objects.create(user=borrower, address=wallets[1])
    return {
        "operator": access_token_issue(user=operator).token,
        "borrower": access_token_issue(user=borrower).token,
        "loan_ids": [loan.pk for loan in created],
    }


def queries_per_request(path: str, token: str) -> int:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_HOST="localhost")
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return len(captured)


# --- the server -------------------------------------------------------------------------------
def start_gunicorn(port: int, workers: int | None, log: Path) -> subprocess.Popen[bytes]:
    """gunicorn as deployed (deploy/gunicorn.conf.py) on 127.0.0.1:`port`."""
    env = {**os.environ}
    if workers is not None:
        env["WEB_CONCURRENCY"] = str(workers)
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(GUNICORN_CONF),
        "--bind",
        f"127.0.0.1:{port}",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            cwd=BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_until_serving(
    server: subprocess.Popen[bytes], port: int, token: str, log: Path, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn exited ({server.returncode}):\n{log.read_text()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
            raise RuntimeError(f"GET /api/v1/auth/me answered {status}:\n{log.read_text()}")
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not answer in {timeout:g} s:\n{log.read_text()}")


def stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM: gunicorn's master stops its workers gracefully; kill if it does not."""
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def worker_count(workers: int | None) -> int:
    """What gunicorn.conf.py makes of WEB_CONCURRENCY (or its default)."""
    if workers is not None:
        return workers
    return int(runpy.run_path(str(GUNICORN_CONF))["workers"])


def server_cpu_seconds(master: int) -> float | None:
    """CPU time gunicorn's workers have used (user + system): the live ones' and, through the
    master's reaped-children counters, the ones max_requests recycled. None without /proc."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(pid: str) -> list[str]:
        # Fields after the command name, which is in parentheses and may hold spaces.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()

    try:
        total = sum(int(x) for x in stat(str(master))[13:15])  # cutime, cstime
    except OSError:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = stat(entry.name)
        except OSError:
            continue  # gone meanwhile
        if fields[1] == str(master):  # ppid
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


# --- the load process -------------------------------------------------------------------------
def load(port: int, spec_path: str) -> None:
    """Run each scenario with N threads for S seconds; print the latencies as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    results: dict[str, dict[str, Any]] = {
        scenario["name"]: {"latencies": [], "errors": [], "elapsed": 0.0, "cpu": 0.0}
        for scenario in spec["scenarios"]
    }
    # Round-robin in short slices: a shared machine's load drifts over a run, and each scenario
    # (the baseline too) then sees the same mix of it.
    for _ in range(spec["rounds"]):
        for scenario in spec["scenarios"]:
            result = results[scenario["name"]]
            part = _drive(
                port,
                scenario,
                threads=spec["threads"],
                seconds=spec["seconds"] / spec["rounds"],
                server_pid=spec["server_pid"],
            )
            result["latencies"] += part["latencies"]
            result["errors"] += part["errors"]
            result["elapsed"] += part["elapsed"]
            result["cpu"] = None if part["cpu"] is None else result["cpu"] + part["cpu"]
    print(json.dumps(results))


def _drive(
    port: int, scenario: dict[str, Any], *, threads: int, seconds: float, server_pid: int
) -> dict[str, Any]:
    paths: list[str] = scenario["paths"]
    headers = {"Authorization": f"Bearer {scenario['token']}"}
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()

    def get(path: str) -> tuple[int, float]:
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        conn.close()
        return response.status, time.perf_counter() - started

    for path in paths[:5]:  # warm up
        get(path)
    cpu_before = server_cpu_seconds(server_pid)
    deadline = time.perf_counter() + seconds

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[float] = []
        bad: list[int] = []
        while time.perf_counter() < deadline:
            status, took = get(rng.choice(paths))
            if status == 200:
                mine.append(took)
            else:
                bad.append(status)
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu_after = server_cpu_seconds(server_pid)
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed, "cpu": cpu}


# --- the run ----------------------------------------------------------------------------------
def run(args: argparse.Namespace, workdir: Path) -> None:
    import django
    from django.core.management import call_command
    from django.db import connection

    from btcloan.dev.localnodes import free_port

    django.setup()
    started = time.monotonic()
    call_command("migrate", verbosity=0)
    data = populate(args.loans)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    print(
        f"setup: {args.loans:,} loans (+{3 * args.loans:,} audit rows, {2 * args.loans:,} events) "
        f"in {time.monotonic() - started:.1f} s"
    )

    rng = random.Random(1)
    detail_paths = [f"/api/v1/loans/{pk}/" for pk in rng.sample(data["loan_ids"], 500)]
    operator, borrower = data["operator"], data["borrower"]
    # (key for run_all, label, token, paths)
    scenarios = [
        ("baseline", "baseline: GET auth/me", operator, ["/api/v1/auth/me"]),
        ("list", f"list, page 1 (50 of {args.loans:,})", operator, ["/api/v1/loans/"]),
        ("list_page100", "list, page 100", operator, ["/api/v1/loans/?page=100"]),
        ("list_active", "list, status=active", operator, ["/api/v1/loans/?status=active"]),
        ("list_borrower", "list, a borrower's own", borrower, ["/api/v1/loans/"]),
        ("list_200", "list, page_size=200", operator, ["/api/v1/loans/?page_size=200"]),
        ("detail", "detail, random loan", operator, detail_paths),
    ]
    queries = {key: queries_per_request(paths[0], token) for key, _, token, paths in scenarios}

    port = free_port()
    workers = worker_count(args.workers)
    log = workdir / "gunicorn.log"
    server = start_gunicorn(port, args.workers, log)
    try:
        wait_until_serving(server, port, operator, log)
        spec = workdir / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "threads": args.threads,
                    "seconds": args.seconds,
                    "rounds": args.rounds,
                    "server_pid": server.pid,
                    "scenarios": [
                        {"name": key, "token": token, "paths": paths}
                        for key, _, token, paths in scenarios
                    ],
                }
            )
        )
        loader = subprocess.run(
            [sys.executable, __file__, "--load", str(port), str(spec)],
            cwd=BASE_DIR,
            env={**os.environ},
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        stop(server)
    results = json.loads(loader.stdout)

    print(
        f"\nconcurrent load: {args.threads} client threads in a second process, "
        f"{args.seconds:g} s per scenario in {args.rounds} interleaved rounds; gunicorn "
        f"(deploy/gunicorn.conf.py) with {workers} sync workers; load average {load_average()}"
    )
    header = (
        f"{'scenario':<30} {'requests':>8} {'req/s':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'ratio':>6} {'cpu ms':>6} {'ratio':>6} {'queries':>7} {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    bench_line("api_gunicorn_workers", workers, "workers")
    baseline_p50 = statistics.median(results["baseline"]["latencies"])
    baseline_cpu = cpu_per_request(results["baseline"])
    for key, label, _token, _paths in scenarios:
        result = results[key]
        latencies = result["latencies"]
        rate = len(latencies) / result["elapsed"]
        p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
        cpu = cpu_per_request(result)
        cpu_columns = (
            f"{cpu * 1000:>6.1f} {cpu / baseline_cpu:>5.2f}x"
            if cpu is not None and baseline_cpu
            else f"{'-':>6} {'-':>6}"
        )
        print(
            f"{label:<30} {len(latencies):>8} {rate:>6.0f} {p50 * 1000:>7.1f} {p99 * 1000:>7.1f} "
            f"{p50 / baseline_p50:>5.2f}x {cpu_columns} {queries[key]:>7} "
            f"{len(result['errors']):>6}"
        )
        bench_line(f"api_{key}_p50_ms", p50 * 1000, "ms")
        bench_line(f"api_{key}_p99_ms", p99 * 1000, "ms")
        bench_line(f"api_{key}_rps", rate, "req/s")
        if key != "baseline":
            bench_line(f"api_{key}_p50_ratio", p50 / baseline_p50, "x")
        if cpu is not None:
            bench_line(f"api_{key}_server_cpu_ms", cpu * 1000, "ms")
    print(f"\ntotal: {time.monotonic() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loans", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3, help="slices per scenario, interleaved")
    parser.add_argument(
        "--workers", type=int, help="gunicorn workers (default: deploy/gunicorn.conf.py's)"
    )
    parser.add_argument("--load", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        load(int(args.load[0]), args.load[1])
        return

    workdir = Path(tempfile.mkdtemp(prefix="btcloan-api-bench-"))
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{DB_NAME}"')
    os.environ.update(environment(workdir))
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
