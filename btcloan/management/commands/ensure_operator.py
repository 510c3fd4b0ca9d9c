"""Create or update an operator whose password comes from the environment: a staff user with
one role (viewer, operator, admin: btcloan.roles), or a superuser with --role superuser (the
default, for a local desk)."""

from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from btcloan.roles import ROLES, user_role_set


class Command(BaseCommand):
    help = "Create or update an operator; the password comes from $BTCLOAN_OPERATOR_PASSWORD."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="operator")
        parser.add_argument("--email", default="operator@localhost")
        parser.add_argument("--role", choices=[*ROLES, "superuser"], default="superuser")

    def handle(self, *args: Any, username: str, email: str, role: str, **options: Any) -> None:
        # The environment, not argv, so the password never shows in the process list.
        password = os.environ.get("BTCLOAN_OPERATOR_PASSWORD", "")
        if len(password) < 12:
            raise CommandError("BTCLOAN_OPERATOR_PASSWORD must be set to at least 12 characters")
        user, created = get_user_model().objects.get_or_create(
            username=username, defaults={"email": email}
        )
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise CommandError("BTCLOAN_OPERATOR_PASSWORD: " + " ".join(exc.messages)) from None
        user.is_staff = True
        user.is_superuser = role == "superuser"
        user.set_password(password)
        user.save()
        if role != "superuser":
            user_role_set(user=user, role=role)
        self.stdout.write(f"operator {username!r} {'created' if created else 'updated'}")
