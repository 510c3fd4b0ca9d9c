"""`make demo`: the whole service on one machine, and a borrower through two complete loans.

It uses the nodes and stores the environment names and starts what is missing
(btcloan/dev/stack.py):
anvil (a block a second), the Bitcoin node (bitcoind when installed, else the embedded devnode),
and on embedded defaults a SQLite file and the filesystem broker, all under var/demo/ (fresh
each run). It deploys the contracts with short timelocks, starts web, worker, beat and Flower,
and mines a Bitcoin block a second as a miner would.

Then a borrower (btcloan/dev/demo_borrower.py: the public REST API, web3 with anvil key 1, the
node's wallet and vaultero) takes two loans: one repaid and released, one defaulted and swept.
The URLs and the operator's password print as soon as the service answers, so the loans can be
watched live in the admin; each loan's timeline across both chains prints as it happens, and a
summary follows.

A supervisor watches every process it started: one that exits is reported at once with the
last lines of its log; with DEMO_ONCE=1 the demo then stops and exits 1, otherwise it starts a
service process (web, worker, beat, Flower) again, up to three times.

Ctrl-C stops everything it started. With DEMO_ONCE=1 it stops and exits after the summary,
with status 0 only when both loans reached their expected end.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from btcloan.dev import localnodes
from btcloan.dev.demo_borrower import Borrower, DemoFailure, Display, Loan, Wallet, btc, rbtc
from btcloan.dev.stack import (
    SHORT_SCENARIO_SETTINGS,
    SHORT_TIMELOCKS,
    Miner,
    Stack,
    StackError,
    Supervisor,
    exit_report,
    http_ok,
    postgres_url_with_database,
)

BASE_DIR = Path(__file__).resolve().parents[2]
# A PostgreSQL database the demo made is marked so, and only such a one is ever reset.
DEMO_DATABASE_COMMENT = "btcloan demo database (make demo resets it on each run)"


# A service process the supervisor starts again (interactive runs only), and how often.
RESTARTABLE = frozenset({"web", "worker", "beat", "flower"})
MAX_RESTARTS = 3


class ProcessDied(BaseException):
    """A process of the stack exited under DEMO_ONCE=1. A BaseException, like Ctrl-C, so no
    `except Exception` on the way (a client library's retry) can swallow it."""


def say(message: str) -> None:
    clear = "\r\033[K" if sys.stdout.isatty() else ""  # over a progress line, if one shows
    print(f"{clear}[demo] {message}", flush=True)


def demo_lender_btc_key(var_dir: Path) -> Path:
    """The demo lender's Bitcoin key file, created once with a fresh CSPRNG key."""
    import secrets

    path = var_dir / "lender-btc.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path


def prepare_postgres(url: str) -> None:
    """Give the demo an empty database: create it when missing; reset it when an earlier demo
    made it; refuse one that holds data the demo did not make (its chains are gone)."""
    import psycopg2
    from psycopg2 import sql

    name = urlsplit(url).path.lstrip("/")
    admin = psycopg2.connect(postgres_url_with_database(url, "postgres"))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                [name],
            )
            row = cur.fetchone()
            ident = sql.Identifier(name)
            if row is not None and row[0] == DEMO_DATABASE_COMMENT:
                say(f"database: resetting {name} (made by an earlier demo)")
                cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident))
                row = None
            if row is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(ident))
                say(f"database: created {name}")
            else:
                with psycopg2.connect(url) as conn, conn.cursor() as target:
                    target.execute(
                        "SELECT count(*) FROM information_schema.tables "
                        "WHERE table_schema = 'public'"
                    )
                    (tables,) = target.fetchone() or (0,)
                conn.close()
                if tables:
                    raise StackError(
                        f"database {name} holds tables the demo did not make; the demo starts "
                        "new chains, so name an empty or missing database instead"
                    )
            comment = sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                ident, sql.Literal(DEMO_DATABASE_COMMENT)
            )
            cur.execute(comment)
    finally:
        admin.close()


