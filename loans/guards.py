"""Guards at the moment of acting: one per lender action that moves funds or reveals a secret.

Each guard re-reads, right then, what its action depends on: the loan in the database, the
loan on chain (`getLoan`), the chain heads, the deadline and its margin, and per action the
escrow or collateral output, the stored pre-signature, the repayment's EtherSwap `Lockup`.
It answers a `Verdict`. The outbox (EVM) and the broadcaster (Bitcoin) ask it immediately
before signing and again before every resend, fee bump, approval and retry (`register`,
called from LoansConfig.ready); the Bitcoin signing services ask it before the lender's key
signs. A refusal sends nothing, is recorded in the loan's audit trail and raises an alert.

Guards only read (chain calls included): never call them inside `atomic()`.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from bitcoin.rpc import NodeUnavailable as BitcoinNodeUnavailable
from bitcoin.rpc import NotFound, get_client
from btcloan.alerts.services import alert_raise
from chainwatch.client import NODE_ERRORS
from chainwatch.client import NodeUnavailable as EvmNodeUnavailable
from chainwatch.evm.driver import LoanState
from chainwatch.evm.driver import LoanStatus as ChainStatus
from loans.chain import bitcoin_head, evm_head, global_loan_duration, loan_contracts
from loans.deadlines import DeadlineKind, loan_deadlines
from loans.models import (
    AuditAction,
    AuditCause,
    AuditEntry,
    BorrowerSignature,
    ContractFlavour,
    Loan,
    LoanStatus,
)
from loans.policy import LenderAction, offer_refusals


class Severity(enum.StrEnum):
    WARNING = "warning"  # too early, or not yet: the action is asked again later
    CRITICAL = "critical"  # the action must not happen: someone must look


@dataclass(frozen=True)
class Verdict:
    """A guard's answer: `ok`, or refused with the reason (and, for a repayment whose Lockup
    does not match the loan, `anomaly` says what the borrower did)."""

    ok: bool
    reason: str = ""
    severity: Severity = Severity.CRITICAL
    anomaly: bool = False

    @classmethod
    def go(cls) -> Verdict:
        return cls(True)

    @classmethod
    def refuse(
        cls, reason: str, severity: Severity = Severity.CRITICAL, *, anomaly: bool = False
    ) -> Verdict:
        return cls(False, reason, severity, anomaly)


def _onchain(loan: Loan) -> LoanState:
    """getLoan now. The node being down is "try later", never a verdict."""
    try:
        return loan_contracts().get_loan(int(loan.onchain_id))
    except NODE_ERRORS as exc:
        raise EvmNodeUnavailable(f"getLoan: {type(exc).__name__}") from exc


def _status_check(loan: Loan, state: LoanState, db: str, chain: ChainStatus) -> Verdict | None:
    """None when the database and the contract both have the loan where the action needs it."""
    if loan.status != db:
        return Verdict.refuse(f"the loan is {loan.status} here, not {db}")
    if not state.exists or state.status != chain:
        return Verdict.refuse(f"the contract has the loan {state.status.name}, not {chain.name}")
    return None


def _deadline(loan: Loan, kind: DeadlineKind, *, with_btc: bool = False) -> Any:
    btc = bitcoin_head() if with_btc else None
    found = {d.kind: d for d in loan_deadlines(loan, evm_head=evm_head(), btc_head=btc)}
    return found.get(kind)


# --- EVM actions ------------------------------------------------------------------------------
def guard_offer(loan: Loan) -> Verdict:
    """extendLoanOffer: the loan still Requested here and on chain with our hashes, and every
    condition of duty 1 true now (escrow in the UTXO set, paying the right script with enough
    value and confirmations, the pre-signature stored, the exit window wide enough)."""
    from loans.services.origination import offer_facts

    state = _onchain(loan)
    refused = _status_check(loan, state, LoanStatus.REQUESTED, ChainStatus.REQUESTED)
    if refused is not None:
        return refused
    if state.preimage_hash_borrower.hex() != loan.preimage_hash_borrower:
        return Verdict.refuse("the contract's H_B is not the loan's")
    if state.preimage_hash_lender not in (bytes(32), bytes.fromhex(loan.preimage_hash_lender)):
        return Verdict.refuse("the contract's H_L is not ours")
    if loan.collateral_lock_feerate is None:
        return Verdict.refuse("TX_1 is not built", Severity.WARNING)
    refusals = offer_refusals(offer_facts(loan))
    if refusals:
        return Verdict.refuse("; ".join(r.reason for r in refusals))
    return Verdict.go()


def guard_withdraw_offer(loan: Loan) -> Verdict:
    """withdrawLoanOffer: Offered here and on chain, and t_B over (the next block is past it)."""
    refused = _status_check(loan, _onchain(loan), LoanStatus.OFFERED, ChainStatus.OFFERED)
    if refused is not None:
        return refused
    expiry = _deadline(loan, DeadlineKind.OFFER_EXPIRY)
    # The remedy, not the borrower's deadline: on the seed's contract a block lies between.
    if expiry is None or not expiry.remedy_open:
        return Verdict.refuse("the borrower may still accept the offer", Severity.WARNING)
    return Verdict.go()


def guard_mark_default(loan: Loan) -> Verdict:
    """markAsDefaulted: Active here and on chain (not repaid meanwhile), and the term over."""
    refused = _status_check(loan, _onchain(loan), LoanStatus.ACTIVE, ChainStatus.ACTIVE)
    if refused is not None:
        return refused
    due = _deadline(loan, DeadlineKind.REPAYMENT_DUE)
    if due is None or not due.remedy_open:
        return Verdict.refuse("the borrower may still repay", Severity.WARNING)
    return _global_duration_check(loan)


def _global_duration_check(loan: Loan) -> Verdict:
    """The seed's markAsDefaulted reads the contract's loanDuration as it is now, which the
    owner may have raised since the loan's was last followed."""
    if loan.contract_flavour != ContractFlavour.SEED or loan.activation_block is None:
        return Verdict.go()
    current = global_loan_duration()
    if evm_head() + 1 <= loan.activation_block + current:
        return Verdict.refuse(
            f"the contract's loanDuration is now {current} blocks: the borrower may still repay",
            Severity.WARNING,
        )
    return Verdict.go()


