"""One loan driven through a whole lifecycle, step by step, with a hook after each step.

The borrower (escrow, request, acceptance, repayment, release) and the miners are the test;
the lender is the backend, run in-process by `Desk.pump` or by live worker and beat processes
(`tests/faults/live.py`). After each step's transaction has landed in a block, `hook(step,
landed)` runs: that is where a scenario injects its fault. `ledger` then counts what the
backend recorded for the loan, to compare with an undisturbed run's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bitcoin.models import BitcoinTransaction, ObservedSpend
from chainwatch.models import DeliveryStatus, EvmEvent, EvmTransaction
from loans.models import AuditEntry, BitcoinStage, LoanStatus
from loans.outputs import loan_ref
from loans.services.quote import escrow_quote
from tests.support.desk import Borrower, Desk

REPAID = "repaid"
DEFAULTED = "defaulted"
# The steps of each path, in order, and the chain each step's transaction lands on.
STEPS: dict[str, tuple[str, ...]] = {
    REPAID: (
        "request",
        "escrow",
        "offer",
        "activation",
        "collateral",
        "repayment",
        "acceptance",
        "release",
    ),
    DEFAULTED: ("request", "escrow", "offer", "activation", "collateral", "default", "sweep"),
}
EVM_STEPS = ("request", "offer", "activation", "repayment", "acceptance", "default")
BTC_STEPS = ("escrow", "collateral", "release", "sweep")
FINAL = {
    REPAID: (LoanStatus.CLOSED, BitcoinStage.RELEASED),
    DEFAULTED: (LoanStatus.CLOSED, BitcoinStage.SWEPT),
}


@dataclass(frozen=True)
class Landed:
    """Where a step's transaction landed: the chain, its hash and its block height."""

    chain: str  # "evm" | "btc"
    tx: str
    height: int


Hook = Callable[[str, Landed], None]


def no_fault(step: str, landed: Landed) -> None:
    return None


@dataclass
class Lifecycle:
    desk: Desk
    path: str
    hook: Hook = no_fault
    borrower_key: int = 1
    onchain_id: int = 0

    # --- what the borrower and the miners see ------------------------------------------
    def _landed_evm(self, tx_hash: Any) -> Landed:
        receipt = self.desk.w3.eth.get_transaction_receipt(tx_hash)
        return Landed("evm", receipt["transactionHash"].to_0x_hex(), int(receipt["blockNumber"]))

    def _lender_call_landed(self, action: str) -> Landed | None:
        row = (
            EvmTransaction.objects.filter(loan_ref=self._ref(), action=action)
            .exclude(tx_hash="")
            .first()
        )
        if row is None:
            return None
        receipt = self.desk.w3.eth.get_transaction_receipt(row.tx_hash)  # type: ignore[arg-type]
        return Landed("evm", row.tx_hash, int(receipt["blockNumber"]))

    def _lender_call_mined(self, action: str) -> bool:
        from web3.exceptions import TransactionNotFound

        try:
            return self._lender_call_landed(action) is not None
        except TransactionNotFound:
            return False

    def _mempool_has(self, purpose: str) -> str | None:
        txids = set(
            BitcoinTransaction.objects.filter(loan_ref=self._ref(), purpose=purpose).values_list(
                "txid", flat=True
            )
        )
        found = txids & set(self.desk.node.rpc("getrawmempool"))
        return next(iter(found), None)

    def _mine_btc_landing(self, txid: str) -> Landed:
        self.desk.mine_btc(1)
        tx = self.desk.node.rpc("getrawtransaction", txid, True)
        height = int(self.desk.node.rpc("getblockheader", tx["blockhash"])["height"])
        return Landed("btc", txid, height)

    def _ref(self) -> str:
        return loan_ref(self.desk.loan(self.onchain_id))

    def _status(self) -> str:
        return str(self.desk.loan(self.onchain_id).status)

    def _stage(self) -> str:
        return str(self.desk.loan(self.onchain_id).bitcoin_stage)

    # --- the lifecycle -----------------------------------------------------------------
    def run(self) -> int:
        desk, borrower = self.desk, self.desk.borrower(self.borrower_key)
        # The scanner has a few blocks of history before the loan begins, as in production
        # (a reorg below its very first block is an operator's rescan, not this suite's).
        desk.pump()
        desk.mine_btc(4)
        desk.pump()
        escrow_txid = self._request(borrower)
        landed = self._mine_btc_landing(escrow_txid)
        self.hook("escrow", landed)

        desk.until(lambda: desk.loan(self.onchain_id).collateral_lock_feerate is not None, btc=1)
        desk.presign(borrower, self.onchain_id)
        # Bitcoin blocks only until the deposit has its confirmations. A network mines one
        # every ten minutes: mining one per tick while the desk works would spend the escrow's
        # exit window in seconds, and the offer's guard (rightly) refuses a window too short.
        desk.until(lambda: self._stage() == BitcoinStage.PRESIGNED, btc=1)
        desk.until(lambda: self._lender_call_mined("offer"))
        self.hook("offer", known_landed(self._lender_call_landed("offer")))
        desk.until(lambda: self._status() == LoanStatus.OFFERED)

        receipt = borrower.actions.accept_offer(self.onchain_id, borrower.preimage)
        self.hook("activation", self._landed_evm(receipt["transactionHash"]))
        desk.until(lambda: self._status() == LoanStatus.ACTIVE)

        desk.until(lambda: self._mempool_has("collateral_lock") is not None, evm=0)
        txid = self._mempool_has("collateral_lock")
        assert txid is not None
        self.hook("collateral", self._mine_btc_landing(txid))
        desk.until(lambda: self._stage() == BitcoinStage.COLLATERAL_CONFIRMED, evm=0, btc=1)

        if self.path == REPAID:
            self._repay_and_release(borrower)
        else:
            self._default_and_sweep()
        return self.onchain_id

    def _request(self, borrower: Borrower) -> str:
        """Fund the escrow (left in the mempool) and request the loan at once."""
        quote = escrow_quote(
            borrower_btc_pubkey=borrower.btc_key,
            preimage_hash_borrower=borrower.preimage_hash,
            amount_wei=10**16,
        )
        txid, vout = self.desk.fund(quote.escrow_address, quote.deposit.total_sats + 1000)
        result = borrower.actions.request_loan(
            amount_wei=10**16,
            btc_address=quote.escrow_address,
            btc_pubkey=borrower.btc_key,
            preimage_hash=borrower.preimage_hash,
            escrow_txid=txid,
            escrow_vout=vout,
        )
        self.onchain_id = result.loan_id
        self.hook("request", self._landed_evm(result.receipt["transactionHash"]))
        return txid

    def _repay_and_release(self, borrower: Borrower) -> None:
        desk = self.desk
        receipt = borrower.actions.attempt_repayment(self.onchain_id)
        self.hook("repayment", self._landed_evm(receipt["transactionHash"]))
        desk.until(lambda: self._lender_call_mined("accept_repayment"))
        self.hook("acceptance", known_landed(self._lender_call_landed("accept_repayment")))
        desk.until(lambda: self._status() == LoanStatus.REPAID)

        preimage_lender = desk.revealed_lender_preimage(self.onchain_id)
        loan = desk.loan(self.onchain_id)
        txid = desk.send_btc(borrower.release(loan, preimage_lender))
        self.hook("release", self._mine_btc_landing(txid))
        desk.until(lambda: self._status() == LoanStatus.CLOSED, evm=0, btc=1)

    def _default_and_sweep(self) -> None:
        desk = self.desk
        desk.until(lambda: self._lender_call_mined("mark_default"), evm=5)
        self.hook("default", known_landed(self._lender_call_landed("mark_default")))
        desk.until(lambda: self._status() == LoanStatus.DEFAULTED)
        desk.until(lambda: self._mempool_has("lender_sweep") is not None, evm=0, btc=5)
        txid = self._mempool_has("lender_sweep")
        assert txid is not None
        self.hook("sweep", self._mine_btc_landing(txid))
        desk.until(lambda: self._status() == LoanStatus.CLOSED, evm=0, btc=1)


