"""The fault suite's fixtures and its closing summary.

In-process scenarios use the integration desk (`tests/integration/conftest.py`): the backend's
pollers and tasks run in the test process, so a fault can be placed exactly. Live scenarios
(`live`) run the backend as real `celery worker` and `celery beat` processes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from web3 import Web3

from btcloan.dev import localnodes
from btcloan.dev.stack import Stack
from tests.conftest import BitcoinNode, worker_environment
from tests.faults.live import Backend, LiveDesk, backend_environment, relay_to
from tests.integration.conftest import desk  # noqa: F401 - the in-process desk fixture
from tests.support.desk import desk_chains


@pytest.fixture
def bitcoin_node(tmp_path: Path) -> Iterator[BitcoinNode]:
    """A fresh regtest node per scenario (the session's grows by every test's blocks, and the
    devnode's invalidateblock replays its whole chain): bitcoind when installed, else the
    devnode."""
    binary = localnodes.find_bitcoind()
    datadir = tmp_path / "bitcoin-node"
    if binary:
        process = localnodes.start_bitcoind(binary, datadir=datadir)
        kind = "bitcoind"
    else:
        process = localnodes.start_devnode(datadir=datadir)
        kind = "devnode"
    yield BitcoinNode(kind, process)
    process.stop()


_OUTCOMES: Counter[tuple[str, str]] = Counter()


def _family(nodeid: str) -> str:
    name = nodeid.split("::")[-1]
    test, _, params = name.partition("[")
    if test == "test_live_fault":  # one family per fault: its first parameter
        return "live " + params.split("-")[0]
    return test.removeprefix("test_")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/faults/" not in report.nodeid:
        return
    outcome: str | None = None
    if report.when == "call":
        outcome = report.outcome
    elif report.outcome == "skipped":
        outcome = "skipped"  # at setup (teardown never skips)
    elif report.outcome == "failed":
        outcome = "error"  # a fixture failed, at setup or teardown
    if outcome is not None:
        _OUTCOMES[(_family(report.nodeid), outcome)] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _OUTCOMES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault scenarios")
    families = sorted({family for family, _ in _OUTCOMES})
    for family in families:
        counts = {o: n for (f, o), n in _OUTCOMES.items() if f == family}
        write(f"{family:45} " + ", ".join(f"{n} {o}" for o, n in sorted(counts.items())))
    total = Counter[str]()
    for (_, outcome), n in _OUTCOMES.items():
        total[outcome] += n
    write(
        f"fault scenarios run: {sum(total.values())} - "
        + ", ".join(f"{n} {o}" for o, n in sorted(total.items()))
    )


@pytest.fixture
def live(
    w3: Web3,
    bitcoin_node: BitcoinNode,
    settings: Any,
    transactional_db: None,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> Iterator[tuple[LiveDesk, Backend]]:
    """A desk whose lender is a real `celery worker` and `celery beat` (separate processes on
    the test database and Redis db), reaching the nodes through relays the test can cut."""
    from django.db import connection

    with desk_chains(w3, bitcoin_node, settings) as chains:
        overrides = chains.settings
        evm_relay, btc_relay = relay_to(overrides["EVM_RPC_URL"]), relay_to(bitcoin_node.url)
        env = backend_environment(
            worker_environment(connection.settings_dict["NAME"]), overrides, evm_relay, btc_relay
        )
        backend = Backend(
            Stack(var_dir=tmp_path / "stack", env=env, log=lambda line: None),
            evm_relay,
            btc_relay,
            redis_client,
        )
        try:
            backend.start()
            yield (
                LiveDesk(
                    w3=w3,
                    node=bitcoin_node,
                    rpc=chains.rpc,
                    deployed=chains.deployed,
                    faucet=chains.faucet,
                ),
                backend,
            )
        finally:
            backend.stop()