_DELETABLE_ON_CHAIN = frozenset(
    {
        ChainStatus.REFUNDED_TO_LENDER,
        ChainStatus.REPAID,
        ChainStatus.REFUNDED_TO_BORROWER,
        ChainStatus.DEFAULTED,
    }
)


def guard_delete_loan(loan: Loan) -> Verdict:
    """deleteCompletedLoan (housekeeping, moves no funds): closed here on both chains, and
    completed on the contract (deleting erases its record there)."""
    if loan.status != LoanStatus.CLOSED:
        return Verdict.refuse(f"the loan is {loan.status} here, not closed", Severity.WARNING)
    state = _onchain(loan)
    if not state.exists or state.status not in _DELETABLE_ON_CHAIN:
        return Verdict.refuse(f"the contract has the loan {state.status.name}, not completed")
    return Verdict.go()


def guard_accept_repayment(loan: Loan, *, sent: bool = False) -> Verdict:
    """acceptLoanRepayment (reveals P_L): RepaymentInProgress here and on chain, the
    repayment's EtherSwap Lockup matching the loan, and at least LOAN_REPAYMENT_ACCEPT_MARGIN
    EVM blocks left before repayment block + t_L. Once the call is out (`sent`), P_L is in a
    mempool: it is then stopped only when the deadline itself has passed (mined after it, the
    call would put P_L on chain while the borrower takes the repayment back)."""
    refused = _status_check(
        loan, _onchain(loan), LoanStatus.REPAYMENT_IN_PROGRESS, ChainStatus.REPAYMENT_IN_PROGRESS
    )
    if refused is not None:
        return refused
    acceptance = _deadline(loan, DeadlineKind.REPAYMENT_ACCEPTANCE)
    if acceptance is None:
        return Verdict.refuse("the repayment block is not known")
    margin = 0 if sent else int(settings.LOAN_REPAYMENT_ACCEPT_MARGIN)
    # The seed's contract has no acceptance deadline and its withdrawRepaymentAttempt never
    # succeeds: late, P_L is still only the borrower's way to the collateral, never a loss.
    late_is_safe = loan.contract_flavour == ContractFlavour.SEED
    if acceptance.blocks_left < margin and not late_is_safe:
        return Verdict.refuse(
            f"{acceptance.blocks_left} EVM blocks left before the acceptance deadline "
            f"(block {acceptance.block}), {margin} required: P_L is not revealed"
        )
    from loans.services.repayment_check import lockup_mismatch

    mismatch = lockup_mismatch(loan, deadline_block=acceptance.block)
    if mismatch is not None:
        return Verdict.refuse(mismatch, anomaly=True)
    return Verdict.go()


# --- Bitcoin actions ----------------------------------------------------------------------------
_ACTIVATED_ON_CHAIN = frozenset(
    {
        ChainStatus.ACTIVE,
        ChainStatus.REPAYMENT_IN_PROGRESS,
        ChainStatus.REPAID,
        ChainStatus.REFUNDED_TO_BORROWER,
        ChainStatus.DEFAULTED,
    }
)


