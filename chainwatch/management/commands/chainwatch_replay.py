"""`manage.py chainwatch_replay --from-block N [--to-block M]`: re-index an indexed range.

Idempotent: events already stored are left as they are; only missing ones are inserted (and
handed on by the next poll). A progress bar shows on long ranges.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chainwatch.indexer.sync import IndexSummary
from chainwatch.services import chain_replay


class ProgressBar:
    """One line, redrawn in place on a terminal; a line per 10% otherwise (logs)."""

    def __init__(self, stream: Any, first: int, width: int = 30) -> None:
        self.stream, self.first, self.width = stream, first, width
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.last_decile = -1

    def update(self, position: int, end: int, summary: IndexSummary) -> None:
        total = max(1, end - self.first + 1)
        done = min(total, summary.indexed_to - self.first + 1)
        fraction = done / total
        filled = int(self.width * fraction)
        rate = done / max(1e-6, time.monotonic() - self.started)
        text = (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {fraction:6.1%} "
            f"block {summary.indexed_to}/{end}  {summary.logs} logs  "
            f"{summary.inserted} new  {rate:,.0f} blocks/s"
        )
        if self.tty:
            self.stream.write("\r" + text, ending="")
            self.stream.flush()
        elif int(fraction * 10) > self.last_decile:
            self.last_decile = int(fraction * 10)
            self.stream.write(text)

    def close(self) -> None:
        if self.tty:
            self.stream.write("")


class Command(BaseCommand):
    help = "Re-read EVM logs from --from-block up to the indexed block; inserts what is missing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from-block", type=int, required=True)
        parser.add_argument("--to-block", type=int, default=None)
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        first, last = options["from_block"], options["to_block"]
        if first < 0 or (last is not None and last < first):
            raise CommandError("--from-block must be >= 0 and not above --to-block")
        bar = None if options["no_progress"] else ProgressBar(self.stderr, first)
        try:
            summary = chain_replay(
                from_block=first, to_block=last, on_window=bar.update if bar else None
            )
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            if bar:
                bar.close()
        self.stdout.write(
            f"chainwatch replay: blocks {first}..{summary.indexed_to}, {summary.logs} logs, "
            f"{summary.inserted} inserted, {summary.revived} revived"
        )
