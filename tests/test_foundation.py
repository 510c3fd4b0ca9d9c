"""The foundation: settings, stores, the Celery round-trip and the EVM node all answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection

BASE_DIR = Path(__file__).resolve().parent.parent
PROBE = (
    "import json, django; django.setup(); from django.conf import settings; "
    "from btcloan.celery import app; "
    "print(json.dumps({'engine': settings.DATABASES['default']['ENGINE'], "
    "'name': str(settings.DATABASES['default']['NAME']), 'broker': app.conf.broker_url, "
    "'cache': settings.CACHES['default']['BACKEND'], 'serializer': app.conf.task_serializer}))"
)
SERVICE_VARS = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env["DJANGO_SETTINGS_MODULE"] = "btcloan.settings"
    env["BTCLOAN_VAR_DIR"] = str(tmp_path / "var")
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_settings_without_environment_use_embedded_defaults(tmp_path: Path) -> None:
    result = _run([sys.executable, "-c", PROBE], _clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["engine"] == "django.db.backends.sqlite3"
    assert loaded["name"] == str(tmp_path / "var" / "btcloan.sqlite3")
    assert loaded["broker"].startswith("filesystem://")
    assert loaded["serializer"] == "json"


def test_the_loan_api_answers_on_the_embedded_sqlite(tmp_path: Path) -> None:
    """`make demo` runs on SQLite: the detail's one-statement story is PostgreSQL's, so on
    SQLite the same story is read source by source, and list and detail answer."""
    probe = [sys.executable, "-m", "tests.support.embedded_api_probe"]
    result = _run(probe, _clean_env(tmp_path, LOG_LEVEL="WARNING"))
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    status, detail = answers["detail"]
    assert status == 200, detail
    assert [entry["what"] for entry in detail["timeline"]] == ["loan_requested"]
    assert detail["heads"]["evm"] >= 50  # the cursor plus the confirmations
    assert [w["type"] for w in detail["workflows"]] == ["repayment"]
    status, listing = answers["list"]
    assert (status, listing["count"]) == (200, 1)


def test_settings_with_environment_use_postgres_and_redis(tmp_path: Path) -> None:
    env = _clean_env(
        tmp_path,
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/btcloan_settings_probe",
        REDIS_URL="redis://127.0.0.1:6379/3",
    )
    result = _run([sys.executable, "-c", PROBE], env)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["engine"] == "django.db.backends.postgresql"
    assert loaded["name"] == "btcloan_settings_probe"
    assert loaded["broker"] == "redis://127.0.0.1:6379/3"
    assert loaded["cache"] == "django.core.cache.backends.redis.RedisCache"


def test_a_process_keeps_its_postgres_connection_and_checks_it_before_reuse() -> None:
    from btcloan.config import parse_database_url

    url = "postgres://postgres@127.0.0.1:5432/btcloan"
    kept = parse_database_url("DATABASE_URL", url, conn_max_age=300)
    assert (kept["CONN_MAX_AGE"], kept["CONN_HEALTH_CHECKS"]) == (300, True)
    assert parse_database_url("DATABASE_URL", url)["CONN_MAX_AGE"] == 0
    assert settings.DATABASES["default"]["CONN_MAX_AGE"] == settings.DATABASE_CONN_MAX_AGE > 0


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DATABASE_URL", "mysql://root@localhost/btcloan", "DATABASE_URL must start with one of"),
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:notaport/x", "DATABASE_URL is malformed"),
        ("EVM_RPC_URL", "127.0.0.1:8545", "EVM_RPC_URL must start with one of"),
        ("BITCOIN_NETWORK", "moonnet", "BITCOIN_NETWORK must be one of"),
    ],
)
def test_malformed_configuration_fails_fast_with_one_line(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    result = _run([sys.executable, "manage.py", "check"], _clean_env(tmp_path, **{variable: value}))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("btcloan: configuration error: ")
    assert message in lines[0]


def test_malformed_url_never_echoes_the_password(tmp_path: Path) -> None:
    env = _clean_env(tmp_path, DATABASE_URL="postgres://u:hunter2secret@db:bad/x")
    result = _run([sys.executable, "manage.py", "check"], env)
    assert result.returncode == 2
    assert "hunter2secret" not in result.stderr + result.stdout


def test_unreachable_database_fails_fast_with_one_line(tmp_path: Path) -> None:
    from btcloan.dev.localnodes import free_port

    closed_port = free_port()  # nothing listens there
    env = _clean_env(tmp_path, DATABASE_URL=f"postgres://postgres@127.0.0.1:{closed_port}/btcloan")
    result = _run([sys.executable, "manage.py", "check", "--database", "default"], env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("btcloan: database unreachable: ")
    assert str(closed_port) in lines[0]


@pytest.mark.django_db
def test_a_model_round_trips_through_postgres() -> None:
    assert connection.vendor == "postgresql"
    user_model = get_user_model()
    created = user_model.objects.create_user(username="operator-1", email="op@example.com")
    fetched = user_model.objects.get(pk=created.pk)
    assert fetched.username == "operator-1"
    assert fetched.email == "op@example.com"


def test_redis_answers(redis_client) -> None:
    key = f"probe:{uuid.uuid4().hex}"
    redis_client.set(key, "42", ex=60)
    assert redis_client.get(key) == b"42"


@pytest.mark.celery_worker
def test_a_task_round_trips_through_redis_with_a_real_worker(celery_worker_process) -> None:
    from btcloan.tasks import ping

    assert settings.CELERY_BROKER_URL.startswith("redis://")
    token = uuid.uuid4().hex
    result = ping.delay(token)
    assert result.get(timeout=30) == {"pong": token}
    assert result.status == "SUCCESS"


def _worker_backends() -> set[int]:
    """The PostgreSQL backends serving the test database, other than this test's own."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return {int(pid) for (pid,) in cursor.fetchall()}


@pytest.mark.celery_worker
def test_a_worker_keeps_its_database_connection_across_tasks(celery_worker_process) -> None:
    """Celery's Django fixup closed it before and after every task (a new backend and
    handshake each, whatever CONN_MAX_AGE said): the same backend now serves task after task."""
    from btcloan.api.tasks import auth_records_purge_task

    auth_records_purge_task.delay().get(timeout=30)  # a task that reads the database
    first = _worker_backends()
    for _ in range(3):
        auth_records_purge_task.delay().get(timeout=30)
    assert first
    assert _worker_backends() == first


@pytest.mark.django_db(transaction=True)
def test_after_a_task_a_connection_is_kept_until_it_outlives_its_max_age() -> None:
    from celery import signals

    from btcloan.tasks import ping

    def task_ran() -> None:
        signals.task_postrun.send(sender=ping, task_id="t", task=ping, args=(), kwargs={})

    connection.ensure_connection()
    kept = connection.connection
    task_ran()
    assert connection.connection is kept
    connection.close_at = time.monotonic() - 1  # older than DATABASE_CONN_MAX_AGE
    task_ran()
    assert connection.connection is None


@pytest.mark.evm
def test_anvil_answers_eth_chain_id(w3) -> None:
    assert w3.eth.chain_id == settings.EVM_CHAIN_ID
    assert w3.eth.block_number >= 0


@pytest.mark.evm
def test_the_dev_keys_are_anvils_own_funded_accounts(w3) -> None:
    from eth_account import Account

    from btcloan.dev.localnodes import ANVIL_DEFAULT_KEYS

    addresses = [Account.from_key(key).address for key in ANVIL_DEFAULT_KEYS]
    assert addresses == w3.eth.accounts[: len(addresses)]
    assert all(w3.eth.get_balance(address) > 0 for address in addresses)
