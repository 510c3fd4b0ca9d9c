"""The lender's Bitcoin writes of a loan: TX_1 built from the deposit, the borrower's
pre-signature kept, TX_1 completed on activation, the sweep; what they derive from is in
loans/outputs.py, the deposit's stage from the UTXO set in loans/services/escrow_observer.py.

Reads from the node happen before any transaction opens; the writes that follow are
compare-and-set, so a repeated call finds the work done and changes nothing.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from bitcoin.models import BitcoinTransaction, SpendPurpose, TxPurpose, WatchPurpose
from bitcoin.services.signing import (
    collateral_lock_complete,
    lender_sweep_complete,
    spend_register_template,
)
from bitcoin.services.watch import watch_outpoint
from loans.chain import escrow_utxo, feerate_now, lender_payout_address
from loans.models import (
    AuditAction,
    AuditCause,
    AuditEntry,
    BitcoinStage,
    BorrowerSignature,
    Loan,
    LoanStatus,
)
from loans.next_steps import NextStep, next_step_enqueue
from loans.outputs import (
    CollateralError,
    InvalidBorrowerSignature,
    collateral_lock_build,
    collateral_lock_template,
    collateral_of,
    loan_ref,
)
from loans.policy import LenderAction, Tx1Feerate, tx1_feerate
from loans.services.escrow_observer import escrow_observe
from loans.services.lifecycle import loan_record, loan_transition
from loans.services.workflows import workflows_fail
from vaultero import (
    Outpoint,
    SpendTemplate,
    VaulteroError,
    build_lender_sweep,
    required_deposit,
    verify_input,
)


def _tx1_feerate(loan: Loan, *, deposit_sats: int, payout: str) -> Tx1Feerate:
    """The feerate TX_1 is built at from this deposit (chain read: today's feerate)."""
    unit = required_deposit(
        loan_sats=loan.loan_sats,
        feerate_sat_vb=1,
        network=settings.BITCOIN_NETWORK,
        lender_fee_address=payout,
    )
    return tx1_feerate(
        deposit_sats=deposit_sats,
        fixed_sats=unit.collateral_sats + unit.origination_fee_sats,
        tx1_vsize=unit.tx1_vsize,
        today_sat_vb=feerate_now(),
        headroom_percent=int(settings.QUOTE_FEERATE_HEADROOM_PERCENT),
        floor_sat_vb=int(settings.BITCOIN_FEERATE_FLOOR_SAT_VB),
    )


def _deposit_short(loan_id: int, deposit_sats: int, missing_sats: int) -> None:
    """Tell the borrower (audit, API next action) what the deposit lacks, once per amount.
    Not final: the request stays open (the watchdog looks again)."""
    last = (
        AuditEntry.objects.filter(loan_id=loan_id, action=AuditAction.ESCROW_DEPOSIT_SHORT)
        .order_by("-id")
        .values_list("details", flat=True)
        .first()
    )
    if last is not None and last.get("missing_sats") == missing_sats:
        return
    loan_record(
        loan_id=loan_id,
        action=AuditAction.ESCROW_DEPOSIT_SHORT,
        cause=AuditCause.BACKEND,
        details={
            "deposit_sats": deposit_sats,
            "missing_sats": missing_sats,
            "feerate_floor_sat_vb": int(settings.BITCOIN_FEERATE_FLOOR_SAT_VB),
        },
    )


def collateral_lock_prepare(*, loan_id: int) -> SpendTemplate | None:
    """Build TX_1 once the escrow is funded, at the best feerate the deposit affords (up to
    today's plus the quote's headroom), record its inputs and allow the lender's key to sign
    it. None while the deposit is not in the UTXO set, or cannot pay TX_1 at the relay floor
    (the borrower is told what is missing; the request stays open)."""
    loan = Loan.objects.get(pk=loan_id)
    if loan.collateral_lock_feerate is not None:
        return collateral_lock_template(loan)
    if loan.status != LoanStatus.REQUESTED:
        return None
    utxo = escrow_utxo(txid=loan.escrow_txid, vout=loan.escrow_vout)
    if utxo is None:
        return None
    payout = lender_payout_address()
    chosen = _tx1_feerate(loan, deposit_sats=utxo.value_sats, payout=payout)
    if chosen.feerate_sat_vb is None:
        _deposit_short(loan_id, utxo.value_sats, chosen.missing_sats)
        return None
    feerate = chosen.feerate_sat_vb
    try:
        template = collateral_lock_build(
            loan, value=utxo.value_sats, feerate=feerate, payout=payout
        )
    except VaulteroError as exc:
        loan_transition(
            loan_id=loan_id,
            field="status",
            to=LoanStatus.INVALID,
            cause=AuditCause.BACKEND,
            details={"reason": f"TX_1 cannot be built from the escrow deposit: {exc}"},
            updates={"invalid_reason": f"TX_1 cannot be built from the escrow deposit: {exc}"},
        )
        workflows_fail(loan_id=loan_id, error=f"TX_1 cannot be built: {exc}")
        return None
    with transaction.atomic():
        fixed = Loan.objects.filter(pk=loan_id, collateral_lock_feerate=None).update(
            escrow_value_sats=utxo.value_sats,
            collateral_lock_feerate=feerate,
            lender_payout_address=payout,
            collateral_address=collateral_of(loan).address(settings.BITCOIN_NETWORK),
            collateral_txid=template.txid,
            collateral_vout=1,
            collateral_value_sats=template.outputs[1].value,
        )
        if not fixed:  # a concurrent call built it first: use theirs
            return collateral_lock_template(Loan.objects.get(pk=loan_id))
        spend_register_template(
            loan_ref=loan_ref(loan), purpose=SpendPurpose.COLLATERAL_LOCK, template=template
        )
        loan_record(
            loan_id=loan_id,
            action=AuditAction.COLLATERAL_LOCK_BUILT,
            cause=AuditCause.BACKEND,
            details={
                "txid": template.txid,
                "feerate_sat_vb": feerate,
                "fee_sats": template.fee,
                "escrow_value_sats": utxo.value_sats,
            },
        )
    return template


def borrower_signature_submit(*, loan_id: int, signature_hex: str) -> BorrowerSignature:
    """Verify the borrower's pre-signature on TX_1 and keep it. Idempotent for the same
    signature; a wrong one is refused with the reason and changes nothing."""
    loan = Loan.objects.get(pk=loan_id)
    if loan.status != LoanStatus.REQUESTED:
        raise CollateralError(f"the loan is {loan.status}: TX_1 is no longer being signed")
    template = collateral_lock_template(loan)
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        raise InvalidBorrowerSignature("the signature is not hex") from None
    if len(signature) != 64:
        raise InvalidBorrowerSignature(f"a signature is 64 bytes, got {len(signature)}")
    if not verify_input(template, loan.borrower_btc_pubkey, signature):
        raise InvalidBorrowerSignature(
            "the signature does not verify for TX_1 under the borrower's key"
        )
    with transaction.atomic():
        stored, created = BorrowerSignature.objects.get_or_create(
            loan=loan,
            sighash=template.sighash.hex(),
            defaults={"txid": template.txid, "signature": signature.hex()},
        )
        if created:
            loan_record(
                loan_id=loan_id,
                action=AuditAction.BORROWER_PRESIGNED,
                cause=AuditCause.BORROWER,
                details={"txid": template.txid},
            )
            next_step_enqueue(step=NextStep.EVALUATE_OFFER, target_id=loan_id)
        if loan.bitcoin_stage == BitcoinStage.ESCROW_CONFIRMED:
            loan_transition(
                loan_id=loan_id,
                field="bitcoin_stage",
                to=BitcoinStage.PRESIGNED,
                cause=AuditCause.BORROWER,
            )
    return stored


def _guarded(loan_id: int, action: LenderAction) -> None:
    """The action's guard, immediately before the lender's key signs (outside any transaction:
    it reads both chains). A refusal is recorded and alerted by the guard, and raised here."""
    from loans.guards import guard_check

    verdict = guard_check(loan_id=loan_id, action=action)
    if not verdict.ok:
        raise CollateralError(f"{action.value} refused by its guard: {verdict.reason}")


def _registered(loan: Loan, purpose: TxPurpose) -> BitcoinTransaction | None:
    return BitcoinTransaction.objects.filter(loan_ref=loan_ref(loan), purpose=purpose).first()


def collateral_lock_sign(*, loan_id: int) -> int:
    """TX_1 complete (the borrower's pre-signature, ours, P_B) and in the Bitcoin outbox;
    returns the outbox row's id. The collateral output is watched from now on. The guard runs
    first and the signer is called outside any database transaction (a remote signer may be
    slow); a repeated call finds TX_1 registered and signs nothing."""
    loan = Loan.objects.get(pk=loan_id)
    if not loan.preimage_borrower:
        raise CollateralError("P_B is not known yet (the loan is not active)")
    template = collateral_lock_template(loan)
    signature = BorrowerSignature.objects.filter(loan=loan, sighash=template.sighash.hex()).first()
    if signature is None:
        raise CollateralError("no verified borrower pre-signature for TX_1")
    outbox = _registered(loan, TxPurpose.COLLATERAL_LOCK)
    if outbox is None:
        _guarded(loan_id, LenderAction.BROADCAST_COLLATERAL_LOCK)
        outbox = collateral_lock_complete(
            loan_ref=loan_ref(loan),
            txid=template.txid,
            borrower_signature=signature.signature,
            borrower_preimage=loan.preimage_borrower,
            # the escrow's exit opens here: the fee bumper races against it
            deadline_height=(
                loan.escrow_confirmed_height + loan.escrow_csv_blocks
                if loan.escrow_confirmed_height is not None
                else None
            ),
        )
    with transaction.atomic():
        collateral_watch(loan=loan)
        loan_transition(
            loan_id=loan_id,
            field="bitcoin_stage",
            to=BitcoinStage.COLLATERAL_LOCKED,
            cause=AuditCause.BACKEND,
            cause_ref=f"btc-tx:{outbox.pk}",
        )
    return outbox.pk


def collateral_watch(*, loan: Loan) -> None:
    """Have the collateral output (TX_1's output 1) watched: its release or sweep is seen.
    Idempotent; no chain call (a handler may call it)."""
    watch_outpoint(
        txid=loan.collateral_txid, vout=1, loan_ref=loan_ref(loan), purpose=WatchPurpose.COLLATERAL
    )


def collateral_sweep_sign(*, loan_id: int) -> int:
    """The lender's sweep of the collateral, signed and in the Bitcoin outbox (the node takes
    it once t1_btc has matured); returns the outbox row's id. Guarded before the key signs,
    signed outside any database transaction. Idempotent."""
    loan = Loan.objects.get(pk=loan_id)
    if loan.collateral_value_sats is None or not loan.collateral_txid:
        raise CollateralError("the loan has no collateral output")
    existing = _registered(loan, TxPurpose.LENDER_SWEEP)
    if existing is not None:
        return existing.pk
    _guarded(loan_id, LenderAction.SWEEP)
    feerate = feerate_now()
    template = build_lender_sweep(
        collateral=collateral_of(loan),
        outpoint=Outpoint(loan.collateral_txid, 1),
        value=loan.collateral_value_sats,
        destination=loan.lender_payout_address or lender_payout_address(),
        feerate_sat_vb=feerate,
        network=settings.BITCOIN_NETWORK,
    )
    spend_register_template(
        loan_ref=loan_ref(loan), purpose=SpendPurpose.LENDER_SWEEP, template=template
    )
    outbox = lender_sweep_complete(loan_ref=loan_ref(loan), txid=template.txid)
    loan_record(
        loan_id=loan_id,
        action=AuditAction.COLLATERAL_SWEEP_SIGNED,
        cause=AuditCause.BACKEND,
        details={"txid": template.txid, "fee_sats": template.fee},
    )
    return outbox.pk


def escrow_follow(*, loan_id: int) -> tuple[BitcoinStage, str | None]:
    """Look at the escrow deposit, build TX_1 once it is there, then have the offer judged.
    Returns the stage and TX_1's txid (None while there is nothing to build it from)."""
    stage = escrow_observe(loan_id=loan_id)
    template = collateral_lock_prepare(loan_id=loan_id)
    if template is not None:
        next_step_enqueue(step=NextStep.EVALUATE_OFFER, target_id=loan_id)
    return stage, template.txid if template else None


def collateral_lock_send(*, loan_id: int) -> int:
    """TX_1 signed and handed to the broadcaster (PROTOCOL.md duty 2); its outbox row's id."""
    tx_id = collateral_lock_sign(loan_id=loan_id)
    next_step_enqueue(step=NextStep.BROADCAST, target_id=tx_id)
    return tx_id


def collateral_sweep_send(*, loan_id: int) -> int:
    """The sweep signed (once) and handed to the broadcaster, which the node refuses until t1
    has matured; the watchdog calls this again once it has."""
    tx_id = collateral_sweep_sign(loan_id=loan_id)
    next_step_enqueue(step=NextStep.BROADCAST, target_id=tx_id)
    return tx_id
