"""docker-compose.yml: accepted by Compose itself, and it wires every part of the desk.

No Docker engine runs here, so the stack is never started in CI; `config` validates it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
EXPECTED_SERVICES = {"postgres", "redis", "bitcoind", "anvil", "web", "worker", "beat", "flower"}


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


# The secrets compose requires (it has no defaults for them).
REQUIRED_SECRETS = {
    "DJANGO_SECRET_KEY": "k" * 20 + "0123456789abcdefghijklmnopqrstuvwxyz",
    "BTCLOAN_ENCRYPTION_KEYS": "a" * 43 + "=",
    "FLOWER_BASIC_AUTH": "ops:a long flower password",
}


def _compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    command = _compose_command()
    if command is None:
        pytest.skip(
            "neither `docker compose` nor `docker-compose` is installed (.ci/run installs it)"
        )
    clean = {k: v for k, v in os.environ.items() if k not in REQUIRED_SECRETS}
    return subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        env={**clean, **env},
    )


def test_compose_accepts_the_file() -> None:
    result = _compose_config(**REQUIRED_SECRETS)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", sorted(REQUIRED_SECRETS))
def test_compose_has_no_default_for_a_secret(missing: str) -> None:
    result = _compose_config(**{k: v for k, v in REQUIRED_SECRETS.items() if k != missing})
    assert result.returncode != 0
    assert missing in result.stderr


def test_web_runs_under_gunicorn_and_flower_behind_basic_auth() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert "gunicorn -c deploy/gunicorn.conf.py" in " ".join(services["web"]["command"])
    assert "runserver" not in COMPOSE_FILE.read_text()
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith(
        "${FLOWER_BASIC_AUTH:?"
    )


def test_every_part_is_there_with_a_health_check() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert set(services) == EXPECTED_SERVICES
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"


def test_service_processes_share_one_environment() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for name in ("web", "worker", "beat", "flower"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["CELERY_BROKER_URL"].startswith("redis://")
        assert env["EVM_RPC_URL"] == "http://anvil:8545"
        assert "@bitcoind:" in env["BITCOIN_RPC_URL"]
