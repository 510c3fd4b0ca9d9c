"""Local node processes for tests and the demo: anvil (from node_modules) and bitcoind.

Each node is started directly (never through npx or a shell), so the pid we hold is the node's
own and stopping it stops exactly what we started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BASE_DIR = Path(__file__).resolve().parents[2]
ANVIL_BINARY = BASE_DIR / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
# anvil's dev accounts come from this public mnemonic (BIP-44 path m/44'/60'/0'/0/i); the
# first is the lender in tests and the demo. Derived, not pasted, so they cannot be mistyped.
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"


def _anvil_dev_keys(count: int) -> tuple[str, ...]:
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    return tuple(
        "0x" + Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}").key.hex()
        for i in range(count)
    )


ANVIL_DEFAULT_KEYS = _anvil_dev_keys(10)


class NodeStartError(RuntimeError):
    """A local node did not come up."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ManagedProcess:
    """A child process we started and must stop."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def json_rpc(url: str, method: str, params: Sequence[Any] = (), *, timeout: float = 5.0) -> Any:
    """One JSON-RPC call with the standard library (credentials may be in the URL)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    headers = {"Content-Type": "application/json"}
    if parts.username:
        token = b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        url = parts._replace(netloc=netloc).geturl()
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    request = urllib.request.Request(url, data=body.encode(), headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            payload = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        # bitcoind answers errors with HTTP 500 and a JSON body.
        payload = json.loads(exc.read() or b"{}")
    if payload.get("error"):
        raise RuntimeError(f"{method}: {payload['error']}")
    return payload["result"]


def _wait_for(url: str, method: str, proc: ManagedProcess, deadline: float) -> Any:
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise NodeStartError(f"{proc.name} exited early:\n{proc.log_tail()}")
        try:
            return json_rpc(url, method, timeout=2.0)
        except (OSError, RuntimeError, ValueError) as exc:
            last_error = exc
            time.sleep(0.1)
    proc.stop()
    raise NodeStartError(f"{proc.name} did not answer {method} in time: {last_error}")


def _spawn(argv: list[str], log_path: Path | None, env: dict[str, str] | None = None) -> Any:
    log: IO[bytes] | int = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("ab")
    return subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop the node
    )


def start_anvil(
    *,
    port: int | None = None,
    chain_id: int = 31337,
    block_time: float | None = None,
    log_path: Path | None = None,
    timeout: float = 30.0,
) -> ManagedProcess:
    """Start anvil from node_modules on a free port and wait until it answers eth_chainId."""
    if not ANVIL_BINARY.exists():
        raise NodeStartError(f"anvil is not installed at {ANVIL_BINARY}: run `npm ci` first")
    port = port or free_port()
    argv = [
        str(ANVIL_BINARY),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--chain-id",
        str(chain_id),
        "--silent",
    ]
    if block_time is not None:
        argv += ["--block-time", str(block_time)]
    url = f"http://127.0.0.1:{port}"
    proc = ManagedProcess("anvil", _spawn(argv, log_path), url, log_path)
    answered = _wait_for(url, "eth_chainId", proc, time.monotonic() + timeout)
    proc.extra["chain_id"] = int(answered, 16)
    return proc


def find_bitcoind() -> str | None:
    """The bitcoind to use: $BITCOIND if set, else one on PATH, else None."""
    named = os.environ.get("BITCOIND")
    if named:
        return named if Path(named).exists() else shutil.which(named)
    return shutil.which("bitcoind")


def start_bitcoind(
    binary: str,
    *,
    datadir: Path,
    port: int | None = None,
    user: str = "btcloan",
    password: str = "btcloan",  # noqa: S107 - a throwaway regtest node
    timeout: float = 60.0,
    extra_args: Sequence[str] = (),
    wallet: str = "btcloan",
) -> ManagedProcess:
    """Start `bitcoind -regtest` with its own datadir, wait for getblockchaininfo and load a
    wallet (`wallet`: the faucet of tests and the demo, one per node so calls need no path).
    The relay fees are pinned (they changed across versions) to what the devnode applies."""
    port = port or free_port()
    datadir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "-regtest",
        f"-datadir={datadir}",
        f"-rpcport={port}",
        f"-port={free_port()}",
        f"-rpcuser={user}",
        f"-rpcpassword={password}",
        "-rpcbind=127.0.0.1",
        "-rpcallowip=127.0.0.1",
        "-listen=0",
        "-txindex=1",
        "-fallbackfee=0.0002",
        "-minrelaytxfee=0.00001",
        "-incrementalrelayfee=0.00001",
        "-server=1",
        "-printtoconsole=0",
        *extra_args,
    ]
    url = f"http://{user}:{password}@127.0.0.1:{port}"
    proc = ManagedProcess(
        "bitcoind", _spawn(argv, datadir / "stdout.log"), url, datadir / "stdout.log"
    )
    _wait_for(url, "getblockchaininfo", proc, time.monotonic() + timeout)
    _load_wallet(url, wallet)
    return proc


def _load_wallet(url: str, name: str) -> None:
    """bitcoind has no wallet until one is created (-18 "No wallet is loaded"): create it, or
    load it on a restart with the same datadir. The devnode's faucet wallet always exists."""
    try:
        json_rpc(url, "createwallet", [name], timeout=60.0)
    except RuntimeError as exc:
        if "already exists" not in str(exc):
            raise
        try:
            json_rpc(url, "loadwallet", [name], timeout=60.0)
        except RuntimeError as again:
            if "already loaded" not in str(again):
                raise


def start_devnode(
    *,
    datadir: Path,
    port: int | None = None,
    user: str = "btcloan",
    password: str = "btcloan",  # noqa: S107 - a throwaway regtest node
    timeout: float = 60.0,
    extra_args: Sequence[str] = (),
) -> ManagedProcess:
    """Start the embedded regtest node (`python -m bitcoin.devnode`, libbitcoinkernel's
    consensus) with its own datadir and wait for getblockchaininfo."""
    import sys

    port = port or free_port()
    datadir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "bitcoin.devnode",
        "--rpcport",
        str(port),
        "--rpcuser",
        user,
        "--rpcpassword",
        password,
        "--datadir",
        str(datadir),
        *extra_args,
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BASE_DIR), env.get("PYTHONPATH")]))
    url = f"http://{user}:{password}@127.0.0.1:{port}"
    log_path = datadir / "devnode.log"
    proc = ManagedProcess("devnode", _spawn(argv, log_path, env), url, log_path)
    _wait_for(url, "getblockchaininfo", proc, time.monotonic() + timeout)
    return proc
