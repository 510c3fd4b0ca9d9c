"""The loan's Bitcoin outputs and spends: the escrow and collateral outputs, TX_1 (built for
the borrower's pre-signature, completed on activation), the borrower's signature, the sweep.

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
from loans.models import AuditCause, BitcoinStage, BorrowerSignature, Loan, LoanStatus
from loans.policy import LenderAction
from loans.services.lifecycle import loan_record, loan_transition
from vaultero import (
    Outpoint,
    SpendTemplate,
    TaprootOutput,
    VaulteroError,
    build_borrower_exit,
    build_collateral_lock,
    build_collateral_release,
    build_lender_sweep,
    collateral_output,
    escrow_output,
    origination_fee_sats,
    verify_input,
)


class CollateralError(Exception):
    """A Bitcoin step of the loan cannot be taken (yet); the message says why."""


class InvalidBorrowerSignature(CollateralError):
    """The uploaded signature does not verify for this loan's TX_1."""


def loan_ref(loan: Loan) -> str:
    return str(loan.pk)


def escrow_of(loan: Loan) -> TaprootOutput:
    return escrow_output(
        borrower_key=loan.borrower_btc_pubkey,
        lender_key=loan.lender_btc_pubkey,
        preimage_hash=loan.preimage_hash_borrower,
        csv_blocks=loan.escrow_csv_blocks,
        internal_key=loan.escrow_internal_key,
    )


def collateral_of(loan: Loan) -> TaprootOutput:
    if not loan.preimage_hash_lender:
        raise CollateralError("the lender's preimage hash is not fixed yet")
    return collateral_output(
        borrower_key=loan.borrower_btc_pubkey,
        lender_key=loan.lender_btc_pubkey,
        preimage_hash=loan.preimage_hash_lender,
        csv_blocks=loan.collateral_csv_blocks,
        internal_key=loan.escrow_internal_key,
    )


def _build_lock(loan: Loan, *, value: int, feerate: int, payout: str) -> SpendTemplate:
    return build_collateral_lock(
        escrow=escrow_of(loan),
        outpoint=Outpoint(loan.escrow_txid, loan.escrow_vout),
        value=value,
        lender_fee_address=payout,
        collateral=collateral_of(loan),
        loan_sats=loan.loan_sats,
        origination_fee_sats=origination_fee_sats(loan.loan_sats),
        feerate_sat_vb=feerate,
        network=settings.BITCOIN_NETWORK,
    )


def collateral_lock_template(loan: Loan) -> SpendTemplate:
    """TX_1 exactly as built for the borrower (rebuilt from the recorded inputs)."""
    if loan.collateral_lock_feerate is None or loan.escrow_value_sats is None:
        raise CollateralError("TX_1 is not built yet (waiting for the escrow deposit)")
    return _build_lock(
        loan,
        value=loan.escrow_value_sats,
        feerate=loan.collateral_lock_feerate,
        payout=loan.lender_payout_address,
    )


def collateral_lock_prepare(*, loan_id: int) -> SpendTemplate | None:
    """Build TX_1 once the escrow is funded, record its inputs and allow the lender's key to
    sign it. None while the deposit is not in the UTXO set. A deposit that cannot pay for the
    collateral, the fee and TX_1's own miner fee makes the request invalid."""
    loan = Loan.objects.get(pk=loan_id)
    if loan.collateral_lock_feerate is not None:
        return collateral_lock_template(loan)
    if loan.status != LoanStatus.REQUESTED:
        return None
    utxo = escrow_utxo(txid=loan.escrow_txid, vout=loan.escrow_vout)
    if utxo is None:
        return None
    feerate = feerate_now()
    payout = lender_payout_address()
    try:
        template = _build_lock(loan, value=utxo.value_sats, feerate=feerate, payout=payout)
    except VaulteroError as exc:
        loan_transition(
            loan_id=loan_id,
            field="status",
            to=LoanStatus.INVALID,
            cause=AuditCause.BACKEND,
            details={"reason": f"TX_1 cannot be built from the escrow deposit: {exc}"},
            updates={"invalid_reason": f"TX_1 cannot be built from the escrow deposit: {exc}"},
        )
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
            action="collateral_lock_built",
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
            from loans.tasks import evaluate_offer

            loan_record(
                loan_id=loan_id,
                action="borrower_presigned",
                cause=AuditCause.BORROWER,
                details={"txid": template.txid},
            )
            evaluate_offer.delay_on_commit(loan_id)
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
        watch_outpoint(
            txid=template.txid,
            vout=1,
            loan_ref=loan_ref(loan),
            purpose=WatchPurpose.COLLATERAL,
        )
        loan_transition(
            loan_id=loan_id,
            field="bitcoin_stage",
            to=BitcoinStage.COLLATERAL_LOCKED,
            cause=AuditCause.BACKEND,
            cause_ref=f"btc-tx:{outbox.pk}",
        )
    return outbox.pk


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
        action="collateral_sweep_signed",
        cause=AuditCause.BACKEND,
        details={"txid": template.txid, "fee_sats": template.fee},
    )
    return outbox.pk


