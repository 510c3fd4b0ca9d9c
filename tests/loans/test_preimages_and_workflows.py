"""The lender preimage is made once, stored encrypted and revealed only as what H_L commits to;
workflows record their steps, failures and operator retries."""

from __future__ import annotations

import hashlib
import threading

import pytest
from cryptography.fernet import Fernet
from django.db import connection

from loans.crypto import SecretDecryptionError
from loans.models import AuditEntry, Loan, WorkflowStatus, WorkflowType
from loans.services.preimages import (
    lender_preimage_ensure,
    lender_preimage_reveal,
    lender_preimage_revealed,
)
from loans.services.workflows import (
    WorkflowStateError,
    workflow_advance,
    workflow_complete,
    workflow_fail,
    workflow_retry,
    workflow_start,
)

pytestmark = pytest.mark.django_db


def test_the_lender_preimage_is_fixed_once_and_stored_encrypted(make_loan):
    loan = make_loan()
    digest = lender_preimage_ensure(loan_id=loan.pk)
    assert lender_preimage_ensure(loan_id=loan.pk) == digest  # idempotent
    loan.refresh_from_db()
    assert loan.preimage_hash_lender == digest
    preimage = lender_preimage_reveal(loan_id=loan.pk)
    assert len(preimage) == 32
    assert hashlib.sha256(preimage).hexdigest() == digest
    stored = bytes(loan.preimage_lender_encrypted)
    assert preimage not in stored
    assert preimage.hex().encode() not in stored
    # Reading P_L to sign is not revealing it: that is recorded when the call reaches a node.
    loan.refresh_from_db()
    assert loan.preimage_lender_revealed_at is None
    assert lender_preimage_revealed(loan_id=loan.pk, tx_hash="0xab")
    assert not lender_preimage_revealed(loan_id=loan.pk, tx_hash="0xab")  # once
    actions = list(AuditEntry.objects.filter(loan=loan).values_list("action", flat=True))
    assert actions == ["lender_preimage_generated", "lender_preimage_released"]
    assert preimage.hex() not in str(AuditEntry.objects.filter(loan=loan).values_list("details"))


def test_each_loan_gets_its_own_preimage(make_loan):
    hashes = {lender_preimage_ensure(loan_id=make_loan().pk) for _ in range(5)}
    assert len(hashes) == 5


def test_a_rotated_key_still_decrypts_and_a_foreign_key_does_not(make_loan, settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.BTCLOAN_ENCRYPTION_KEYS = [old]
    loan = make_loan()
    digest = lender_preimage_ensure(loan_id=loan.pk)
    settings.BTCLOAN_ENCRYPTION_KEYS = [new, old]
    assert hashlib.sha256(lender_preimage_reveal(loan_id=loan.pk)).hexdigest() == digest
    settings.BTCLOAN_ENCRYPTION_KEYS = [new]
    with pytest.raises(SecretDecryptionError):
        lender_preimage_reveal(loan_id=loan.pk)


@pytest.mark.django_db(transaction=True)
def test_concurrent_callers_agree_on_one_preimage(make_loan):
    loan = make_loan()
    barrier = threading.Barrier(4)
    seen: list[str] = []

    def ensure() -> None:
        try:
            barrier.wait()
            seen.append(lender_preimage_ensure(loan_id=loan.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=ensure) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 1
    assert Loan.objects.get(pk=loan.pk).preimage_hash_lender == seen[0]
    assert AuditEntry.objects.filter(loan=loan, action="lender_preimage_generated").count() == 1


def test_a_workflow_records_steps_failure_and_an_operator_retry(make_loan):
    loan = make_loan()
    workflow = workflow_start(loan_id=loan.pk, type=WorkflowType.ESCROW_SETUP, step="watch_escrow")
    assert (
        workflow_start(loan_id=loan.pk, type=WorkflowType.ESCROW_SETUP, step="x").pk == workflow.pk
    )
    assert workflow_advance(
        workflow_id=workflow.pk, completed_step="watch_escrow", next_step="associate_hash"
    )
    assert not workflow_advance(
        workflow_id=workflow.pk, completed_step="watch_escrow", next_step="associate_hash"
    )
    assert workflow_fail(workflow_id=workflow.pk, step="associate_hash", error="node down")
    workflow.refresh_from_db()
    assert workflow.status == WorkflowStatus.FAILED
    assert workflow.error_details["error"] == "node down"
    with pytest.raises(WorkflowStateError):
        workflow_advance(workflow_id=workflow.pk, completed_step="associate_hash")
    assert workflow_retry(workflow_id=workflow.pk, operator="alice")
    assert not workflow_retry(workflow_id=workflow.pk, operator="alice")  # no longer failed
    assert workflow_advance(workflow_id=workflow.pk, completed_step="associate_hash")
    assert workflow_complete(workflow_id=workflow.pk, completed_step="offer_sent")
    workflow.refresh_from_db()
    assert workflow.status == WorkflowStatus.COMPLETED
    assert workflow.retry_count == 1
    assert workflow.steps_completed == ["watch_escrow", "associate_hash", "offer_sent"]
    retry = AuditEntry.objects.get(loan=loan, action="workflow_retried")
    assert retry.cause_ref == "alice"
