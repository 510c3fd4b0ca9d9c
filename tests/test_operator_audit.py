"""Operator actions on the watchers' pages land in the admin's history, with who and what
(the loan trail records the loan's own; these act on events, transactions and cursors)."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model

from chainwatch.models import DeliveryStatus, EvmEvent

pytestmark = pytest.mark.django_db


def test_retrying_a_parked_event_is_recorded_with_the_operator(client):
    operator = get_user_model().objects.create_superuser("alice", "a@example.com", "pw-123456789")
    client.force_login(operator)
    parked = EvmEvent.objects.create(
        chain_id=31337,
        contract_address="0x5FbDB2315678afecb367f032d93F642f64180aa3",
        contract_name="BtcCollateralLoan",
        event_name="LoanOffered",
        block_number=10,
        block_hash="0x" + "1" * 64,
        transaction_hash="0x" + "2" * 64,
        log_index=0,
        args={"loanId": 1},
        delivery_key="loan:1",
        status=DeliveryStatus.FAILED,
        attempts=8,
        last_error="boom",
    )
    response = client.post(
        "/admin/chainwatch/evmevent/", {"action": "retry", "_selected_action": [parked.pk]}
    )
    assert response.status_code == 302
    parked.refresh_from_db()
    assert parked.status == DeliveryStatus.PENDING
    (entry,) = LogEntry.objects.filter(object_id=str(parked.pk))
    assert entry.user == operator
    assert "operator: retried" in entry.get_change_message()
