"""Create an API key for a service client and print it once (only its hash is stored)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError

from btcloan.api.services import api_key_create
from btcloan.models import ApiKeyRole


class Command(BaseCommand):
    help = "Create an API key for a service client; the key is printed once, store it now."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="who uses it, e.g. prometheus")
        parser.add_argument("--role", choices=ApiKeyRole.values, default=ApiKeyRole.METRICS)

    def handle(self, *args: Any, name: str, role: str, **options: Any) -> None:
        try:
            _, key = api_key_create(name=name, role=role)
        except IntegrityError:
            raise CommandError(f"an API key (or user svc-{name}) named {name!r} exists") from None
        self.stderr.write(f"API key {name!r} ({role}) created; it is shown only this once:")
        self.stdout.write(key)
