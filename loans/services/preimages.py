"""The lender's per-loan preimage P_L: made with a CSPRNG, kept encrypted, revealed once."""

from __future__ import annotations

import hashlib
import secrets

from django.db import transaction
from django.utils import timezone

from loans.crypto import decrypt_secret, encrypt_secret
from loans.models import AuditAction, AuditCause, Loan
from loans.services.lifecycle import loan_record


class PreimageMismatchError(Exception):
    """The stored P_L does not hash to the loan's H_L: never reveal it."""


def lender_preimage_ensure(*, loan_id: int) -> str:
    """H_L of the loan, generating and storing P_L on first call. Idempotent.

    The compare-and-set on an empty hash means two concurrent callers cannot both fix a
    preimage: the loser reads the winner's hash.
    """
    preimage = secrets.token_bytes(32)
    digest = hashlib.sha256(preimage).hexdigest()
    # No savepoint inside the caller's transaction: an error here fails the whole of it.
    with transaction.atomic(savepoint=False):
        fixed = Loan.objects.filter(pk=loan_id, preimage_hash_lender="").update(
            preimage_hash_lender=digest,
            preimage_lender_encrypted=encrypt_secret(preimage),
            updated_at=timezone.now(),
        )
        if fixed:
            loan_record(
                loan_id=loan_id,
                action=AuditAction.LENDER_PREIMAGE_GENERATED,
                cause=AuditCause.BACKEND,
                details={"preimage_hash_lender": digest},
            )
            return digest
    return Loan.objects.values_list("preimage_hash_lender", flat=True).get(pk=loan_id)


def lender_preimage_reveal(*, loan_id: int) -> bytes:
    """P_L, in memory, for the outbox to sign `acceptLoanRepayment` with (and nothing else):
    checked against H_L. Not yet public: the reveal is recorded when the signed call reaches
    the node (`lender_preimage_revealed`)."""
    loan = Loan.objects.only("preimage_hash_lender", "preimage_lender_encrypted").get(pk=loan_id)
    if not loan.preimage_lender_encrypted:
        raise PreimageMismatchError(f"loan {loan_id} has no lender preimage")
    preimage = decrypt_secret(loan.preimage_lender_encrypted)
    if hashlib.sha256(preimage).hexdigest() != loan.preimage_hash_lender:
        raise PreimageMismatchError(f"loan {loan_id}: stored P_L does not match H_L")
    return preimage


def lender_preimage_revealed(*, loan_id: int, tx_hash: str = "") -> bool:
    """Record that P_L went out (the node accepted the signed acceptLoanRepayment), once."""
    with transaction.atomic():
        first = Loan.objects.filter(pk=loan_id, preimage_lender_revealed_at=None).update(
            preimage_lender_revealed_at=timezone.now()
        )
        if first:
            loan_record(
                loan_id=loan_id,
                action=AuditAction.LENDER_PREIMAGE_RELEASED,
                cause=AuditCause.BACKEND,
                cause_ref=f"evm-tx:{tx_hash}" if tx_hash else "",
            )
    return bool(first)
