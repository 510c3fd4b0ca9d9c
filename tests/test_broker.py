"""The embedded broker (btcloan/broker.py) under concurrent producers and consumers, as separate
processes on one folder: every message is delivered exactly once and whole.

Messages are large (64 KiB) so each write takes long enough for a consumer to meet it half
written, which is what crashed kombu's own filesystem transport in the demo.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from kombu import Connection

from btcloan.broker import Transport

PRODUCERS = 4
CONSUMERS = 4
PER_PRODUCER = 300
BODY = 64 * 1024


def _connection(folder: Path) -> Connection:
    return Connection(
        transport=Transport,
        transport_options={
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        },
    )


def _produce(folder: str, producer: int) -> None:
    with _connection(Path(folder)) as conn:
        queue = conn.SimpleQueue("stress")
        for seq in range(PER_PRODUCER):
            body = hashlib.sha256(f"{producer}:{seq}".encode()).hexdigest() * (BODY // 64)
            queue.put({"id": f"{producer}:{seq}", "body": body, "sha": _sha(body)})
        queue.close()


def _sha(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def _consume(folder: str, consumer: int, done_flag: str) -> None:
    received: list[str] = []
    corrupt = 0
    with _connection(Path(folder)) as conn:
        queue = conn.SimpleQueue("stress")
        while True:
            try:
                message = queue.get(block=True, timeout=0.2)
            except Empty:
                if os.path.exists(done_flag):
                    break
                continue
            payload: dict[str, Any] = message.payload
            corrupt += payload["sha"] != _sha(payload["body"])
            received.append(payload["id"])
            message.ack()
        queue.close()
    Path(folder, f"consumer-{consumer}.json").write_text(
        json.dumps({"received": received, "corrupt": corrupt})
    )


def test_concurrent_producers_and_consumers_deliver_each_message_once(tmp_path: Path) -> None:
    folder = tmp_path / "broker"
    folder.mkdir()
    done_flag = str(tmp_path / "producers-done")
    spawn = multiprocessing.get_context("spawn")
    consumers = [
        spawn.Process(target=_consume, args=(str(folder), n, done_flag)) for n in range(CONSUMERS)
    ]
    producers = [spawn.Process(target=_produce, args=(str(folder), n)) for n in range(PRODUCERS)]
    for process in consumers + producers:
        process.start()
    for process in producers:
        process.join(timeout=300)
        assert process.exitcode == 0, "a producer failed"
    Path(done_flag).touch()
    for process in consumers:
        process.join(timeout=300)
        assert process.exitcode == 0, "a consumer died (the stock transport's JSONDecodeError)"

    received: list[str] = []
    corrupt = 0
    for n in range(CONSUMERS):
        report = json.loads((folder / f"consumer-{n}.json").read_text())
        received += report["received"]
        corrupt += report["corrupt"]
    sent = {f"{p}:{s}" for p in range(PRODUCERS) for s in range(PER_PRODUCER)}
    assert corrupt == 0
    assert len(received) == len(sent), "a message was lost or delivered twice"
    assert set(received) == sent
    # Work was shared (several consumers took messages), nothing was set aside, nothing is left.
    assert sum(1 for n in range(CONSUMERS) if (folder / f"consumer-{n}.json").exists()) == 4
    assert not (folder / "rejected").exists()
    assert not [name for name in os.listdir(folder) if name.endswith(".msg")]
    assert not os.listdir(folder / "claimed")


def test_an_undecodable_message_is_set_aside_not_fatal(tmp_path: Path) -> None:
    folder = tmp_path / "broker"
    folder.mkdir()
    with _connection(folder) as conn:
        queue = conn.SimpleQueue("stress")
        queue.put({"id": "before"})
        time.sleep(0.01)  # names sort by milliseconds: keep the order certain
        (folder / f"{round(time.monotonic() * 1000)}_broken.stress.msg").write_bytes(b'{"half')
        time.sleep(0.01)
        queue.put({"id": "after"})
        got = []
        for _ in range(2):
            message = queue.get(block=True, timeout=2)
            got.append(message.payload["id"])
            message.ack()
        with pytest.raises(Empty):
            queue.get(block=True, timeout=0.3)
        queue.close()
    assert got == ["before", "after"]
    assert [p.name.split("_", 1)[1] for p in (folder / "rejected").iterdir()] == [
        "broken.stress.msg"
    ]