def supervise(stack: Stack, *, once: bool) -> Supervisor:
    """Report a process that exits at once; under DEMO_ONCE=1 interrupt the demo (SIGUSR1 to
    ourselves: the main thread raises ProcessDied wherever it waits), else restart it."""
    restarts: dict[str, int] = {}

    def on_exit(proc: localnodes.ManagedProcess) -> None:
        say(exit_report(proc))
        if once:
            os.kill(os.getpid(), signal.SIGUSR1)
        elif proc.name in RESTARTABLE and restarts.get(proc.name, 0) < MAX_RESTARTS:
            restarts[proc.name] = restarts.get(proc.name, 0) + 1
            say(f"starting {proc.name} again ({restarts[proc.name]} of {MAX_RESTARTS})")
            stack.restart(proc.name)
        else:
            say(f"{proc.name} stays down: the loans may stall (Ctrl-C stops the demo)")

    def died(signum: int, frame: object) -> None:
        raise ProcessDied

    signal.signal(signal.SIGUSR1, died)
    return Supervisor(stack, on_exit).start()


def print_access(stack: Stack, admin_password: str) -> None:
    base, flower = stack.urls["web"], stack.urls["flower"]
    say(f"API docs : {base}/api/docs/")
    say(f"Admin    : {base}/admin/  (user: operator, password: {admin_password})")
    say(f"Dashboard: {base}/admin/dashboard/")
    say(f"Flower   : {flower}/" + ("" if http_ok(f"{flower}/healthcheck") else " (not answering)"))
    say(f"Logs     : {stack.log_dir}")


@dataclass
class Outcome:
    loan: Loan
    expected_stage: str
    seconds: float
    error: str = ""

    @property
    def ok(self) -> bool:
        detail = self.loan.detail
        return (
            not self.error
            and detail.get("status") == "closed"
            and detail.get("bitcoin_stage") == self.expected_stage
        )


def play_repaid(borrower: Borrower) -> Loan:
    loan = borrower.open_loan("loan A")
    borrower.accept(loan)
    borrower.repay(loan)
    borrower.wait_status(loan, "repaid")
    borrower.release(loan)
    borrower.wait_status(loan, "closed", "released")
    return loan


def play_defaulted(borrower: Borrower) -> Loan:
    loan = borrower.open_loan("loan B")
    borrower.accept(loan)
    borrower.display.line("loan B   you        (keep the rBTC and never repay)")
    borrower.wait_status(loan, "defaulted", timeout=240)
    borrower.wait_status(loan, "closed", "swept", timeout=300)
    return loan


def run_loan(
    borrower: Borrower, label: str, play: Callable[[Borrower], Loan], expected_stage: str
) -> Outcome:
    started = time.monotonic()
    opened = len(borrower.loans)
    try:
        loan = play(borrower)
        return Outcome(loan, expected_stage, time.monotonic() - started)
    except (DemoFailure, OSError, RuntimeError, ValueError) as exc:
        borrower.display.done_waiting()
        say(f"{label} failed: {exc}")
        loan = borrower.loans[-1] if len(borrower.loans) > opened else Loan(label, borrower.wallet)
        return Outcome(loan, expected_stage, time.monotonic() - started, str(exc))


def summary(outcomes: list[Outcome], display: Display) -> None:
    say("")
    say("Summary")
    for outcome in outcomes:
        detail = outcome.loan.detail
        state = f"{detail.get('status', '?')} / {detail.get('bitcoin_stage', '?')}"
        verdict = "as expected" if outcome.ok else f"NOT as expected {outcome.error}".strip()
        amount = rbtc(int(detail["amount_wei"])) if detail.get("amount_wei") else "-"
        collateral = detail.get("collateral", {}).get("value_sats")
        say(
            f"  {outcome.loan.label}: #{outcome.loan.onchain_id} {amount} against "
            f"{btc(collateral) if collateral else '-'}: {state} after {outcome.seconds:.0f}s "
            f"({len(detail.get('timeline', []))} timeline entries) - {verdict}"
        )


@dataclass
class Service:
    """What `start_service` brought up."""

    evm_url: str
    admin_password: str
    miner: Miner


