"""Rebuild chainwatch/contracts/artifacts with solc-js (npm `solc`, pinned)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chainwatch.evm.artifacts import ARTIFACTS_DIR
from chainwatch.evm.compiler import CompilationError, write_artifacts


class Command(BaseCommand):
    help = "Compile BtcCollateralLoan.sol and EtherSwap.sol into JSON artifacts (ABI, bytecode)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--output-dir", type=Path, default=ARTIFACTS_DIR)

    def handle(self, *args: Any, output_dir: Path, **options: Any) -> None:
        try:
            written = write_artifacts(output_dir)
        except CompilationError as exc:
            raise CommandError(str(exc)) from None
        for path in written:
            self.stdout.write(f"wrote {path}")