def known_landed(landed: Landed | None) -> Landed:
    assert landed is not None
    return landed


def ledger(desk: Desk, onchain_id: int) -> dict[str, Any]:
    """What the backend recorded for one loan: its end, and the counts that must match an
    undisturbed run's exactly (a lost or doubled event, transaction or transition shows)."""
    loan = desk.loan(onchain_id)
    ref = loan_ref(loan)
    events = EvmEvent.objects.filter(loan_id=onchain_id).exclude(status=DeliveryStatus.ORPHANED)
    bitcoin = BitcoinTransaction.objects.filter(loan_ref=ref)
    return {
        "final": (str(loan.status), str(loan.bitcoin_stage)),
        "evm_events": dict(Counter(events.values_list("event_name", flat=True))),
        "evm_events_undelivered": events.exclude(status=DeliveryStatus.PROCESSED).count(),
        "lender_calls": dict(
            Counter(
                EvmTransaction.objects.filter(loan_ref=ref).values_list("action", "status")
            ).items()
        ),
        "bitcoin_transactions": dict(Counter(bitcoin.values_list("purpose", "status")).items()),
        # Spends of the escrow (TX_1) and of the collateral (release or sweep), as observed.
        "bitcoin_spends_observed": dict(
            Counter(
                ObservedSpend.objects.filter(watched__loan_ref=ref).values_list("status", flat=True)
            )
        ),
        "status_transitions": status_history(loan),
        "workflows_doubled": loan.workflows.count()
        - len(set(loan.workflows.values_list("type", flat=True))),
    }


def status_history(loan: Any) -> list[tuple[str, str]]:
    """The loan's status transitions from its audit trail, with what a reorg undid taken out:
    a `rederived` row moving the status back (the facts it stood on were orphaned) cancels
    the transitions after the status it returns to. A transition applied twice without such
    a row in between stays twice."""
    history: list[tuple[str, str]] = []
    for entry in AuditEntry.objects.filter(loan=loan).order_by("id"):
        if entry.field == "status" and entry.applied:
            history.append((entry.from_value, entry.to_value))
        elif entry.action == "rederived" and "status" in entry.details:
            back_to = entry.details["status"]["to"]
            while history and history[-1][1] != back_to:
                history.pop()
    return history


def rederivations(onchain_id: int, desk: Desk) -> int:
    return AuditEntry.objects.filter(loan=desk.loan(onchain_id), action="rederived").count()
