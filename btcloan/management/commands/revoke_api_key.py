from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from btcloan.api.services import api_key_revoke


class Command(BaseCommand):
    help = "Revoke an API key by name; requests with it fail from now on."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")

    def handle(self, *args: Any, name: str, **options: Any) -> None:
        if not api_key_revoke(name=name):
            raise CommandError(f"no active API key named {name!r}")
        self.stdout.write(f"API key {name!r} revoked")
