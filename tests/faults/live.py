"""The backend as real processes for the process-level faults: `celery worker` (prefork) and
`celery beat`, started by `btcloan.dev.stack.Stack` on the test's PostgreSQL database and Redis db,
reaching anvil and the Bitcoin node through TCP relays the test can cut.

`LiveDesk` is the integration desk with the in-process pump replaced by waiting: the test is
the borrower and the miners, the processes are the lender.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from btcloan.dev.stack import Stack
from loans.models import Loan
from tests.bitcoin.conftest import TcpRelay, relay_url
from tests.support.desk import Desk

# Beat's intervals for a short scenario (seconds).
LIVE_INTERVALS = {
    "EVM_POLL_INTERVAL": "0.5",
    "BITCOIN_POLL_INTERVAL": "0.5",
    "BITCOIN_MONITOR_INTERVAL": "1",
    "LOAN_WATCHDOG_INTERVAL": "1",
    "LOAN_RECONCILE_INTERVAL": "30",
    "CHAINWATCH_RETRY_BASE_SECONDS": "1",
    "CHAINWATCH_RETRY_MAX_SECONDS": "4",
    "LOG_LEVEL": "INFO",
}
TICK = 0.4  # seconds between the test's looks (and blocks)
WAIT = 120.0  # the longest a step may take, faults included


def env_value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


@dataclass
class Backend:
    """Worker and beat processes, and the relays between them and the nodes."""

    stack: Stack
    evm_relay: TcpRelay
    btc_relay: TcpRelay
    redis: redis.Redis
    events: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.stack.start_worker(concurrency=2)
        self.wait_worker()
        self.stack.start_beat()

    def wait_worker(self, timeout: float = 90.0) -> None:
        from btcloan.tasks import ping

        deadline = time.monotonic() + timeout
        while True:
            worker = self.stack.process("worker")
            if not worker.alive():
                raise RuntimeError(f"celery worker exited:\n{worker.log_tail(30)}")
            try:
                token = uuid.uuid4().hex
                if ping.apply_async(args=[token], expires=5).get(timeout=3) == {"pong": token}:
                    return
            except Exception:  # not consuming yet
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"celery worker never became ready:\n{worker.log_tail(30)}"
                    ) from None

    def kill9(self, name: str) -> None:
        """kill -9 of the process and of its children (prefork's pool), by process group."""
        proc = self.stack.process(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.process.wait(timeout=30)
        self.events.append(f"killed {name} (pid {proc.pid})")

    def restart(self, name: str) -> None:
        self.stack.restart(name)
        if name == "worker":
            self.wait_worker()
        self.events.append(f"restarted {name}")

    def expire_locks(self) -> None:
        """A dead worker's single-flight locks expire after their timeout (minutes); with the
        only worker dead nobody holds them, so the test lets them expire now."""
        keys = list(self.redis.scan_iter(match="btcloan:lock:*"))
        if keys:
            self.redis.delete(*keys)
        self.events.append(f"expired {len(keys)} locks of the dead worker")

    def stop(self) -> None:
        for name in ("beat", "worker"):  # nothing left to finish: no warm shutdown
            with contextlib.suppress(KeyError):
                self.kill9(name)
        self.stack.stop()
        self.evm_relay.down()
        self.btc_relay.down()


def backend_environment(
    base: dict[str, str], overrides: dict[str, Any], evm_relay: TcpRelay, btc_relay: TcpRelay
) -> dict[str, str]:
    env = {**base, **{name: env_value(value) for name, value in overrides.items()}}
    env.update(LIVE_INTERVALS)
    env["EVM_RPC_URL"] = relay_url(overrides["EVM_RPC_URL"], evm_relay.port)
    env["BITCOIN_RPC_URL"] = relay_url(overrides["BITCOIN_RPC_URL"], btc_relay.port)
    return env


def relay_to(url: str) -> TcpRelay:
    relay = TcpRelay(int(url.rsplit(":", 1)[1].split("/")[0]))
    relay.up()
    return relay


class LiveDesk(Desk):
    """The desk with the backend in processes: `pump` waits a tick, `until` mines as a
    network would while the test waits (EVM blocks only while a transaction still lacks its
    confirmations, unless the caller asks for more to let a deadline pass)."""

    confirmations: int = 2

    def pump(self, rounds: int = 12) -> None:
        time.sleep(TICK * 2)

    def settle(self) -> None:
        """Time for what a fault left behind (a late duplicate, a retry) to land."""
        time.sleep(3.0)

    def until(
        self, done: Callable[[], bool], *, evm: int = 1, btc: int = 0, steps: int = 30
    ) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                if done():
                    return
            except Loan.DoesNotExist:
                pass  # the request is still being read
            if evm > 1 or (evm == 1 and self._evm_needs_blocks()):
                self.mine_evm(evm)
            if btc:
                self.mine_btc(btc)
            time.sleep(TICK)
        raise AssertionError(f"not reached in {WAIT:.0f} s: {done}")

    def _evm_needs_blocks(self) -> bool:
        head = int(self.w3.eth.block_number)
        for number in range(head, max(head - self.confirmations - 1, -1), -1):
            if self.w3.eth.get_block(number)["transactions"]:
                return True
        return False
