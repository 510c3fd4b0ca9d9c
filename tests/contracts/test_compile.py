"""The committed artifacts are what the pinned solc-js makes of the committed sources."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import call_command

from chainwatch.evm.artifacts import ARTIFACTS_DIR, CONTRACT_NAMES


@pytest.mark.slow
def test_committed_artifacts_are_not_stale(tmp_path: Path) -> None:
    call_command("compile_contracts", output_dir=tmp_path)
    for name in CONTRACT_NAMES:
        fresh = (tmp_path / f"{name}.json").read_text()
        committed = (ARTIFACTS_DIR / f"{name}.json").read_text()
        assert fresh == committed, (
            f"{name}.json is stale: run `python manage.py compile_contracts` and commit it"
        )