def _known_to_node(txid: str) -> bool:
    try:
        get_client().raw_transaction(txid)
    except NotFound:
        return False
    return True


def guard_collateral_lock(loan: Loan) -> Verdict:
    """TX_1's completion and broadcast: the loan activated (P_B known, hashing to H_B, and the
    contract past Offered), the borrower's stored pre-signature, and the escrow still unspent
    (or spent by TX_1 itself). Never refused for lateness: a late TX_1 still races the exit.

    The escrow is read from the confirmed UTXO set: a borrower exit that is only in the
    mempool is not final, and TX_1 (bumped as a package) must still be sent to replace it."""
    if not loan.preimage_borrower or loan.activation_block is None:
        return Verdict.refuse("the loan is not activated here (no P_B)")
    digest = hashlib.sha256(bytes.fromhex(loan.preimage_borrower)).hexdigest()
    if digest != loan.preimage_hash_borrower:
        return Verdict.refuse("P_B does not hash to H_B")
    state = _onchain(loan)
    if not state.exists or state.status not in _ACTIVATED_ON_CHAIN:
        return Verdict.refuse(f"the contract has the loan {state.status.name}, not activated")
    if not BorrowerSignature.objects.filter(loan=loan).exists():
        return Verdict.refuse("no stored borrower pre-signature")
    escrow = get_client().tx_out(loan.escrow_txid, loan.escrow_vout, include_mempool=False)
    tx1_out = bool(loan.collateral_txid) and escrow is None and _known_to_node(loan.collateral_txid)
    if escrow is None and not tx1_out:
        return Verdict.refuse("the escrow output is spent by another transaction")
    return Verdict.go()


def guard_sweep(loan: Loan) -> Verdict:
    """The lender's sweep: the loan defaulted or its repayment refunded (here and, while the
    contract still has it, on chain), never repaid; the collateral output unspent (or spent
    by this sweep)."""
    from loans.services.settlement import evm_outcome

    outcome = evm_outcome(loan)
    if outcome not in (LoanStatus.DEFAULTED, LoanStatus.REFUNDED_TO_BORROWER):
        return Verdict.refuse(f"the loan is {outcome}: the collateral is not the lender's")
    state = _onchain(loan)
    if state.exists and state.status not in (
        ChainStatus.DEFAULTED,
        ChainStatus.REFUNDED_TO_BORROWER,
    ):
        return Verdict.refuse(f"the contract has the loan {state.status.name}")
    if not loan.collateral_txid:
        return Verdict.refuse("the loan has no collateral output")
    if get_client().tx_out(loan.collateral_txid, 1, include_mempool=True) is None:
        from bitcoin.models import BitcoinTransaction, TxPurpose

        sweeps = BitcoinTransaction.objects.filter(
            loan_ref=str(loan.pk), purpose=TxPurpose.LENDER_SWEEP
        ).values_list("txid", flat=True)
        if not any(_known_to_node(txid) for txid in sweeps):
            return Verdict.refuse("the collateral output is spent by another transaction")
    return Verdict.go()


EVM_GUARDS = {
    LenderAction.OFFER: guard_offer,
    LenderAction.WITHDRAW_OFFER: guard_withdraw_offer,
    LenderAction.MARK_DEFAULT: guard_mark_default,
    LenderAction.DELETE_LOAN: guard_delete_loan,
}


def guard_check(*, loan_id: int, action: LenderAction, sent: bool = False) -> Verdict:
    """The action's guard on the loan as it is now; a refusal is recorded and alerted. A node
    that cannot be read raises (NodeUnavailable of either chain): try again later."""
    loan = Loan.objects.get(pk=loan_id)
    if action == LenderAction.ACCEPT_REPAYMENT:
        verdict = guard_accept_repayment(loan, sent=sent)
    elif action == LenderAction.BROADCAST_COLLATERAL_LOCK:
        verdict = guard_collateral_lock(loan)
    elif action == LenderAction.SWEEP:
        verdict = guard_sweep(loan)
    else:
        verdict = EVM_GUARDS[action](loan)
    if not verdict.ok:
        guard_refusal_record(loan=loan, action=action, verdict=verdict)
    return verdict