def start_service(stack: Stack, env: dict[str, str], var_root: Path) -> Service:
    """Nodes, database, lender keys, contracts, then web, worker, beat and Flower."""
    database = env.get("DATABASE_URL", "")
    if database.startswith(("postgres://", "postgresql://")):
        prepare_postgres(database)
    say("database: " + (urlsplit(database).path.lstrip("/") if database else "SQLite file"))
    if env.get("REDIS_URL"):
        say(f"broker and cache: Redis {env['REDIS_URL']}")
    evm_url, started_evm = stack.use_or_start_evm_node()
    say(("started anvil at " if started_evm else "EVM node: using ") + evm_url)
    _, started_btc = stack.use_or_start_bitcoin_node()
    say(
        f"Bitcoin node: started {stack.processes[-1].name}"
        if started_btc
        else "Bitcoin node: using the one BITCOIN_RPC_URL names"
    )
    miner = Miner(stack, interval=float(env.get("DEMO_BTC_BLOCK_SECONDS", "1")))
    miner.mine(110)  # spendable coins for the borrower's wallet (coinbase maturity 100)
    # The lender is anvil's first dev account, with a Bitcoin key of its own made on
    # first run and kept (0600) under var/.
    stack.lender_keys(
        evm_key=localnodes.ANVIL_DEFAULT_KEYS[0], btc_key_file=demo_lender_btc_key(var_root)
    )
    say("database: applying migrations")
    stack.migrate()
    admin_password = stack.create_operator("operator")
    deployment = stack.deploy(SHORT_TIMELOCKS)
    say(
        f"contracts: BtcCollateralLoan {deployment['loan_address']} (timelocks in EVM "
        f"blocks: {', '.join(f'{k}={v}' for k, v in SHORT_TIMELOCKS.items())})"
    )
    stack.start_web(int(env.get("DEMO_WEB_PORT", "0")) or None)
    stack.start_worker()
    stack.start_beat()
    stack.start_flower(int(env.get("FLOWER_PORT", "0")) or None)
    stack.wait_healthy()
    stack.wait_workers()
    return Service(evm_url, admin_password, miner)


def play_both(stack: Stack, service: Service, started: float) -> list[Outcome]:
    display = Display(started=started)
    borrower = Borrower(
        web_url=stack.urls["web"],
        evm_url=service.evm_url,
        bitcoin_rpc=stack.bitcoin_rpc,
        wallet=Wallet(localnodes.ANVIL_DEFAULT_KEYS[1]),
        display=display,
    )
    say(f"borrower {borrower.wallet.address} signed in with its wallet (EIP-4361)")
    outcomes = [run_loan(borrower, "loan A", play_repaid, "released")]
    # A second loan with fresh Bitcoin keys and preimage, from the same EVM account.
    borrower.wallet = Wallet(localnodes.ANVIL_DEFAULT_KEYS[1])
    outcomes.append(run_loan(borrower, "loan B", play_defaulted, "swept"))
    summary(outcomes, display)
    return outcomes


def run(stack: Stack, env: dict[str, str], var_root: Path, once: bool) -> int:
    started = time.monotonic()
    service = start_service(stack, env, var_root)
    supervise(stack, once=once)
    service.miner.start()
    pids = ", ".join(f"{p.name} (pid {p.pid})" for p in stack.processes)
    say(f"service up in {time.monotonic() - started:.0f}s: {pids}")
    print_access(stack, service.admin_password)
    say("")
    try:
        outcomes = play_both(stack, service, started)
    finally:
        service.miner.stop()
    ok = all(o.ok for o in outcomes)
    say(f"total {time.monotonic() - started:.0f}s")
    say("")
    print_access(stack, service.admin_password)
    if once:
        say("DEMO_ONCE=1: stopping" + (" (both loans as expected)" if ok else " (FAILED)"))
        return 0 if ok and not stack.dead() else 1
    say("Ctrl-C stops everything the demo started.")
    while True:
        time.sleep(1)


def main() -> int:
    once = os.environ.get("DEMO_ONCE") == "1"
    var_root = Path(os.environ.get("BTCLOAN_VAR_DIR", BASE_DIR / "var"))
    run_dir = var_root / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo's own state: new chains, new stores
    env = dict(os.environ)
    env["BTCLOAN_VAR_DIR"] = str(run_dir)
    for name, value in SHORT_SCENARIO_SETTINGS.items():
        env.setdefault(name, value)
    stack = Stack(var_dir=run_dir, env=env, log=say)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # even when started with SIGINT ignored
    try:
        return run(stack, env, var_root, once)
    except KeyboardInterrupt:
        say("interrupted")
        return 0
    except ProcessDied:
        say("DEMO_ONCE=1: stopping because a process exited (FAILED)")
        return 1
    except (StackError, localnodes.NodeStartError, DemoFailure) as exc:
        say(f"failed: {exc}")
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
