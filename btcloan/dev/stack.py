"""The whole service as processes on one machine: the nodes, web, worker, beat and Flower.

`make demo`, tests/e2e (and the fault suite) share it. A `Stack` starts each part directly
(never through a shell), with one environment it wires as it goes (node URLs, the deployment,
the settings of a short scenario), one log file per process under `<var_dir>/logs`, and waits
until each part answers. It stops exactly what it started, in reverse order, by pid; single
parts can be stopped, killed and started again (`process`, `restart`).

A `Supervisor` thread reports a process that exits on its own, at once, with its log's tail.
A `Miner` thread mines regtest Bitcoin blocks at a steady pace, as a miner would.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from btcloan.dev import localnodes

BASE_DIR = Path(__file__).resolve().parents[2]

# Timelocks of a short scenario, in EVM blocks (anvil mines one a second; with one EVM block
# per Bitcoin block, t_0 and t_1 are also the CSV block counts). D=30: repay within 30 s of
# activation; t_B=20 to accept an offer; t_0=70 before the borrower can take the escrow back;
# t_L=15 for the lender to accept a repayment; t_1=48 (> t_L + D) before the lender can sweep.
# Each leaves a busy machine several seconds of slack over what the parties need.
SHORT_TIMELOCKS: Mapping[str, int] = {
    "loan_duration": 30,
    "t_borrower": 20,
    "t_btc_escrow": 70,
    "t_lender": 15,
    "t_btc_collateral": 48,
}

# The settings of a short scenario: few confirmations, pollers every second.
SHORT_SCENARIO_SETTINGS: Mapping[str, str] = {
    "EVM_CONFIRMATIONS": "2",
    "BITCOIN_CONFIRMATIONS": "2",
    "EVM_BLOCKS_PER_BITCOIN_BLOCK": "1",
    "TX1_CONFIRMATION_ALLOWANCE_BLOCKS": "2",
    "OFFER_SAFETY_MARGIN_BLOCKS": "2",
    "LOAN_REPAYMENT_ACCEPT_MARGIN": "3",
    "EVM_OUTBOX_RETRY_BASE_SECONDS": "2",
    # One EVM block per Bitcoin block makes t_B = 20 Bitcoin blocks on average: a 1e-6 bound
    # would leave a borrower ~8 s to sign. A demo accepts 1e-3 (the offer then needs 40 of
    # t_0's 70 blocks left, ~28 s after the deposit confirms); production keeps 1e-6.
    "OFFER_WINDOW_RISK": "0.001",
    "EVM_POLL_INTERVAL": "1",
    "BITCOIN_POLL_INTERVAL": "1",
    "BITCOIN_MONITOR_INTERVAL": "2",
    "LOAN_WATCHDOG_INTERVAL": "2",
    "LOAN_RECONCILE_INTERVAL": "30",
    # A short scenario has alerts of its own making (every deadline is near); keep them quiet.
    "LOAN_ALERT_REPAYMENT_MARGIN_BLOCKS": "2",
    "LOAN_ALERT_TX1_MARGIN_BLOCKS": "2",
}


class StackError(RuntimeError):
    """A part of the stack did not start or answer."""


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - ours
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def rpc_reachable(url: str, method: str) -> bool:
    try:
        localnodes.json_rpc(url, method, timeout=2.0)
    except (OSError, RuntimeError, ValueError):
        return False
    return True


def postgres_url_with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path=f"/{name}").geturl()


def run_secrets() -> dict[str, str]:
    """This run's own secret key and encryption key: outside DEBUG web, worker and beat
    refuse the published defaults (btcloan/startup.py)."""
    return {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "BTCLOAN_ENCRYPTION_KEYS": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    }


@dataclass
class Stack:
    """Everything started for one run, stopped in reverse order."""

    var_dir: Path
    env: dict[str, str]
    log: Callable[[str], None] = print
    processes: list[localnodes.ManagedProcess] = field(default_factory=list)
    _argv: dict[str, list[str]] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    # Pids stopped or killed on purpose: their exit is not news to a Supervisor.
    expected_exits: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.env.setdefault("BTCLOAN_VAR_DIR", str(self.var_dir))
        self.env.setdefault("DJANGO_SETTINGS_MODULE", "btcloan.settings")
        for name, value in run_secrets().items():
            if not self.env.get(name):
                self.env[name] = value
        self.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(BASE_DIR), self.env.get("PYTHONPATH")])
        )

    @property
    def log_dir(self) -> Path:
        path = self.var_dir / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- processes --------------------------------------------------------------------
    def adopt(self, process: localnodes.ManagedProcess) -> localnodes.ManagedProcess:
        self.processes.append(process)
        return process

    def process(self, name: str) -> localnodes.ManagedProcess:
        """The live (or last) process of that name."""
        for candidate in reversed(self.processes):
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    def spawn(self, name: str, argv: list[str], url: str = "") -> localnodes.ManagedProcess:
        log_path = self.log_dir / f"{name}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                argv,
                cwd=BASE_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the children
            )
        self._argv[name] = argv
        proc = localnodes.ManagedProcess(name, popen, url, log_path, {"log_offset": offset})
        return self.adopt(proc)

    def output(self, name: str) -> str:
        """What the live process of that name has logged (not its predecessors)."""
        proc = self.process(name)
        if proc.log_path is None:
            return ""
        with proc.log_path.open("rb") as log:
            log.seek(int(proc.extra.get("log_offset", 0)))
            return log.read().decode(errors="replace")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` (kill -9 by default) to a process and its children (a worker's pool:
        each runs in a session of its own) and reap it."""
        proc = self.process(name)
        self.expected_exits.add(proc.pid)
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):  # it died on its own meanwhile
                os.killpg(proc.pid, sig)
            proc.process.wait(timeout=30)

    def restart(self, name: str) -> localnodes.ManagedProcess:
        """Start a service process again with the argv and environment it had."""
        old = self.process(name)
        self.expected_exits.add(old.pid)
        old.stop()
        self.processes.remove(old)
        return self.spawn(name, self._argv[name], old.url)

    def dead(self) -> list[localnodes.ManagedProcess]:
        return [p for p in self.processes if not p.alive()]

    def stop(self) -> None:
        self.expected_exits.update(p.pid for p in self.processes)
        for proc in reversed(self.processes):
            if proc.alive():
                self.log(f"stopping {proc.name} (pid {proc.pid})")
            proc.stop()
        self.processes.clear()

    def manage(self, *args: str) -> str:
        """A manage.py command in the stack's environment; its output, or StackError."""
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=BASE_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            raise StackError(f"manage.py {args[0]} failed:\n{done.stdout}{done.stderr}".strip())
        return done.stdout

    # --- nodes ------------------------------------------------------------------------
    def start_evm_node(self, *, block_time: float | None = 1.0) -> str:
        """anvil from node_modules, mining a block every `block_time` seconds."""
        node = self.adopt(
            localnodes.start_anvil(
                chain_id=int(self.env.get("EVM_CHAIN_ID", "31337")),
                block_time=block_time,
                log_path=self.log_dir / "anvil.log",
            )
        )
        self.env["EVM_RPC_URL"] = node.url
        self.env["EVM_CHAIN_ID"] = str(node.extra["chain_id"])
        self.urls["evm"] = node.url
        return node.url

    def use_or_start_evm_node(self) -> tuple[str, bool]:
        """The EVM node EVM_RPC_URL names when it answers, else a new anvil (started: True)."""
        url = self.env.get("EVM_RPC_URL", "")
        if url and rpc_reachable(url, "eth_chainId"):
            self.urls["evm"] = url
            return url, False
        return self.start_evm_node(), True

    def start_bitcoin_node(self) -> str:
        """bitcoind -regtest when installed, else the embedded devnode, in var_dir."""
        datadir = self.var_dir / "bitcoin-node"
        binary = localnodes.find_bitcoind()
        if binary:
            node = localnodes.start_bitcoind(binary, datadir=datadir)
        else:
            node = localnodes.start_devnode(datadir=datadir)
        self.adopt(node)
        self.env["BITCOIN_RPC_URL"] = node.url
        self.env["BITCOIN_NETWORK"] = "regtest"
        self.urls["bitcoin"] = node.url
        return node.url

    def use_or_start_bitcoin_node(self) -> tuple[str, bool]:
        url = self.env.get("BITCOIN_RPC_URL", "")
        if url and rpc_reachable(url, "getblockchaininfo"):
            self.urls["bitcoin"] = url
            return url, False
        return self.start_bitcoin_node(), True

    def bitcoin_rpc(self, method: str, *params: Any) -> Any:
        return localnodes.json_rpc(self.urls["bitcoin"], method, params, timeout=60.0)

    def evm_rpc(self, method: str, *params: Any) -> Any:
        return localnodes.json_rpc(self.urls["evm"], method, params, timeout=30.0)

    # --- the service's set-up -----------------------------------------------------------
    def configure(self, settings: Mapping[str, str]) -> None:
        """Settings for every process started from now on (the environment wins over .env)."""
        self.env.update(settings)

    def lender_keys(self, *, evm_key: str, btc_key_file: Path | None = None) -> None:
        self.env.setdefault("LENDER_EVM_PRIVATE_KEY", evm_key)
        if not (self.env.get("LENDER_BTC_PRIVATE_KEY") or self.env.get("LENDER_BTC_KEY_FILE")):
            if btc_key_file is None:
                self.env["LENDER_BTC_PRIVATE_KEY"] = secrets.token_hex(32)
            else:
                self.env["LENDER_BTC_KEY_FILE"] = str(btc_key_file)

    def migrate(self) -> None:
        self.manage("migrate", "--noinput", "-v", "0")

    def create_operator(self, username: str = "operator") -> str:
        """An operator account with a fresh password (passed by environment, not argv)."""
        password = secrets.token_urlsafe(12)
        self.env["BTCLOAN_OPERATOR_PASSWORD"] = password
        try:
            self.manage("ensure_operator", "--username", username)
        finally:
            del self.env["BTCLOAN_OPERATOR_PASSWORD"]
        return password

    def deploy(
        self, timelocks: Mapping[str, int] = SHORT_TIMELOCKS, *, flavour: str = "btcloan"
    ) -> dict[str, Any]:
        """deploy_contracts with these timelocks (and loan contract flavour: ours, or the seed's
        reproduction); the services read DEPLOYMENT_FILE."""
        path = self.var_dir / "deployment.json"
        self.env["DEPLOYMENT_FILE"] = str(path)
        options = [f"--{name.replace('_', '-')}={value}" for name, value in timelocks.items()]
        options.append(f"--flavour={flavour}")
        self.manage("deploy_contracts", "--output", str(path), *options)
        deployment: dict[str, Any] = json.loads(path.read_text())
        return deployment

    # --- the service ------------------------------------------------------------------
    def start_web(self, port: int | None = None) -> str:
        """gunicorn with the production configuration (deploy/gunicorn.conf.py) on 127.0.0.1;
        sign-in messages name this origin. Static files come from the apps' directories
        (WhiteNoise's finders), so a run needs no collectstatic."""
        port = port or localnodes.free_port()
        base = f"http://127.0.0.1:{port}"
        self.env.setdefault("SIWE_DOMAIN", f"127.0.0.1:{port}")
        self.env.setdefault("SIWE_URI", base)
        self.env.setdefault("WHITENOISE_USE_FINDERS", "1")
        argv = [
            *(sys.executable, "-m", "gunicorn", "-c", str(BASE_DIR / "deploy/gunicorn.conf.py")),
            *("--bind", f"127.0.0.1:{port}", "--workers", "2", "--graceful-timeout", "5"),
        ]
        self.spawn("web", argv, base)
        self.urls["web"] = base
        return base

    def start_worker(self, *, concurrency: int = 2, name: str = "worker") -> None:
        self.spawn(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "btcloan",
                "worker",
                "--loglevel=INFO",
                f"--concurrency={concurrency}",
                f"--hostname={name}-{secrets.token_hex(3)}@%h",
            ],
        )

    def start_beat(self) -> None:
        schedule = self.var_dir / "celerybeat-schedule"
        self.spawn(
            "beat",
            [
                *(sys.executable, "-m", "celery", "-A", "btcloan", "beat"),
                "--loglevel=INFO",
                f"--schedule={schedule}",
            ],
        )

    def start_flower(self, port: int | None = None) -> str:
        port = port or localnodes.free_port()
        url = f"http://127.0.0.1:{port}"
        self.spawn(
            "flower",
            [
                *(sys.executable, "-m", "celery", "-A", "btcloan", "flower"),
                f"--port={port}",
                "--address=127.0.0.1",
            ],
            url,
        )
        self.urls["flower"] = url
        return url

    def wait_until(self, what: str, ready: Callable[[], bool], timeout: float = 90.0) -> None:
        """Poll `ready` until it holds; StackError (with the logs' tails) if a process died or
        the time ran out."""
        deadline = time.monotonic() + timeout
        while not ready():
            dead = self.dead()
            if dead or time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- {p.name}:\n{p.log_tail(15)}" for p in dead or self.processes
                )
                cause = f"{', '.join(p.name for p in dead)} exited" if dead else "timed out"
                raise StackError(f"waiting for {what}: {cause}\n{tails}")
            time.sleep(0.3)

    def wait_healthy(self, timeout: float = 90.0) -> None:
        """/api/v1/health answers 200 (database, broker and both nodes reachable)."""
        url = f"{self.urls['web']}/api/v1/health"
        self.wait_until("the web server's health check", lambda: http_ok(url), timeout)

    def wait_workers(self, timeout: float = 90.0, *, worker: str = "worker") -> None:
        """The worker logged `<hostname> ready.` (it consumes) and beat `beat: Starting`."""
        self.wait_until("the Celery worker", lambda: " ready." in self.output(worker), timeout)
        self.wait_until("Celery beat", lambda: "beat: Starting" in self.output("beat"), timeout)