def guard_refusal_record(*, loan: Loan, action: LenderAction, verdict: Verdict) -> None:
    """The refusal in the loan's audit trail (once per distinct reason: guards are asked
    often) and an alert; a Lockup that does not match the loan is also an anomaly."""
    details = {"action": action.value, "reason": verdict.reason}
    with transaction.atomic():
        last = (
            AuditEntry.objects.filter(loan=loan, action=AuditAction.GUARD_REFUSED)
            .order_by("-id")
            .values_list("details", flat=True)
            .first()
        )
        if last != details:
            AuditEntry.objects.create(
                loan=loan,
                cause=AuditCause.BACKEND,
                action=AuditAction.GUARD_REFUSED,
                details=details,
            )
            if verdict.anomaly:
                AuditEntry.objects.create(
                    loan=loan,
                    cause=AuditCause.BACKEND,
                    action=AuditAction.ANOMALY,
                    details={"problem": verdict.reason},
                )
    alert_raise(
        key=f"loan:{loan.pk}:guard:{action.value}",
        severity=verdict.severity.value,
        title=f"loan {loan.onchain_id}: {action.value} refused at the moment of acting",
        details=details,
        loan_ref=loan.pk,
    )


# --- hooks for the watchers ---------------------------------------------------------------------
def _loan_id(loan_ref: str) -> int | None:
    return int(loan_ref) if str(loan_ref).isdigit() else None


# The contract statuses that show a guarded call done (only the lender can make these calls,
# so the status is ours): once there, a call the outbox still saw pending (mined since its last
# look) has nothing left to stop. An offer is done once the loan is anywhere past Requested.
_DONE_ON_CHAIN = {
    LenderAction.OFFER: frozenset(ChainStatus) - {ChainStatus.REQUESTED},
    LenderAction.WITHDRAW_OFFER: frozenset({ChainStatus.REFUNDED_TO_LENDER}),
    LenderAction.MARK_DEFAULT: frozenset({ChainStatus.DEFAULTED}),
    LenderAction.ACCEPT_REPAYMENT: frozenset({ChainStatus.REPAID}),
}


def _done_on_chain(loan_id: int, action: LenderAction) -> bool:
    done = _DONE_ON_CHAIN.get(action)
    if done is None:
        return False
    state = _onchain(Loan.objects.get(pk=loan_id))
    return state.exists and state.status in done


def _evm_guard(row: Any, moment: str) -> str | None:
    """chainwatch's send guard: the outbox row's loan and action, at this moment."""
    from chainwatch.outbox.hooks import Moment

    loan_id = _loan_id(row.loan_ref)
    if loan_id is None or not Loan.objects.filter(pk=loan_id).exists():
        return f"no loan {row.loan_ref!r}"
    # The outbox read "no receipt" a moment ago; if the call was mined since, the contract is
    # already past the status the guard requires. That is the call done, not a refusal (no
    # alert, no cancellation of a nonce already used).
    if moment == Moment.PENDING and _done_on_chain(loan_id, LenderAction(row.action)):
        return None
    # Once the call may be in a mempool, only a passed deadline stops acceptLoanRepayment.
    sent = moment in (Moment.PENDING, Moment.BUMP) or (
        moment == Moment.RESEND and row.send_attempts > 0
    )
    try:
        verdict = guard_check(loan_id=loan_id, action=LenderAction(row.action), sent=sent)
    except BitcoinNodeUnavailable as exc:
        raise EvmNodeUnavailable(f"guard: Bitcoin node: {exc}") from exc
    return None if verdict.ok else verdict.reason


def _bitcoin_guard(row: Any) -> str | None:
    """bitcoin's broadcast guard: TX_1 and the sweep, before every (re)broadcast."""
    from bitcoin.models import TxPurpose

    action = {
        TxPurpose.COLLATERAL_LOCK: LenderAction.BROADCAST_COLLATERAL_LOCK,
        TxPurpose.LENDER_SWEEP: LenderAction.SWEEP,
    }.get(row.purpose)
    loan_id = _loan_id(row.loan_ref)
    if action is None or loan_id is None:
        return None
    try:
        verdict = guard_check(loan_id=loan_id, action=action)
    except EvmNodeUnavailable as exc:
        raise BitcoinNodeUnavailable(f"guard: EVM node: {exc}") from exc
    return None if verdict.ok else verdict.reason


def _heard_broadcast(row: Any) -> None:
    """P_L is public from the moment acceptLoanRepayment reaches a node: recorded then."""
    from loans.services.preimages import lender_preimage_revealed

    loan_id = _loan_id(row.loan_ref)
    if row.action == LenderAction.ACCEPT_REPAYMENT.value and loan_id is not None:
        lender_preimage_revealed(loan_id=loan_id, tx_hash=row.tx_hash)


def register() -> None:
    """Give the outbox and the broadcaster the guards (from LoansConfig.ready)."""
    from bitcoin.hooks import register_broadcast_guard
    from chainwatch.outbox.hooks import register_broadcast_hook, register_send_guard

    for action in (*EVM_GUARDS, LenderAction.ACCEPT_REPAYMENT):
        register_send_guard(action.value, _evm_guard)
    register_broadcast_hook(_heard_broadcast)
    register_broadcast_guard(_bitcoin_guard)
