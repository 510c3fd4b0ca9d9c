"""The lender's EVM actions, sent through chainwatch's outbox, under the approval policy.

Each action is one outbox row per loan (the outbox is unique on loan and action), so asking
twice sends once. An action the policy holds back waits as a LenderApproval for an operator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from chainwatch.outbox.services import evm_transaction_request, evm_transaction_send
from loans.models import ApprovalStatus, AuditAction, AuditCause, LenderApproval, Loan
from loans.next_steps import NextStep, next_step_enqueue
from loans.policy import LenderAction, needs_approval
from loans.services.lifecycle import loan_record

logger = logging.getLogger(__name__)

# acceptLoanRepayment's argument is P_L: the outbox resolves this marker when it signs, so
# the secret is never stored in a row or shown in the admin before it is revealed on chain.
LENDER_PREIMAGE_MARKER = "$lender_preimage"


@dataclass(frozen=True)
class EvmCall:
    function: str
    args: list[Any]
    value_wei: int = 0


def _hex32(value: str) -> str:
    return "0x" + value


def call_for(loan: Loan, action: LenderAction) -> EvmCall:
    onchain_id = int(loan.onchain_id)
    if action == LenderAction.ASSOCIATE_HASH:
        return EvmCall(
            "associateLenderPreimageHash", [onchain_id, _hex32(loan.preimage_hash_lender)]
        )
    if action == LenderAction.OFFER:
        return EvmCall(
            "extendLoanOffer",
            [
                onchain_id,
                _hex32(loan.preimage_hash_borrower),
                _hex32(loan.preimage_hash_lender),
            ],
            int(loan.amount_wei) + bond_wei(loan.amount_wei),
        )
    if action == LenderAction.ACCEPT_REPAYMENT:
        return EvmCall("acceptLoanRepayment", [onchain_id, LENDER_PREIMAGE_MARKER])
    if action == LenderAction.WITHDRAW_OFFER:
        return EvmCall("withdrawLoanOffer", [onchain_id])
    if action == LenderAction.MARK_DEFAULT:
        return EvmCall("markAsDefaulted", [onchain_id])
    if action == LenderAction.DELETE_LOAN:
        return EvmCall("deleteCompletedLoan", [onchain_id])
    raise ValueError(f"{action} is not an EVM action")


def lender_action_request(*, loan_id: int, action: LenderAction, cause: AuditCause) -> str:
    """Send the action, or hold it for approval. Returns "sent", "held" or "already"."""
    return lender_action_queue(loan_id=loan_id, action=action, cause=cause)[0]


# The send task of a row its caller sends itself (`lender_action_send_now`) is due this much
# later: a fallback that finds the row sent, not a second sender racing the first for the
# same work (its node reads and guard) while the workers are busy. A row whose send was lost
# is sent by it, or by the outbox pump after EVM_OUTBOX_REDRIVE_AFTER_SECONDS.
SEND_FALLBACK_AFTER_SECONDS = 5.0


def lender_action_queue(
    *, loan_id: int, action: LenderAction, cause: AuditCause, caller_sends: bool = False
) -> tuple[str, int | None]:
    """`lender_action_request`, and the outbox row it queued ("sent": its send task goes out
    when the caller's transaction commits, SEND_FALLBACK_AFTER_SECONDS later when the caller
    sends the row itself), else None."""
    loan = Loan.objects.get(pk=loan_id)
    # No savepoint inside the caller's transaction: an error here fails the whole of it.
    with transaction.atomic(savepoint=False):
        if needs_approval(action):
            approval, created = LenderApproval.objects.get_or_create(loan=loan, action=action)
            if approval.status != ApprovalStatus.APPROVED:
                if created:
                    loan_record(
                        loan_id=loan_id,
                        action=AuditAction.LENDER_ACTION_HELD,
                        cause=cause,
                        details={"action": action.value},
                    )
                return "held", None
        return _enqueue(loan, action, cause, caller_sends=caller_sends)


def lender_action_send_now(*, tx_id: int) -> None:
    """Send a row `lender_action_queue` just queued in this process, not one task hop later.
    The outbox's send asks the row's guard right before its nonce and signature, as always;
    the send task queued with the row stays the fallback (a second send of a row is a no-op:
    its status and nonce are compare-and-set). Never inside a transaction (no RPC there):
    then the task sends it. A failure here is logged and left to that task."""
    if transaction.get_connection().in_atomic_block:
        return
    try:
        evm_transaction_send(tx_id=tx_id)
    except Exception:
        logger.warning("lender call %s: sent later by its task", tx_id, exc_info=True)


def _enqueue(
    loan: Loan, action: LenderAction, cause: AuditCause, *, caller_sends: bool = False
) -> tuple[str, int | None]:
    call = call_for(loan, action)
    tx, created = evm_transaction_request(
        loan_ref=str(loan.pk),
        action=action.value,
        function=call.function,
        args=call.args,
        value_wei=call.value_wei,
    )
    if not created:
        return "already", None
    loan_record(
        loan_id=loan.pk,
        action=AuditAction.LENDER_ACTION_SENT,
        cause=cause,
        cause_ref=f"evm-tx:{tx.pk}",
        details={"action": action.value, "function": call.function},
    )
    next_step_enqueue(
        step=NextStep.SEND_LENDER_CALL,
        target_id=tx.pk,
        countdown=SEND_FALLBACK_AFTER_SECONDS if caller_sends else 0,
    )
    return "sent", tx.pk


def lender_action_sent(*, loan_id: int, action: LenderAction) -> bool:
    """The action went to the outbox (sent, or on its way): the chain decides from now on."""
    from chainwatch.models import EvmTransaction

    return EvmTransaction.objects.filter(loan_ref=str(loan_id), action=action.value).exists()


def lender_action_approve(*, loan_id: int, action: LenderAction, operator: str) -> str:
    """An operator approves a held action; it is sent at once and the approval audited."""
    with transaction.atomic():
        approved = LenderApproval.objects.filter(
            loan_id=loan_id, action=action, status=ApprovalStatus.PENDING
        ).update(status=ApprovalStatus.APPROVED, decided_by=operator, decided_at=timezone.now())
        if not approved:
            try:
                with transaction.atomic():
                    LenderApproval.objects.create(
                        loan_id=loan_id,
                        action=action,
                        status=ApprovalStatus.APPROVED,
                        decided_by=operator,
                        decided_at=timezone.now(),
                    )
            except IntegrityError:
                return "already"
        loan_record(
            loan_id=loan_id,
            action=AuditAction.LENDER_ACTION_APPROVED,
            cause=AuditCause.OPERATOR,
            cause_ref=operator,
            details={"action": action.value},
        )
        loan = Loan.objects.get(pk=loan_id)
        return _enqueue(loan, action, AuditCause.OPERATOR)[0]


def bond_wei(amount_wei: Decimal | int) -> int:
    """The lender's bond: LENDER_BOND_PERCENTAGE (10) of the amount, in wei."""
    return int(amount_wei) * 10 // 100
