"""The queues: the lender's outgoing transactions have one of their own, and every queue is
consumed by the worker commands this repository ships and documents."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import yaml
from celery import current_app

import celeryconfig

ROOT = Path(__file__).resolve().parent.parent
QUEUES = {queue.name for queue in celeryconfig.task_queues}


def queue_of(task_name: str) -> str:
    return str(current_app.amqp.router.route({}, task_name)["queue"].name)


def test_the_lender_sends_have_a_queue_of_their_own() -> None:
    """Not behind the pollers of their app: a worker takes from its queues in turn, so a send
    sharing `chainwatch` with the poll and the pump waited for their turn."""
    assert queue_of("chainwatch.send_evm_transaction") == "send"
    assert queue_of("bitcoin.broadcast") == "send"
    assert queue_of("chainwatch.poll") == "chainwatch"
    assert queue_of("chainwatch.outbox_pump") == "chainwatch"
    assert queue_of("bitcoin.scan") == "bitcoin"
    assert queue_of("loans.intake_loan_request") == "loans"


def test_every_queue_is_consumed_by_the_worker_commands_shipped_and_documented() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    # No -Q: the worker consumes every queue of task_queues (as the bench's and the dev stack's).
    assert "-Q" not in compose["services"]["worker"]["command"]
    bench = (ROOT / "bench" / "lifecycle_bench.py").read_text()
    assert '"-Q"' not in bench
    # docs/scaling.md: one worker per queue, every queue once.
    scaling = (ROOT / "docs" / "scaling.md").read_text()
    documented = re.findall(r"^celery -A btcloan worker -Q (\w+)", scaling, flags=re.M)
    assert sorted(documented) == sorted(QUEUES)
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    tabled = re.findall(r"^\| `(\w+)` \| `", architecture, flags=re.M)
    assert sorted(tabled) == sorted(QUEUES)


@pytest.mark.celery_worker
def test_a_worker_started_as_users_start_it_takes_the_sends(celery_worker_process: object) -> None:
    """The worker of docker-compose (no -Q) runs a send: here of a row that does not exist,
    which fails at its first read; a worker not consuming `send` would leave it pending."""
    from chainwatch.tasks import send_evm_transaction

    result = send_evm_transaction.apply_async(args=[10**9], task_id=uuid.uuid4().hex)
    result.get(timeout=30, propagate=False)
    assert result.state == "FAILURE"
    assert "EvmTransaction matching query does not exist" in str(result.result)
