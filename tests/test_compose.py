"""docker-compose.yml: accepted by Compose itself, and it wires every part of the desk.

No Docker engine runs here, so the stack is never started in CI; `config` validates it.
"""

from __future__ import annotations

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


def test_compose_accepts_the_file() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip(
            "neither `docker compose` nor `docker-compose` is installed (.ci/run installs it)"
        )
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


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
