"""The real-services harness: PostgreSQL (pytest-django), Redis, anvil, a Bitcoin node and a
real Celery worker process. Nothing here is faked."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from web3 import Web3
from web3.types import RPCEndpoint

from btcloan.dev import localnodes

BASE_DIR = Path(__file__).resolve().parent.parent


def _task_sending() -> dict[str, Any]:
    from celery import Task

    return {"delay": Task.delay, "apply_async": Task.apply_async}


_TASK_SENDING = _task_sending()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Tests capture tasks by patching `Task.delay` / `apply_async` (the desk, a few others).
    One left patched once every fixture is torn down would swallow all later tests' tasks, and
    a worker test far away would wait for nothing: it is an error of the test that leaked it,
    and the originals are put back."""
    from celery import Task

    result = yield
    leaked = [name for name, fn in _TASK_SENDING.items() if getattr(Task, name) is not fn]
    for name in leaked:
        setattr(Task, name, _TASK_SENDING[name])
    if leaked:
        raise RuntimeError(f"Task.{' and Task.'.join(leaked)} left patched by {item.nodeid}")
    return result


# --- Redis ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    """The test run's own Redis database, empty at the start."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


# --- EVM node -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def anvil() -> Iterator[localnodes.ManagedProcess]:
    """anvil from node_modules on a free port, stopped by its own pid at the end."""
    log_path = Path(tempfile.mkdtemp(prefix="btcloan-anvil-")) / "anvil.log"
    node = localnodes.start_anvil(chain_id=settings.EVM_CHAIN_ID, log_path=log_path)
    yield node
    node.stop()


@pytest.fixture(scope="session")
def w3_session(anvil: localnodes.ManagedProcess) -> Web3:
    return Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))


@pytest.fixture
def w3(w3_session: Web3) -> Iterator[Web3]:
    """The EVM node, rolled back after each test with evm_snapshot / evm_revert."""
    snapshot = w3_session.provider.make_request(RPCEndpoint("evm_snapshot"), [])["result"]
    yield w3_session
    reverted = w3_session.provider.make_request(RPCEndpoint("evm_revert"), [snapshot])
    assert reverted.get("result") is True, f"evm_revert failed: {reverted}"


@pytest.fixture
def evm_settings(settings: Any, anvil: localnodes.ManagedProcess) -> Any:
    """Django settings pointed at the test anvil."""
    settings.EVM_RPC_URL = anvil.url
    settings.EVM_CHAIN_ID = anvil.extra["chain_id"]
    return settings


# --- Bitcoin node ---------------------------------------------------------------------------
class BitcoinNode:
    """A running regtest node: bitcoind when one is installed, else the embedded devnode."""

    def __init__(self, kind: str, process: localnodes.ManagedProcess) -> None:
        self.kind = kind
        self.process = process
        self.url = process.url

    def rpc(self, method: str, *params: Any) -> Any:
        return localnodes.json_rpc(self.url, method, params, timeout=60.0)


def _devnode_available() -> bool:
    return (BASE_DIR / "bitcoin" / "devnode" / "__main__.py").exists()


@pytest.fixture(scope="session")
def bitcoin_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BitcoinNode]:
    binary = localnodes.find_bitcoind()
    datadir = tmp_path_factory.mktemp("bitcoin-node")
    if binary:
        process = localnodes.start_bitcoind(binary, datadir=datadir)
        kind = "bitcoind"
    elif _devnode_available() and hasattr(localnodes, "start_devnode"):
        process = localnodes.start_devnode(datadir=datadir)
        kind = "devnode"
    else:
        pytest.skip(
            "no Bitcoin node: no bitcoind on PATH or in $BITCOIND, and the embedded devnode "
            "(bitcoin/devnode, issue 5) is not built yet"
        )
    yield BitcoinNode(kind, process)
    process.stop()


# --- Celery worker --------------------------------------------------------------------------
def worker_environment(database_name: str | None = None) -> dict[str, str]:
    """The environment of a service process (worker, beat, web) sharing this test run's stores.

    The process reads plain `btcloan.settings`, as in production, pointed at the test database.
    """
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "btcloan.settings"
    db = settings.DATABASES["default"]
    name = database_name or db["NAME"]
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{name}"
    env["REDIS_URL"] = settings.REDIS_URL
    env["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL
    env["CELERY_RESULT_BACKEND"] = settings.CELERY_RESULT_BACKEND
    env["BTCLOAN_VAR_DIR"] = str(settings.VAR_DIR)
    return env


def _with_lender_keys(env: dict[str, str]) -> dict[str, str]:
    """Throwaway lender keys: a worker refuses to start outside DEBUG without them."""
    env.setdefault("LENDER_EVM_PRIVATE_KEY", "0x" + secrets.token_hex(32))
    if not (env.get("LENDER_BTC_PRIVATE_KEY") or env.get("LENDER_BTC_KEY_FILE")):
        env["LENDER_BTC_PRIVATE_KEY"] = secrets.token_hex(32)
    return env


@pytest.fixture
def celery_worker_process(
    transactional_db: None, redis_client: redis.Redis, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` process on the test run's Redis and PostgreSQL."""
    from django.db import connection

    from btcloan.tasks import ping

    log_path = tmp_path / "worker.log"
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "btcloan",
        "worker",
        "--pool=solo",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=INFO",
        f"--hostname=test-{uuid.uuid4().hex[:8]}@%h",
    ]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            cwd=BASE_DIR,
            env=_with_lender_keys(worker_environment(connection.settings_dict["NAME"])),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"celery worker exited:\n{log_path.read_text()[-3000:]}")
            try:
                ping.apply_async(args=["ready"], expires=5).get(timeout=3)
                break
            except Exception:  # the worker is not consuming yet
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"celery worker never became ready:\n{log_path.read_text()[-3000:]}"
                    )
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- Loan contracts (issue 3: chainwatch/evm) -----------------------------------------------
from btcloan.dev.contracts import DeployedContracts, deploy_for_tests  # noqa: E402


@pytest.fixture(scope="session")
def deployed_contracts(w3_session: Web3) -> DeployedContracts:
    """BtcCollateralLoan + EtherSwap deployed once per session (anvil key 0 is the lender,
    timelocks `btcloan.dev.contracts.TEST_TIMELOCKS`). Request `w3` too: its snapshot/revert
    then isolates each test's loans."""
    return deploy_for_tests(w3_session)


@pytest.fixture
def flavour() -> str:
    """The loan contract flavour a desk runs on (chainwatch.evm.flavour); a module overrides
    this fixture, with params, to run its scenarios on both."""
    return "btcloan"


@pytest.fixture(scope="session")
def seed_contracts(w3_session: Web3) -> DeployedContracts:
    """The seed flavour (our reproduction of the earlier prototype's loan contract, flaws
    included) + EtherSwap, deployed once per session like `deployed_contracts`."""
    from chainwatch.evm.flavour import ContractFlavour

    return deploy_for_tests(w3_session, flavour=ContractFlavour.SEED)
