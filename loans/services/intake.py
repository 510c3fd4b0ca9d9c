"""From a LoanRequested event to a loan: read the contract at the request block, derive the
escrow address under each known internal key, and match it against the event's address.

A request whose escrow does not match (or whose terms cannot be honoured) becomes an INVALID
loan with its reason: recorded, never offered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F

from loans.chain import RequestSnapshot, lender_btc_key, read_request_snapshot
from loans.models import AuditAction, AuditCause, IntakeStatus, Loan, LoanRequestIntake, LoanStatus
from loans.next_steps import NextStep, next_step_enqueue
from loans.services.lender import lender_action_send_now
from loans.services.lifecycle import loan_record
from loans.services.origination import loan_escrow_setup
from vaultero import (
    BIP341_NUMS,
    SEED_INTERNAL_KEY,
    VaulteroError,
    csv_blocks_from_evm,
    escrow_output,
    sats_from_wei,
)

logger = logging.getLogger(__name__)

# Internal keys the escrow may use: ours (NUMS) first, then the seed tools' key, which we
# recognise and spend but never propose.
KNOWN_INTERNAL_KEYS = (BIP341_NUMS, SEED_INTERNAL_KEY)


def loan_request_record(
    *,
    chain_id: int,
    contract_address: str,
    onchain_id: int,
    request_block: int,
    event_ref: str,
    borrower_address: str,
    amount_wei: int,
    btc_address: str,
) -> LoanRequestIntake:
    """Record a confirmed LoanRequested (inside the event's transaction; no chain call) and
    have the intake task read the loan once the transaction commits. Idempotent."""
    intake, created = LoanRequestIntake.objects.get_or_create(
        chain_id=chain_id,
        contract_address=contract_address,
        onchain_id=Decimal(onchain_id),
        defaults={
            "request_block": request_block,
            "event_ref": event_ref,
            "borrower_address": borrower_address,
            "amount_wei": Decimal(amount_wei),
            "btc_address": btc_address,
        },
    )
    if created:
        next_step_enqueue(step=NextStep.READ_REQUEST, target_id=intake.pk)
    return intake


@dataclass(frozen=True)
class _Verdict:
    fields: dict[str, Any]
    invalid_reason: str = ""


def _judge(intake: LoanRequestIntake, snapshot: RequestSnapshot, our_key: str) -> _Verdict:
    state, terms = snapshot.state, snapshot.terms
    network = settings.BITCOIN_NETWORK
    ratio = int(settings.EVM_BLOCKS_PER_BITCOIN_BLOCK)
    fields: dict[str, Any] = {
        "chain_id": intake.chain_id,
        "contract_address": intake.contract_address,
        "onchain_id": intake.onchain_id,
        "borrower_address": state.borrower_address,
        "borrower_btc_pubkey": state.borrower_btc_pubkey.lower(),
        "lender_btc_pubkey": snapshot.lender_btc_pubkey.lower(),
        "amount_wei": Decimal(state.amount),
        "bond_wei": Decimal(state.bond_amount) if state.bond_amount else None,
        "loan_sats": sats_from_wei(state.amount),
        "preimage_hash_borrower": state.preimage_hash_borrower.hex(),
        "escrow_address": intake.btc_address,
        "escrow_txid": state.escrow_txid_hex,
        "escrow_vout": state.escrow_vout,
        "loan_duration": terms.duration,
        "timelock_borrower": terms.t_borrower,
        "timelock_btc_escrow": snapshot.t_btc_escrow,
        "timelock_lender": terms.t_lender,
        "timelock_btc_collateral": snapshot.t_btc_collateral,
        "escrow_csv_blocks": 0,
        "collateral_csv_blocks": 0,
        "request_block": intake.request_block,
        "contract_flavour": snapshot.flavour.value,
    }
    if not state.exists:
        return _Verdict(fields, "the contract has no such loan at the request block")
    if fields["lender_btc_pubkey"] != our_key:
        return _Verdict(fields, "the contract's lender Bitcoin key is not this desk's key")
    try:
        fields["escrow_csv_blocks"] = csv_blocks_from_evm(snapshot.t_btc_escrow, ratio)
        fields["collateral_csv_blocks"] = csv_blocks_from_evm(snapshot.t_btc_collateral, ratio)
        for internal_key in KNOWN_INTERNAL_KEYS:
            escrow = escrow_output(
                borrower_key=fields["borrower_btc_pubkey"],
                lender_key=our_key,
                preimage_hash=fields["preimage_hash_borrower"],
                csv_blocks=fields["escrow_csv_blocks"],
                internal_key=internal_key,
            )
            if escrow.address(network) == intake.btc_address:
                fields["escrow_internal_key"] = internal_key
                return _Verdict(fields)
    except VaulteroError as exc:
        return _Verdict(fields, f"the request's terms are not usable: {exc}")
    return _Verdict(
        fields,
        "the event's escrow address matches no escrow derived from the borrower's key, "
        "the lender's key, H_B and t0 under a known internal key",
    )


def loan_request_intake(*, intake_id: int) -> Loan | None:
    """Create the loan of a recorded request. Safe to repeat: the second call returns it."""
    intake = LoanRequestIntake.objects.get(pk=intake_id)
    if intake.status == IntakeStatus.DONE:
        return intake.loan
    try:
        snapshot = read_request_snapshot(
            onchain_id=int(intake.onchain_id), block=intake.request_block
        )
        our_key = lender_btc_key()
    except Exception as exc:
        LoanRequestIntake.objects.filter(pk=intake_id).update(
            status=IntakeStatus.FAILED, attempts=F("attempts") + 1, last_error=str(exc)[:2000]
        )
        raise
    verdict = _judge(intake, snapshot, our_key)
    with transaction.atomic():
        intake = LoanRequestIntake.objects.select_for_update().get(pk=intake_id)
        if intake.status == IntakeStatus.DONE:
            return intake.loan
        status = LoanStatus.INVALID if verdict.invalid_reason else LoanStatus.REQUESTED
        loan = Loan.objects.create(
            **verdict.fields, status=status, invalid_reason=verdict.invalid_reason
        )
        loan_record(
            loan_id=loan.pk,
            action=(
                AuditAction.REQUEST_INVALID
                if verdict.invalid_reason
                else AuditAction.LOAN_REQUESTED
            ),
            cause=AuditCause.EVM_EVENT,
            cause_ref=intake.event_ref,
            details={"reason": verdict.invalid_reason} if verdict.invalid_reason else {},
        )
        intake.status = IntakeStatus.DONE
        intake.loan = loan
        intake.save(update_fields=["status", "loan", "updated_at"])
    if verdict.invalid_reason:
        logger.warning("loan %s refused: %s", loan.onchain_id, verdict.invalid_reason)
    else:
        # The escrow set-up (H_L fixed, associateLenderPreimageHash queued; rows only, no
        # chain call) right after the commit, not as one more task behind the queue: intake
        # is then as quick as the other steps. If this worker dies first, the watchdog sends
        # SET_UP_ESCROW for a requested loan without H_L.
        associate = loan_escrow_setup(loan_id=loan.pk, loan=loan, caller_sends=True)
        if associate is not None:
            # And the hash's send, here rather than one task hop later (its guard is asked
            # right before the signature as always; its send task, queued on commit and due
            # a few seconds later, is the fallback and finds the row sent).
            lender_action_send_now(tx_id=associate)
    return loan
