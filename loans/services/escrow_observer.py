"""The escrow deposit observed in the node's UTXO set: the one part of `loans` that turns a
node read into a stage, for deposits the scanner cannot report (confirmed before the request,
or re-derived after a reorg). The read happens before the transaction opens.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from loans.chain import escrow_utxo
from loans.models import AuditCause, BitcoinStage, BorrowerSignature, Loan
from loans.services.lifecycle import loan_transition


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
