"""A real poller process SIGKILLed in the middle of a hand-off: nothing lost, nothing twice."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.db import connection

from chainwatch.models import ChainCursor, DeliveryStatus, EvmEvent
from chainwatch.services import sync_lock_name
from tests.chainwatch.conftest import Chain, create_sink, drop_sink, sink_rows
from tests.chainwatch.helpers import full_lifecycle
from tests.conftest import worker_environment

BASE_DIR = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.evm, pytest.mark.faults, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def committed_sink(chain: Chain) -> Iterator[None]:
    create_sink()
    yield
    drop_sink()


def run_poller(chain: Chain, kill_after: int) -> subprocess.CompletedProcess[str]:
    env = worker_environment(connection.settings_dict["NAME"])
    s = chain.settings
    env.update(
        EVM_RPC_URL=s.EVM_RPC_URL,
        EVM_CHAIN_ID=str(s.EVM_CHAIN_ID),
        LOAN_CONTRACT_ADDRESS=s.LOAN_CONTRACT_ADDRESS,
        ETHERSWAP_CONTRACT_ADDRESS=s.ETHERSWAP_CONTRACT_ADDRESS,
        EVM_START_BLOCK=str(s.EVM_START_BLOCK),
        EVM_CONFIRMATIONS="0",
        CHAINWATCH_CONSUMER="tests.chainwatch.conftest.killing_consumer",
        CHAINWATCH_TEST_KILL_AFTER=str(kill_after),
        CHAINWATCH_DELIVERY_COMMIT_EVERY="2",
    )
    return subprocess.run(
        [sys.executable, "manage.py", "chainwatch_sync", "--once"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_killed_poller_loses_and_repeats_nothing(
    chain: Chain, committed_sink: None, redis_client: redis.Redis
) -> None:
    full_lifecycle(chain)
    killed = run_poller(chain, kill_after=3)
    assert killed.returncode == -9, killed.stderr[-2000:]
    # Indexing had committed (cursor and events together); the first pair of hand-offs
    # committed; the third consumer write died with its uncommitted pair.
    assert ChainCursor.objects.get().block_number == chain.head()
    total = EvmEvent.objects.count()
    assert total >= 11
    assert EvmEvent.objects.filter(status=DeliveryStatus.PROCESSED).count() == 2
    assert len(sink_rows()) == 2

    # The dead poller's single-flight lock expires on its own; here we do what the timeout does.
    redis_client.delete(f"btcloan:lock:{sync_lock_name(chain.settings.EVM_CHAIN_ID)}")
    finished = run_poller(chain, kill_after=10**6)
    assert finished.returncode == 0, finished.stderr[-2000:]
    handed = [row[0] for row in sink_rows()]
    assert sorted(handed) == sorted(EvmEvent.objects.values_list("pk", flat=True))
    assert len(handed) == len(set(handed)) == total
    assert not EvmEvent.objects.exclude(status=DeliveryStatus.PROCESSED).exists()