def borrower_release_template(loan: Loan, *, destination: str, feerate: int) -> SpendTemplate:
    """The borrower's collateral release, unsigned (they add their signature and P_L)."""
    if loan.status not in (LoanStatus.REPAID, LoanStatus.DELETED, LoanStatus.CLOSED):
        raise CollateralError(f"the loan is {loan.status}: the release opens once repaid")
    if loan.collateral_value_sats is None or loan.bitcoin_stage not in (
        BitcoinStage.COLLATERAL_LOCKED,
        BitcoinStage.COLLATERAL_CONFIRMED,
    ):
        raise CollateralError("there is no unspent collateral output to release")
    return build_collateral_release(
        collateral=collateral_of(loan),
        outpoint=Outpoint(loan.collateral_txid, 1),
        value=loan.collateral_value_sats,
        destination=destination,
        feerate_sat_vb=feerate,
        network=settings.BITCOIN_NETWORK,
    )


def borrower_exit_template(loan: Loan, *, destination: str, feerate: int) -> SpendTemplate:
    """The borrower's escrow exit, unsigned; valid once t0_btc has passed since funding."""
    if loan.status not in (LoanStatus.REQUESTED, LoanStatus.REFUNDED_TO_LENDER, LoanStatus.INVALID):
        raise CollateralError(f"the loan is {loan.status}: the escrow is not the borrower's")
    if loan.bitcoin_stage not in (
        BitcoinStage.ESCROW_SEEN,
        BitcoinStage.ESCROW_CONFIRMED,
        BitcoinStage.PRESIGNED,
    ):
        raise CollateralError("there is no unspent escrow output to exit")
    value = loan.escrow_value_sats
    if value is None:
        utxo = escrow_utxo(txid=loan.escrow_txid, vout=loan.escrow_vout)
        if utxo is None:
            raise CollateralError("the escrow output is not in the UTXO set")
        value = utxo.value_sats
    return build_borrower_exit(
        escrow=escrow_of(loan),
        outpoint=Outpoint(loan.escrow_txid, loan.escrow_vout),
        value=value,
        destination=destination,
        feerate_sat_vb=feerate,
        network=settings.BITCOIN_NETWORK,
    )


def escrow_observe(*, loan_id: int) -> BitcoinStage:
    """The escrow deposit's stage from the UTXO set. The scanner reports deposits it sees in
    new blocks and the mempool; a deposit confirmed before the loan was requested (the usual
    case) is found here instead. Idempotent: the transition table ignores what is known."""
    loan = Loan.objects.get(pk=loan_id)
    utxo = escrow_utxo(txid=loan.escrow_txid, vout=loan.escrow_vout)
    if utxo is None or loan.bitcoin_stage not in (
        BitcoinStage.AWAITING_ESCROW,
        BitcoinStage.ESCROW_SEEN,
    ):
        return BitcoinStage(loan.bitcoin_stage)
    with transaction.atomic():
        loan_transition(
            loan_id=loan_id,
            field="bitcoin_stage",
            to=BitcoinStage.ESCROW_SEEN,
            cause=AuditCause.BITCOIN_FACT,
            cause_ref="utxo-set",
        )
        if utxo.confirmed_height is not None and utxo.confirmations >= int(
            settings.BITCOIN_CONFIRMATIONS
        ):
            loan_transition(
                loan_id=loan_id,
                field="bitcoin_stage",
                to=BitcoinStage.ESCROW_CONFIRMED,
                cause=AuditCause.BITCOIN_FACT,
                cause_ref="utxo-set",
                details={"confirmations": utxo.confirmations},
                updates={"escrow_confirmed_height": utxo.confirmed_height},
            )
            if BorrowerSignature.objects.filter(loan_id=loan_id).exists():
                loan_transition(
                    loan_id=loan_id,
                    field="bitcoin_stage",
                    to=BitcoinStage.PRESIGNED,
                    cause=AuditCause.BITCOIN_FACT,
                    cause_ref="utxo-set",
                )
    return BitcoinStage(Loan.objects.values_list("bitcoin_stage", flat=True).get(pk=loan_id))
