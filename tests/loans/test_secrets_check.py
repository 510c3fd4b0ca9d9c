"""`manage.py secrets_check`: the restore drill's proof that the keys came back with the data."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command

from loans.services.preimages import lender_preimage_ensure
from tests.loans.conftest import loan_factory

pytestmark = pytest.mark.django_db


def test_it_passes_with_the_keys_in_use_and_fails_without_them(settings: Any) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.BTCLOAN_ENCRYPTION_KEYS = [old]
    for _ in range(3):
        lender_preimage_ensure(loan_id=loan_factory().pk)
    loan_factory()  # no secret yet: not counted

    out = StringIO()
    call_command("secrets_check", stdout=out)
    assert out.getvalue().strip() == "3 stored secret(s) decrypt with the configured keys"

    # Rotation: a new first key, the old one kept, still opens everything.
    settings.BTCLOAN_ENCRYPTION_KEYS = [new, old]
    call_command("secrets_check", stdout=StringIO())

    # A restore that lost the old key: every secret is named, none printed.
    settings.BTCLOAN_ENCRYPTION_KEYS = [new]
    with pytest.raises(CommandError, match=r"3 stored secret\(s\) do not decrypt") as failed:
        call_command("secrets_check", stdout=StringIO())
    assert "0 do" in str(failed.value)
