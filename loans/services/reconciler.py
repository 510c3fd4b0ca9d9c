"""The reconciler: each open loan against `getLoan` at the safe head and the UTXO set.

What it can re-derive from recorded facts it repairs (the Bitcoin stage from the bitcoin
app's observations); what it cannot (the contract disagrees with every event we indexed) it
raises as an alert for an operator, and resolves the alert once the two agree again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from btcloan.alerts.services import alert_raise, alert_resolve
from chainwatch.models import DeliveryStatus, EvmEvent
from chainwatch.selectors import indexer_status
from loans.chain import escrow_utxo, evm_safe_head, loan_contracts
from loans.models import CONTRACT_STATUSES, BitcoinStage, Loan, LoanStatus
from loans.selectors import loans_open
from loans.services.rederive import loan_rederive_bitcoin, loan_rederive_evm
from loans.services.settlement import evm_outcome

# Stages in which an output of the loan must still be unspent in the UTXO set.
ESCROW_UNSPENT = (BitcoinStage.ESCROW_SEEN, BitcoinStage.ESCROW_CONFIRMED, BitcoinStage.PRESIGNED)


@dataclass
class ReconcileSummary:
    checked: int = 0
    agreed: int = 0
    repaired: list[int] = field(default_factory=list)
    alerted: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "agreed": self.agreed,
            "repaired": self.repaired,
            "alerted": self.alerted,
        }


def _events_in_flight(loan: Loan) -> bool:
    """Events of the loan indexed but not yet applied: a lag, not a disagreement."""
    return EvmEvent.objects.filter(
        chain_id=loan.chain_id,
        loan_id=loan.onchain_id,
        status__in=(DeliveryStatus.PENDING, DeliveryStatus.FAILED),
    ).exists()


def _output_that_must_be_unspent(loan: Loan) -> tuple[str, int] | None:
    if loan.bitcoin_stage in ESCROW_UNSPENT:
        return loan.escrow_txid, loan.escrow_vout
    if loan.bitcoin_stage == BitcoinStage.COLLATERAL_CONFIRMED and loan.collateral_txid:
        return loan.collateral_txid, 1
    return None


def reconcile_run() -> ReconcileSummary:
    summary = ReconcileSummary()
    contracts = loan_contracts()
    # Compare no further than the indexer has read: an event confirmed on chain but not yet
    # indexed is a lag (the next poll applies it), not a disagreement to page anyone about.
    indexed = indexer_status(chain_id=contracts.chain_id).indexed_block
    safe = min(evm_safe_head(), -1 if indexed is None else indexed)
    for loan in loans_open():
        summary.checked += 1
        problems = []
        state = contracts.get_loan(int(loan.onchain_id), block=safe)
        ours = evm_outcome(loan)
        theirs = CONTRACT_STATUSES[state.status] if state.exists else LoanStatus.DELETED
        disagree = theirs != ours and loan.status != LoanStatus.DELETED
        if loan.request_block <= safe and disagree and not _events_in_flight(loan):
            # First from our own recorded events (a lost write, a bad manual edit)...
            if loan_rederive_evm(loan_id=loan.pk, fork_block=safe):
                loan.refresh_from_db()
                ours = evm_outcome(loan)
                summary.repaired.append(loan.pk)
            # ...and what they cannot explain (an event never indexed) goes to an operator.
            if theirs != ours:
                problems.append(f"contract says {theirs}, the backend says {ours}")
        unspent = _output_that_must_be_unspent(loan)
        if unspent is not None and escrow_utxo(txid=unspent[0], vout=unspent[1]) is None:
            # A spend we missed: the bitcoin app's observations may already tell which.
            if loan_rederive_bitcoin(loan_id=loan.pk, cause_ref="reconciler"):
                summary.repaired.append(loan.pk)
            else:
                problems.append(f"output {unspent[0]}:{unspent[1]} is spent, unobserved")
        key = f"loan:{loan.pk}:reconcile"
        if problems:
            alert_raise(
                key=key,
                severity="critical",
                title=f"loan {loan.onchain_id} disagrees with the chains",
                details={"problems": problems, "safe_block": safe},
                loan_ref=loan.pk,
            )
            summary.alerted.append(loan.pk)
        else:
            alert_resolve(key=key)
            summary.agreed += 1
    return summary
