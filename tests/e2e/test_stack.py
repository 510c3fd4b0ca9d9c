"""btcloan/dev/stack.py's process handling, and the demo's guard of a named PostgreSQL database."""

from __future__ import annotations

import secrets
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from django.conf import settings

from btcloan.dev.demo import prepare_postgres
from btcloan.dev.localnodes import ManagedProcess
from btcloan.dev.stack import Stack, StackError, Supervisor, exit_report


def sleeper(stack: Stack, name: str) -> None:
    script = "import time; print('up', flush=True); time.sleep(60)"
    stack.spawn(name, [sys.executable, "-c", script])


def test_a_killed_process_restarts_with_its_argv_and_stop_ends_everything(tmp_path: Path):
    stack = Stack(var_dir=tmp_path, env={}, log=lambda _: None)
    try:
        sleeper(stack, "first")
        sleeper(stack, "second")
        first = stack.process("first")
        stack.wait_until("the first process's output", lambda: "up" in stack.output("first"))
        stack.kill("first", signal.SIGKILL)
        assert [p.name for p in stack.dead()] == ["first"]
        again = stack.restart("first")
        assert again.alive()
        assert again.pid != first.pid
        assert stack.dead() == []
        stack.wait_until("the restarted process's output", lambda: "up" in stack.output("first"))
        # Its output is its own: the killed predecessor's line is not counted.
        assert stack.output("first").count("up") == 1
        assert again.log_path is not None
        assert again.log_path.read_text().count("up") == 2
    finally:
        stack.stop()
    assert stack.processes == []
    assert not again.alive()


def test_a_wait_names_the_process_that_died(tmp_path: Path):
    stack = Stack(var_dir=tmp_path, env={}, log=lambda _: None)
    stack.spawn("crasher", [sys.executable, "-c", "raise SystemExit('boom')"])
    try:
        with pytest.raises(StackError, match="crasher exited") as raised:
            stack.wait_until("something", lambda: False, timeout=30)
        assert "boom" in str(raised.value)
    finally:
        stack.stop()


def test_the_supervisor_reports_an_unexpected_exit_once_with_its_last_lines(tmp_path: Path):
    stack = Stack(var_dir=tmp_path, env={}, log=lambda _: None)
    reported: list[ManagedProcess] = []
    supervisor = Supervisor(stack, reported.append, interval=0.05)
    script = "import sys; print('line one'); print('line two', flush=True); sys.exit(3)"
    try:
        sleeper(stack, "steady")
        sleeper(stack, "stopped_on_purpose")
        stack.spawn("crasher", [sys.executable, "-c", script])
        supervisor.start()
        deadline = time.monotonic() + 30
        while not reported and time.monotonic() < deadline:
            time.sleep(0.05)
        stack.kill("stopped_on_purpose")
        stack.restart("steady")
        supervisor.check()
        # Only the crash, once: the kill and the restart were asked for.
        assert [p.name for p in reported] == ["crasher"]
        report = exit_report(reported[0])
        assert "crasher (pid" in report
        assert "exit code 3" in report
        assert report.endswith("    line one\n    line two")
    finally:
        supervisor.stop()
        stack.stop()
    assert len(reported) == 1


@pytest.fixture
def scratch_database() -> Iterator[str]:
    db = settings.DATABASES["default"]
    name = f"btcloan_demo_test_{secrets.token_hex(4)}"
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{name}"
    yield url
    admin = psycopg2.connect(f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def _tables(url: str) -> int:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema='public'")
        (count,) = cur.fetchone()
    conn.close()
    return int(count)


def _add_table(url: str) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE kept (id int)")
    conn.close()


def test_the_demo_creates_resets_its_own_database_and_refuses_another(scratch_database: str):
    prepare_postgres(scratch_database)  # missing: created, and marked as the demo's
    _add_table(scratch_database)
    prepare_postgres(scratch_database)  # the demo's own: reset to empty
    assert _tables(scratch_database) == 0

    # Somebody else's database with data in it is never touched.
    name = scratch_database.rsplit("/", 1)[1]
    with psycopg2.connect(scratch_database) as conn, conn.cursor() as cur:
        cur.execute(f'COMMENT ON DATABASE "{name}" IS NULL')
    conn.close()
    _add_table(scratch_database)
    with pytest.raises(StackError, match="holds tables the demo did not make"):
        prepare_postgres(scratch_database)
    assert _tables(scratch_database) == 1
