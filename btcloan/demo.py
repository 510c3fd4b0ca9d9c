"""`make demo`: bring the whole service up on one machine and show where to look.

It uses the nodes and stores the environment names, and starts what is missing: anvil (from
node_modules) as the EVM node, the embedded Bitcoin devnode (or bitcoind when installed), and
on embedded defaults a SQLite file and the filesystem broker. Then it migrates, deploys the
contracts, creates an operator account and starts web, worker, beat and Flower.

Ctrl-C stops everything it started. With DEMO_ONCE=1 it stops everything and exits once the
service is up (status 0 only when every part answered).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from btcloan import localnodes

BASE_DIR = Path(__file__).resolve().parent.parent


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


@dataclass
class Stack:
    """Everything the demo started, stopped in reverse order."""

    var_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    processes: list[localnodes.ManagedProcess] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        path = self.var_dir / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def adopt(self, process: localnodes.ManagedProcess) -> localnodes.ManagedProcess:
        self.processes.append(process)
        return process

    def manage(self, *args: str) -> None:
        subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=self.env, check=True)

    def spawn(self, name: str, argv: list[str], url: str = "") -> localnodes.ManagedProcess:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                argv,
                cwd=BASE_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self.adopt(localnodes.ManagedProcess(name, popen, url, log_path))

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.alive():
                say(f"stopping {process.name} (pid {process.pid})")
            process.stop()
        self.processes.clear()


def _reachable(url: str, method: str) -> bool:
    try:
        localnodes.json_rpc(url, method, timeout=2.0)
    except (OSError, RuntimeError, ValueError):
        return False
    return True


def ensure_evm_node(stack: Stack) -> str:
    url = os.environ.get("EVM_RPC_URL", "")
    if url and _reachable(url, "eth_chainId"):
        say(f"EVM node: using {url}")
        return url
    node = stack.adopt(
        localnodes.start_anvil(
            chain_id=int(os.environ.get("EVM_CHAIN_ID", "31337")),
            block_time=1.0,
            log_path=stack.log_dir / "anvil.log",
        )
    )
    say(f"EVM node: started anvil at {node.url} (pid {node.pid}, a block a second)")
    return node.url


def ensure_bitcoin_node(stack: Stack) -> str | None:
    url = os.environ.get("BITCOIN_RPC_URL", "")
    if url and _reachable(url, "getblockchaininfo"):
        say("Bitcoin node: using the one BITCOIN_RPC_URL names")
        return url
    datadir = stack.var_dir / "bitcoin-node"
    binary = localnodes.find_bitcoind()
    if binary:
        node = stack.adopt(localnodes.start_bitcoind(binary, datadir=datadir))
    elif hasattr(localnodes, "start_devnode"):
        node = stack.adopt(localnodes.start_devnode(datadir=datadir))
    else:
        say("Bitcoin node: none available yet (no bitcoind, devnode not built): skipped")
        return None
    say(f"Bitcoin node: started {node.name} (pid {node.pid})")
    return node.url


def demo_lender_btc_key(var_dir: Path) -> Path:
    """The demo lender's Bitcoin key file, created once with a fresh CSPRNG key."""
    path = var_dir / "lender-btc.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path


def wait_http(url: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own URL
                if response.status == 200:
                    return True
        except (OSError, urllib.error.URLError):
            time.sleep(0.3)
    return False


def main() -> int:
    var_dir = Path(os.environ.get("BTCLOAN_VAR_DIR", BASE_DIR / "var"))
    stack = Stack(var_dir=var_dir, env=dict(os.environ))
    stack.env.setdefault("BTCLOAN_VAR_DIR", str(var_dir))
    stack.env.setdefault("DJANGO_SETTINGS_MODULE", "btcloan.settings")
    once = os.environ.get("DEMO_ONCE") == "1"

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        stack.env["EVM_RPC_URL"] = ensure_evm_node(stack)
        # The demo lender is anvil's first well-known dev account, with a Bitcoin key of its
        # own made on first run and kept (0600) under var/.
        stack.env.setdefault("LENDER_EVM_PRIVATE_KEY", localnodes.ANVIL_DEFAULT_KEYS[0])
        if not (stack.env.get("LENDER_BTC_PRIVATE_KEY") or stack.env.get("LENDER_BTC_KEY_FILE")):
            stack.env["LENDER_BTC_KEY_FILE"] = str(demo_lender_btc_key(var_dir))
        bitcoin_url = ensure_bitcoin_node(stack)
        if bitcoin_url:
            stack.env["BITCOIN_RPC_URL"] = bitcoin_url

        say("database: applying migrations")
        stack.manage("migrate", "--noinput", "-v", "0")
        admin_password = secrets.token_urlsafe(12)
        stack.env["BTCLOAN_OPERATOR_PASSWORD"] = admin_password
        stack.manage("ensure_operator", "--username", "operator")
        if (BASE_DIR / "chainwatch" / "management" / "commands" / "deploy_contracts.py").exists():
            say("contracts: deploying BtcCollateralLoan and EtherSwap")
            stack.manage("deploy_contracts")

        web_port = int(os.environ.get("DEMO_WEB_PORT", "0")) or localnodes.free_port()
        flower_port = int(os.environ.get("FLOWER_PORT", "0")) or localnodes.free_port()
        base = f"http://127.0.0.1:{web_port}"
        python = sys.executable
        stack.spawn(
            "web", [python, "manage.py", "runserver", "--noreload", f"127.0.0.1:{web_port}"], base
        )
        celery = [python, "-m", "celery", "-A", "btcloan"]
        stack.spawn("worker", [*celery, "worker", "--loglevel=INFO", "--concurrency=2"])
        stack.spawn("beat", [*celery, "beat", "--loglevel=INFO"])
        stack.spawn(
            "flower",
            [*celery, "flower", f"--port={flower_port}", "--address=127.0.0.1"],
            f"http://127.0.0.1:{flower_port}",
        )

        healthy = wait_http(f"{base}/api/v1/health")
        flower_up = wait_http(f"http://127.0.0.1:{flower_port}/healthcheck", timeout=30)
        dead = [p.name for p in stack.processes if not p.alive()]
        say("")
        say(f"API docs : {base}/api/docs/")
        say(f"API      : {base}/api/v1/health")
        say(f"Admin    : {base}/admin/  (user: operator, password: {admin_password})")
        say(f"Flower   : http://127.0.0.1:{flower_port}/" + ("" if flower_up else " (not up)"))
        say(f"Logs     : {stack.log_dir}")
        if dead:
            say(f"these exited early, see their logs: {', '.join(dead)}")
        ok = healthy and flower_up and not dead
        if once:
            say("DEMO_ONCE=1: stopping" + (" (all parts answered)" if ok else " (FAILED)"))
            return 0 if ok else 1
        say("Ctrl-C stops everything the demo started.")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        say("interrupted")
        return 0
    except (subprocess.CalledProcessError, localnodes.NodeStartError) as exc:
        say(f"failed: {exc}")
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())
