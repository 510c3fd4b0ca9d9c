"""Create or update an operator (staff superuser) whose password comes from the environment."""

from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Create or update an operator; the password comes from $BTCLOAN_OPERATOR_PASSWORD."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="operator")
        parser.add_argument("--email", default="operator@localhost")

    def handle(self, *args: Any, username: str, email: str, **options: Any) -> None:
        # The environment, not argv, so the password never shows in the process list.
        password = os.environ.get("BTCLOAN_OPERATOR_PASSWORD", "")
        if len(password) < 12:
            raise CommandError("BTCLOAN_OPERATOR_PASSWORD must be set to at least 12 characters")
        user, created = get_user_model().objects.get_or_create(
            username=username, defaults={"email": email}
        )
        user.is_staff = True
        user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(f"operator {username!r} {'created' if created else 'updated'}")
