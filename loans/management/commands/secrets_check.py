"""Check that the configured encryption keys open every stored secret (each loan's P_L).

Run it after a restore (the database and BTCLOAN_ENCRYPTION_KEYS must come back together) and
after changing the keys. Nothing secret is printed: only counts and the loans that fail.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from loans.crypto import SecretDecryptionError, decrypt_secret
from loans.models import Loan


class Command(BaseCommand):
    help = "Decrypt every stored lender preimage with the configured keys; exit 1 if any fails."

    def handle(self, *args: Any, **options: Any) -> None:
        stored = Loan.objects.exclude(preimage_lender_encrypted=None).values_list(
            "pk", "onchain_id", "preimage_lender_encrypted"
        )
        opened, failed = 0, []
        for pk, onchain_id, token in stored.iterator():
            assert token is not None  # excluded above
            try:
                decrypt_secret(token)
            except SecretDecryptionError:
                failed.append(f"{pk} (on chain {onchain_id})")
            else:
                opened += 1
        if failed:
            raise CommandError(
                f"{len(failed)} stored secret(s) do not decrypt with BTCLOAN_ENCRYPTION_KEYS "
                f"(loans {', '.join(failed[:20])}); {opened} do. Restore the keys that were in "
                "use with this database."
            )
        self.stdout.write(f"{opened} stored secret(s) decrypt with the configured keys")
