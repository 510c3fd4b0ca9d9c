"""A reorg notice names its contract: after a redeploy on the same chain, the new contract's
loan 1 and the old contract's loan 1 are two loans, and a reorg re-derives the right one."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest

from chainwatch.models import DeliveryStatus, EvmEvent, ReorgNotice
from loans.handlers import LoanEventConsumer
from loans.models import AuditEntry, Loan, LoanStatus

pytestmark = pytest.mark.django_db

OLD = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
NEW = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
_log = itertools.count(1000)


def processed_event(contract: str, name: str, block: int, status: str) -> EvmEvent:
    index = next(_log)
    return EvmEvent.objects.create(
        chain_id=31337,
        contract_address=contract,
        contract_name="BtcCollateralLoan",
        event_name=name,
        block_number=block,
        block_hash="0x" + "22" * 32,
        transaction_hash=f"0x{index:064x}",
        log_index=index,
        args={"loanId": 1},
        loan_id=Decimal(1),
        delivery_key=f"loan:{contract.lower()}:1",
        status=status,
    )


def test_a_reorg_on_the_redeployed_contract_re_derives_its_loan_not_the_old_ones(make_loan):
    old = make_loan(contract_address=OLD, onchain_id=Decimal(1), status=LoanStatus.OFFERED)
    new = make_loan(contract_address=NEW, onchain_id=Decimal(1), status=LoanStatus.OFFERED)
    processed_event(OLD, "LoanRequested", 100, DeliveryStatus.PROCESSED)
    processed_event(OLD, "LoanOffered", 150, DeliveryStatus.PROCESSED)
    processed_event(NEW, "LoanRequested", 500, DeliveryStatus.PROCESSED)
    processed_event(NEW, "LoanOffered", 520, DeliveryStatus.ORPHANED)  # reorged away
    notice = ReorgNotice.objects.create(
        chain_id=31337,
        contract_address=NEW,
        delivery_key=f"loan:{NEW.lower()}:1",
        loan_id=Decimal(1),
        fork_block_number=510,
        orphaned_events=1,
    )

    LoanEventConsumer().handle_reorg(notice)

    new.refresh_from_db()
    old.refresh_from_db()
    assert new.status == LoanStatus.REQUESTED  # its offer was orphaned
    assert old.status == LoanStatus.OFFERED  # the old contract's loan 1 is untouched
    assert AuditEntry.objects.filter(loan=new, action="rederived").exists()
    assert not AuditEntry.objects.filter(loan=old, action="rederived").exists()
    assert Loan.objects.filter(onchain_id=1).count() == 2
