"""`manage.py chainwatch_sync [--once]`: the poller in the foreground (beat runs it as a task)."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from chainwatch.services import chain_sync


class Command(BaseCommand):
    help = "Index confirmed EVM events and hand them on; --once for a single pass."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="one pass, then exit")
        parser.add_argument(
            "--no-deliver", action="store_true", help="index only; leave events pending"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        while True:
            result = chain_sync(deliver=not options["no_deliver"])
            index, delivery = result.index, result.delivery
            line = f"chainwatch: {result.status}"
            if index is not None:
                line += (
                    f"; indexed to block {index.indexed_to} (safe head {index.safe_head}), "
                    f"{index.inserted} new events, {len(index.reorgs)} reorgs"
                )
            if delivery is not None:
                line += (
                    f"; delivered {delivery.delivered}, retrying {delivery.retrying}, "
                    f"parked {delivery.parked}"
                )
                if not delivery.consumer:
                    line += " (no consumer registered)"
            self.stdout.write(line)
            if options["once"]:
                return
            time.sleep(settings.EVM_POLL_INTERVAL)