class Supervisor:
    """Watches a stack's processes on a thread. The first time one exits that was not stopped
    on purpose, `on_exit` gets it (once per pid), e.g. to print its log's tail and stop."""

    def __init__(
        self,
        stack: Stack,
        on_exit: Callable[[localnodes.ManagedProcess], None],
        *,
        interval: float = 0.5,
    ) -> None:
        self.stack = stack
        self.on_exit = on_exit
        self.interval = interval
        self._reported: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> list[localnodes.ManagedProcess]:
        """The processes that exited unexpectedly since the last check (each handed on)."""
        found = [
            p
            for p in list(self.stack.processes)
            if not p.alive()
            and p.pid not in self.stack.expected_exits
            and p.pid not in self._reported
        ]
        for proc in found:
            self._reported.add(proc.pid)
            self.on_exit(proc)
        return found

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)


def exit_report(proc: localnodes.ManagedProcess, lines: int = 20) -> str:
    """What an operator needs when a process died: which, how, and its last log lines."""
    code = proc.process.returncode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    tail = proc.log_tail(lines) or "(its log is empty)"
    where = f" (log: {proc.log_path})" if proc.log_path else ""
    indented = "\n".join(f"    {line}" for line in tail.splitlines())
    return f"{proc.name} (pid {proc.pid}) exited: {how}{where}; its last lines:\n{indented}"


class Miner:
    """Mines a regtest block every `interval` seconds to its own address, on a thread."""

    def __init__(self, stack: Stack, *, interval: float = 1.0) -> None:
        self.stack = stack
        self.interval = interval
        self.address = str(stack.bitcoin_rpc("getnewaddress"))
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def mine(self, blocks: int = 1) -> None:
        self.stack.bitcoin_rpc("generatetoaddress", blocks, self.address)

    def start(self) -> Miner:
        self._thread = threading.Thread(target=self._run, name="btc-miner", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._paused.is_set():
                continue
            try:
                self.mine()
            except (OSError, RuntimeError, ValueError):
                self.errors += 1  # the node is restarting or busy: the next tick tries again

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
