"""The compiled contracts (ABI and bytecode) committed under chainwatch/contracts/artifacts."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts"
ARTIFACTS_DIR = CONTRACTS_DIR / "artifacts"

LOAN_CONTRACT = "BtcCollateralLoan"
ETHERSWAP_CONTRACT = "EtherSwap"
# The earlier prototype's loan contract semantics (flaws included), for tests only: same ABI.
SEED_LOAN_CONTRACT = "SeedBtcCollateralLoan"
CONTRACT_NAMES = (LOAN_CONTRACT, ETHERSWAP_CONTRACT, SEED_LOAN_CONTRACT)


class ArtifactError(RuntimeError):
    """An artifact is missing or malformed."""


@cache
def _load(name: str) -> dict[str, Any]:
    if name not in CONTRACT_NAMES:
        raise ArtifactError(f"unknown contract {name!r}; expected one of {CONTRACT_NAMES}")
    path = ARTIFACTS_DIR / f"{name}.json"
    try:
        artifact: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} is missing: run `python manage.py compile_contracts`") from exc
    if not isinstance(artifact.get("abi"), list) or not str(
        artifact.get("bytecode", "")
    ).startswith("0x"):
        raise ArtifactError(f"{path} has no abi or bytecode")
    return artifact


def load_artifact(name: str) -> dict[str, Any]:
    """The artifact of `name` ("abi", "bytecode", ...); a fresh copy the caller may change."""
    artifact: dict[str, Any] = json.loads(json.dumps(_load(name)))
    return artifact


def load_abi(name: str) -> list[dict[str, Any]]:
    abi: list[dict[str, Any]] = load_artifact(name)["abi"]
    return abi
