"""`make demo` as a new operator runs it (`python -m btcloan.dev.demo`, embedded defaults: SQLite
and the filesystem broker, its own anvil and Bitcoin node), with the worker killed mid-loan.

The demo must say so at once, with the worker's last log lines, and under DEMO_ONCE=1 exit 1.
On the way, what it prints is checked: the URLs and password before the first loan, and the
deposit and TX_1 lines, whose amounts must add up.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BASE_DIR = Path(__file__).resolve().parents[2]
# The demo brings up its own stores and nodes: none of the test run's may leak in.
NOT_INHERITED = (
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "EVM_RPC_URL",
    "BITCOIN_RPC_URL",
    "DJANGO_SETTINGS_MODULE",
    "DEPLOYMENT_FILE",
)


class Output:
    """The demo's stdout, read on a thread so the test can wait for lines."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._process = process
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            if self._process.poll() is not None and not self._thread.is_alive():
                break
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines[-60:]))

    def text(self) -> str:
        self._thread.join(timeout=30)
        return "\n".join(self.lines)


def _sats(text: str) -> int:
    return int(text.replace(",", ""))


def test_the_demo_reports_a_killed_worker_and_exits_1(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update({"DEMO_ONCE": "1", "BTCLOAN_VAR_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"})
    demo = subprocess.Popen(
        [sys.executable, "-m", "btcloan.dev.demo"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out = Output(demo)
    try:
        worker_pid = int(out.wait_for(r"service up in .*worker \(pid (\d+)\)", 300).group(1))
        out.wait_for(r"Admin    : http://\S+/admin/  \(user: operator, password: \S+\)", 5)
        # Mid-loan: deposit made, loan requested, TX_1 pre-signed; the offer is the desk's move.
        out.wait_for(r"loan A .*pre-sign TX_1", 180)
        os.killpg(worker_pid, signal.SIGKILL)  # the worker and its pool (its own session)
        started = time.monotonic()
        code = demo.wait(timeout=120)
        took = time.monotonic() - started
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGTERM)  # it stops what it started
            demo.wait(timeout=60)
    text = out.text()
    assert code == 1, text
    assert f"worker (pid {worker_pid}) exited: killed by signal 9" in text, text
    assert "DEMO_ONCE=1: stopping because a process exited (FAILED)" in text
    # The report carries the worker log's last lines, as the file has them.
    report = text[text.index(f"worker (pid {worker_pid}) exited") :]
    last_lines = (tmp_path / "demo" / "logs" / "worker.log").read_text().splitlines()[-3:]
    assert last_lines
    assert "\n".join(f"    {line}" for line in last_lines) in report
    assert took < 60, f"reported after {took:.0f}s"
    # Printed before the first loan: where to look, and with which password.
    assert text.index("Admin    :") < text.index("loan A")

    # The deposit adds up: what was sent is the parts it lists.
    sent = re.search(r"loan A .*fund escrow \S+ with (\d+\.\d{8}) BTC", text)
    parts = re.search(
        r"= collateral ([\d,]+) sats \+ origination fee ([\d,]+) sats \+ TX_1 miner fee "
        r"([\d,]+) sats \+ headroom ([\d,]+) sats",
        text,
    )
    assert sent, text
    assert parts, text
    sent_sats = int(sent.group(1).replace(".", ""))
    assert sent_sats == sum(_sats(p) for p in parts.groups())
    # And TX_1 spends exactly that escrow into the collateral, the fee output and its miner fee.
    tx1 = re.search(
        r"loan A .*pre-sign TX_1 \S+: escrow ([\d,]+) sats = collateral ([\d,]+) sats \+ "
        r"origination fee ([\d,]+) sats \+ miner fee ([\d,]+) sats",
        text,
    )
    assert tx1, text
    escrow, collateral, fee_output, miner_fee = (_sats(g) for g in tx1.groups())
    assert escrow == sent_sats
    assert escrow == collateral + fee_output + miner_fee
    assert fee_output == _sats(parts.group(2))
