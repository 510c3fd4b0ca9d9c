"""`make demo`: the whole service on one machine, and a borrower through two complete loans.

It uses the nodes and stores the environment names and starts what is missing
(btcloan/dev/stack.py):
anvil (a block a second), the Bitcoin node (bitcoind when installed, else the embedded devnode),
and on embedded defaults a SQLite file and the filesystem broker, all under var/demo/ (fresh
each run). It deploys the contracts with short timelocks, starts web, worker, beat and Flower,
and mines a Bitcoin block a second as a miner would.

Then a borrower (btcloan/dev/demo_borrower.py: the public REST API, web3 with anvil key 1, the
node's wallet and vaultero) takes two loans: one repaid and released, one defaulted and swept.
Each loan's timeline across both chains prints as it happens; a summary follows, then the URLs.

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
    http_ok,
    postgres_url_with_database,
)

BASE_DIR = Path(__file__).resolve().parents[2]
# A PostgreSQL database the demo made is marked so, and only such a one is ever reset.
DEMO_DATABASE_COMMENT = "btcloan demo database (make demo resets it on each run)"


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


def start_chains(stack: Stack, env: dict[str, str], var_root: Path) -> tuple[str, Miner]:
    """The database, both nodes (started unless the environment names running ones), coins
    for the borrower's wallet, and the lender's keys."""
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
    return evm_url, miner


def start_service(stack: Stack, env: dict[str, str]) -> tuple[str, str, str]:
    """Migrations, the operator, the contracts, then web, worker, beat and Flower, healthy:
    (web URL, Flower URL, the operator's password)."""
    say("database: applying migrations")
    stack.migrate()
    admin_password = stack.create_operator("operator")
    deployment = stack.deploy(SHORT_TIMELOCKS)
    say(
        f"contracts: BtcCollateralLoan {deployment['loan_address']} (timelocks in EVM "
        f"blocks: {', '.join(f'{k}={v}' for k, v in SHORT_TIMELOCKS.items())})"
    )
    base = stack.start_web(int(env.get("DEMO_WEB_PORT", "0")) or None)
    stack.start_worker()
    stack.start_beat()
    flower = stack.start_flower(int(env.get("FLOWER_PORT", "0")) or None)
    stack.wait_healthy()
    stack.wait_workers()
    return base, flower, admin_password


def play_loans(stack: Stack, *, base: str, evm_url: str, started: float) -> bool:
    """Loan A repaid and released, loan B defaulted and swept; True when both ended so."""
    display = Display(started=started)
    borrower = Borrower(
        web_url=base,
        evm_url=evm_url,
        bitcoin_rpc=stack.bitcoin_rpc,
        wallet=Wallet(localnodes.ANVIL_DEFAULT_KEYS[1]),
        display=display,
    )
    say(f"borrower {borrower.wallet.address} signed in with its wallet (EIP-4361)")
    outcomes = [
        run_loan(borrower, "loan A", play_repaid, "released"),
    ]
    # A second loan with fresh Bitcoin keys and preimage, from the same EVM account.
    borrower.wallet = Wallet(localnodes.ANVIL_DEFAULT_KEYS[1])
    outcomes.append(run_loan(borrower, "loan B", play_defaulted, "swept"))
    summary(outcomes, display)
    return all(o.ok for o in outcomes)


def main() -> int:
    started = time.monotonic()
    once = os.environ.get("DEMO_ONCE") == "1"
    var_root = Path(os.environ.get("BTCLOAN_VAR_DIR", BASE_DIR / "var"))
    run_dir = var_root / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo's own state: new chains, new stores
    env = dict(os.environ)
    env["BTCLOAN_VAR_DIR"] = str(run_dir)
    for name, value in SHORT_SCENARIO_SETTINGS.items():
        env.setdefault(name, value)
    stack = Stack(var_dir=run_dir, env=env, log=say)
    miner: Miner | None = None

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # even when started with SIGINT ignored
    try:
        evm_url, miner = start_chains(stack, env, var_root)
        base, flower, admin_password = start_service(stack, env)
        miner.start()
        say(f"service up in {time.monotonic() - started:.0f}s: web, worker, beat, Flower")
        say("")
        ok = play_loans(stack, base=base, evm_url=evm_url, started=started)
        dead = [p.name for p in stack.dead()]
        flower_up = http_ok(f"{flower}/healthcheck")
        say(f"total {time.monotonic() - started:.0f}s")
        say("")
        say(f"API docs : {base}/api/docs/")
        say(f"Admin    : {base}/admin/  (user: operator, password: {admin_password})")
        say(f"Flower   : {flower}/" + ("" if flower_up else " (not answering)"))
        say(f"Logs     : {stack.log_dir}")
        if dead:
            say(f"these exited early, see their logs: {', '.join(dead)}")
        if once:
            say("DEMO_ONCE=1: stopping" + (" (both loans as expected)" if ok else " (FAILED)"))
            return 0 if ok and not dead else 1
        say("Ctrl-C stops everything the demo started.")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        say("interrupted")
        return 0
    except (StackError, localnodes.NodeStartError, DemoFailure) as exc:
        say(f"failed: {exc}")
        return 1
    finally:
        if miner is not None:
            miner.stop()
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
