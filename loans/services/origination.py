"""From a valid request to an offer: watch the escrow, fix H_L, build TX_1, and offer only
once every condition of PROTOCOL.md's first duty holds."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from bitcoin.models import WatchPurpose
from bitcoin.selectors import fee_estimate_blocks_offers
from bitcoin.services.watch import watch_outpoint, watch_script
from loans.chain import bitcoin_head, escrow_utxo
from loans.models import (
    AuditAction,
    AuditCause,
    AuditEntry,
    BorrowerSignature,
    Loan,
    LoanStatus,
    WorkflowType,
)
from loans.next_steps import NextStep, next_step_enqueue
from loans.outputs import collateral_lock_template, escrow_of, loan_ref
from loans.policy import LenderAction, OfferFacts, offer_refusals
from loans.services.lender import lender_action_queue, lender_action_request, lender_action_sent
from loans.services.lifecycle import loan_record, loan_transition
from loans.services.preimages import lender_preimage_ensure
from loans.services.workflows import workflow_advance, workflow_fail, workflow_start
from vaultero import required_deposit


def loan_escrow_setup(
    *, loan_id: int, loan: Loan | None = None, caller_sends: bool = False
) -> int | None:
    """Watch the escrow (its script for the deposit, its outpoint for a spend), fix H_L and
    publish it on chain. No chain call here: all of it is rows and outbox entries. `loan`:
    the row as its intake just created it (not read again). `caller_sends`: the caller sends
    the associate call itself once this commits (its send task is then a later fallback).

    Returns the associateLenderPreimageHash outbox row this call queued, else None."""
    if loan is None:
        loan = Loan.objects.get(pk=loan_id)
    if loan.status != LoanStatus.REQUESTED:
        return None
    escrow = escrow_of(loan)
    with transaction.atomic():
        watch_script(
            script_pubkey=escrow.script_pubkey.hex(),
            loan_ref=loan_ref(loan),
            purpose=WatchPurpose.ESCROW,
            address=loan.escrow_address,
        )
        watch_outpoint(
            txid=loan.escrow_txid,
            vout=loan.escrow_vout,
            loan_ref=loan_ref(loan),
            purpose=WatchPurpose.ESCROW,
        )
        lender_preimage_ensure(loan_id=loan_id)
        workflow = workflow_start(
            loan_id=loan_id,
            type=WorkflowType.ESCROW_SETUP,
            step="offer",
            completed=("watch_escrow",),
        )
        if "watch_escrow" not in workflow.steps_completed:  # started before, at watch_escrow
            workflow_advance(
                workflow_id=workflow.pk, completed_step="watch_escrow", next_step="offer"
            )
        _outcome, tx_id = lender_action_queue(
            loan_id=loan_id,
            action=LenderAction.ASSOCIATE_HASH,
            cause=AuditCause.BACKEND,
            caller_sends=caller_sends,
        )
        # The deposit usually confirmed before the request: look now, not at the next block.
        next_step_enqueue(step=NextStep.OBSERVE_ESCROW, target_id=loan_id)
    return tx_id


OFFER_SENT = "the offer was sent: LoanOffered (or its guard) decides now"


def loan_offer_evaluate(*, loan_id: int) -> list[str]:
    """Offer if it is safe now; otherwise say why not. A reason no later fact can cure makes
    the request invalid (recorded, never offered); the others are re-checked later.

    Returns the reasons the offer is not (yet) sent; empty when it was sent (or held for an
    operator's approval)."""
    loan = Loan.objects.get(pk=loan_id)
    if loan.status != LoanStatus.REQUESTED:
        return [f"the loan is {loan.status}"]
    if lender_action_sent(loan_id=loan_id, action=LenderAction.OFFER):
        # Judged when it was sent (and by its guard when signed): a Bitcoin block while
        # LoanOffered waits for its confirmations must not make the loan invalid.
        return [OFFER_SENT]
    feerate = loan.collateral_lock_feerate
    if feerate is None:
        return ["TX_1 is not built yet (waiting for the escrow deposit)"]
    refusals = offer_refusals(offer_facts(loan))
    reasons = [r.reason for r in refusals]
    permanent = [r.reason for r in refusals if r.permanent]
    with transaction.atomic():
        if permanent:
            loan_transition(
                loan_id=loan_id,
                field="status",
                to=LoanStatus.INVALID,
                cause=AuditCause.BACKEND,
                details={"reasons": permanent},
                updates={"invalid_reason": "; ".join(permanent)},
            )
            workflow = workflow_start(loan_id=loan_id, type=WorkflowType.ESCROW_SETUP, step="offer")
            workflow_fail(workflow_id=workflow.pk, step="offer", error="; ".join(permanent))
        elif reasons:
            _record_wait(loan_id, reasons)
        else:
            lender_action_request(
                loan_id=loan_id, action=LenderAction.OFFER, cause=AuditCause.BACKEND
            )
    return reasons


def offer_facts(loan: Loan) -> OfferFacts:
    """What duty 1 depends on, read now: the escrow outpoint from the UTXO set, the Bitcoin
    head and the stored pre-signature (chain reads: call outside `atomic()`). The offer's
    evaluation and its guard (loans/guards.py) judge the same facts."""
    template = collateral_lock_template(loan)
    utxo = escrow_utxo(txid=loan.escrow_txid, vout=loan.escrow_vout)
    head = bitcoin_head()
    signed = BorrowerSignature.objects.filter(loan=loan, sighash=template.sighash.hex()).exists()
    return OfferFacts(
        expected_script_pubkey=escrow_of(loan).script_pubkey.hex(),
        utxo=utxo,
        required_sats=required_deposit(
            loan_sats=loan.loan_sats,
            feerate_sat_vb=int(loan.collateral_lock_feerate or 0),
            network=settings.BITCOIN_NETWORK,
            lender_fee_address=loan.lender_payout_address,
        ).total_sats,
        signature_verified=signed,
        btc_head=head,
        escrow_csv_blocks=loan.escrow_csv_blocks,
        timelock_borrower_evm=loan.timelock_borrower,
        evm_blocks_per_btc_block=int(settings.EVM_BLOCKS_PER_BITCOIN_BLOCK),
        min_confirmations=int(settings.BITCOIN_CONFIRMATIONS),
        tx1_confirmation_allowance=int(settings.TX1_CONFIRMATION_ALLOWANCE_BLOCKS),
        safety_margin=int(settings.OFFER_SAFETY_MARGIN_BLOCKS),
        fee_estimate_missing=fee_estimate_blocks_offers(),
        evm_confirmations=int(settings.EVM_CONFIRMATIONS),
        window_risk=float(settings.OFFER_WINDOW_RISK),
    )


def _record_wait(loan_id: int, reasons: list[str]) -> None:
    """Record why the offer waits, once per distinct set of reasons (the watchdog asks often)."""
    last = (
        AuditEntry.objects.filter(loan_id=loan_id, action=AuditAction.OFFER_WAITING)
        .order_by("-id")
        .values_list("details", flat=True)
        .first()
    )
    if last is None or last.get("reasons") != reasons:
        loan_record(
            loan_id=loan_id,
            action=AuditAction.OFFER_WAITING,
            cause=AuditCause.BACKEND,
            details={"reasons": reasons},
        )
