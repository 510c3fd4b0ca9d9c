"""/metrics shows the loan engine's figures: failed workflows by type and the smallest
deadline margin among open loans, per chain."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from btcloan.api.services import api_key_create
from chainwatch.models import ChainCursor
from loans.models import LoanStatus, WorkflowType
from loans.services.workflows import workflow_fail, workflow_start

pytestmark = pytest.mark.django_db


def scrape() -> str:
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Api-Key {api_key_create(name='prom', role='metrics')[1]}"
    )
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.content.decode()


def test_failed_workflows_and_the_tightest_deadline_are_exported(make_loan):
    tight = make_loan(status=LoanStatus.OFFERED, offer_block=100, timelock_borrower=20)
    make_loan(status=LoanStatus.OFFERED, offer_block=100, timelock_borrower=500)
    ChainCursor.objects.create(
        chain_id=tight.chain_id, block_number=100, block_hash="0x" + "2" * 64
    )
    workflow = workflow_start(loan_id=tight.pk, type=WorkflowType.ESCROW_SETUP, step="offer")
    workflow_fail(workflow_id=workflow.pk, step="offer", error="node down")
    text = scrape()
    assert 'btcloan_workflow_failures{workflow_type="escrow_setup"} 1.0' in text
    assert 'btcloan_workflow_failures{workflow_type="default"} 0.0' in text
    # Head = cursor 100 + 12 confirmations; the tight offer ends at 120: 120 - 113 = 7.
    assert 'btcloan_deadline_margin_blocks{chain="evm"} 7.0' in text
    # No open loan has a Bitcoin deadline yet: no sample rather than a misleading one.
    assert not any(
        line.startswith('btcloan_deadline_margin_blocks{chain="bitcoin"}')
        for line in text.splitlines()
    )
