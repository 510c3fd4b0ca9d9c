"""The desk as it runs in production, one per test: a live web server, a Celery worker and beat
as separate processes (btcloan/dev/stack.py), on this run's PostgreSQL test database and Redis
database, with its own anvil (a block a second) and the session's Bitcoin node, mined a block a
second by a `Miner`. The test is the borrower, through the public API and the chains only
(btcloan/dev/demo_borrower.py); assertions then read the database and both chains.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from btcloan.dev import localnodes
from btcloan.dev.demo_borrower import Borrower, Display, Wallet
from btcloan.dev.stack import SHORT_SCENARIO_SETTINGS, SHORT_TIMELOCKS, Miner, Stack
from tests.conftest import BitcoinNode, worker_environment


@dataclass
class LiveDesk:
    stack: Stack
    miner: Miner
    deployment: dict[str, Any]
    display: Display

    @property
    def web_url(self) -> str:
        return self.stack.urls["web"]

    def borrower(self, key_index: int = 1) -> Borrower:
        return Borrower(
            web_url=self.web_url,
            evm_url=self.stack.urls["evm"],
            bitcoin_rpc=self.stack.bitcoin_rpc,
            wallet=Wallet(localnodes.ANVIL_DEFAULT_KEYS[key_index]),
            display=self.display,
        )


@pytest.fixture
def live_desk(
    transactional_db: None,
    redis_client: redis.Redis,
    bitcoin_node: BitcoinNode,
    tmp_path: Path,
) -> Iterator[Callable[..., LiveDesk]]:
    """Start a desk on this loan contract flavour with these extra settings (e.g.
    LENDER_ACTIONS_REQUIRING_APPROVAL); it is stopped, by pid, before pytest-django empties
    the database."""
    from django.db import connection

    started: list[tuple[Stack, Miner]] = []
    timeline = io.StringIO()

    def start(flavour: str = "btcloan", **settings: str) -> LiveDesk:
        redis_client.flushdb()  # no broker message or lock from an earlier test
        env = worker_environment(connection.settings_dict["NAME"])
        env["BTCLOAN_VAR_DIR"] = str(tmp_path / "var")
        env["BITCOIN_RPC_URL"] = bitcoin_node.url
        env.update(SHORT_SCENARIO_SETTINGS)
        env.update(settings)
        stack = Stack(var_dir=tmp_path / "var", env=env, log=lambda _: None)
        miner: Miner | None = None
        try:
            stack.start_evm_node(block_time=1.0)
            stack.use_or_start_bitcoin_node()
            miner = Miner(stack, interval=1.0)
            started.append((stack, miner))
            miner.mine(101)  # the borrower's wallet needs mature coins
            stack.lender_keys(evm_key=localnodes.ANVIL_DEFAULT_KEYS[0])
            deployment = stack.deploy(SHORT_TIMELOCKS, flavour=flavour)
            stack.start_web()
            stack.start_worker()
            stack.start_beat()
            stack.wait_healthy()
            stack.wait_workers()
        except BaseException:
            if miner is None:
                stack.stop()
            raise
        miner.start()
        return LiveDesk(stack, miner, deployment, Display(timeline))

    yield start

    for stack, miner in started:
        miner.stop()
        # Shown by pytest when the test failed: what the borrower saw and the services said.
        print(timeline.getvalue())
        for proc in stack.processes:
            if proc.name in ("web", "worker", "beat"):
                print(f"--- {proc.name} ({proc.log_path}):\n{proc.log_tail(40)}")
        stack.stop()
