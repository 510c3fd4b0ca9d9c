"""Every way a loan ends, run to its end with each party's net result checked to the wei.

Net result = balance change + gas the party paid, so the numbers below are the protocol's
money flows: amount A, bond B = 10% of A, processing fee F.
"""

from __future__ import annotations

import pytest
from web3.types import TxReceipt

from chainwatch.evm.driver import LoanStatus
from tests.contracts.conftest import AMOUNT, BOND, FEE, Desk

pytestmark = pytest.mark.evm


class Ledger:
    """Balances at the start, and the gas each party spent since."""

    def __init__(self, desk: Desk) -> None:
        self.desk = desk
        self.start = desk.balances()
        self.gas = {"borrower": 0, "lender": 0}

    def paid(self, party: str, receipt: TxReceipt) -> None:
        self.gas[party] += self.desk.gas(receipt)

    def net(self) -> dict[str, int]:
        now = self.desk.balances()
        return {k: now[k] - self.start[k] + self.gas.get(k, 0) for k in now}


def _request(desk: Desk, ledger: Ledger) -> int:
    result = desk.borrower.request_loan(
        amount_wei=AMOUNT,
        btc_address="bcrt1p" + "z" * 56,
        btc_pubkey="c6" * 32,
        preimage_hash=desk.secrets.hash_borrower,
        escrow_txid="0f" * 32,
        escrow_vout=0,
    )
    ledger.paid("borrower", result.receipt)
    return result.loan_id


def _offer_and_accept(desk: Desk, ledger: Ledger, loan_id: int) -> None:
    ledger.paid("lender", desk.lender.associate_preimage_hash(loan_id, desk.secrets.hash_lender))
    ledger.paid(
        "lender", desk.lender.extend_offer(loan_id, preimage_hash_lender=desk.secrets.hash_lender)
    )
    ledger.paid("borrower", desk.borrower.accept_offer(loan_id, desk.secrets.preimage_borrower))
    assert desk.loan(loan_id).status is LoanStatus.ACTIVE


def test_repaid(desk: Desk) -> None:
    ledger = Ledger(desk)
    loan_id = _request(desk, ledger)
    _offer_and_accept(desk, ledger, loan_id)
    assert ledger.net() == {"borrower": AMOUNT, "lender": -AMOUNT - BOND, "loan": BOND, "swap": 0}
    desk.mine(10)
    ledger.paid("borrower", desk.borrower.attempt_repayment(loan_id))
    ledger.paid("lender", desk.lender.accept_repayment(loan_id, desk.secrets.preimage_lender))
    assert desk.loan(loan_id).status is LoanStatus.REPAID
    # The loan cost the borrower nothing on the EVM side (the fee came back on acceptance).
    assert ledger.net() == {"borrower": 0, "lender": 0, "loan": 0, "swap": 0}


def test_defaulted(desk: Desk) -> None:
    ledger = Ledger(desk)
    loan_id = _request(desk, ledger)
    _offer_and_accept(desk, ledger, loan_id)
    desk.mine(desk.params.loan_duration)
    ledger.paid("lender", desk.lender.mark_defaulted(loan_id))
    assert desk.loan(loan_id).status is LoanStatus.DEFAULTED
    # The borrower keeps the rBTC; the lender keeps the Bitcoin collateral (swept on Bitcoin).
    assert ledger.net() == {"borrower": AMOUNT, "lender": -AMOUNT, "loan": 0, "swap": 0}


def test_offer_withdrawn(desk: Desk) -> None:
    ledger = Ledger(desk)
    loan_id = _request(desk, ledger)
    ledger.paid(
        "lender", desk.lender.extend_offer(loan_id, preimage_hash_lender=desk.secrets.hash_lender)
    )
    assert ledger.net() == {
        "borrower": -FEE,
        "lender": -AMOUNT - BOND,
        "loan": FEE + BOND,
        "swap": AMOUNT,
    }
    desk.mine(desk.params.t_borrower)
    ledger.paid("lender", desk.lender.withdraw_offer(loan_id))
    assert desk.loan(loan_id).status is LoanStatus.REFUNDED_TO_LENDER
    # The borrower walked away: the processing fee is the lender's.
    assert ledger.net() == {"borrower": -FEE, "lender": FEE, "loan": 0, "swap": 0}


def test_repayment_refused_and_withdrawn(desk: Desk) -> None:
    ledger = Ledger(desk)
    loan_id = _request(desk, ledger)
    _offer_and_accept(desk, ledger, loan_id)
    ledger.paid("borrower", desk.borrower.attempt_repayment(loan_id))
    assert ledger.net() == {"borrower": 0, "lender": -AMOUNT - BOND, "loan": BOND, "swap": AMOUNT}
    desk.mine(desk.params.t_lender)
    ledger.paid("borrower", desk.borrower.withdraw_repayment(loan_id))
    assert desk.loan(loan_id).status is LoanStatus.REFUNDED_TO_BORROWER
    # The lender let t_L pass: the borrower keeps the loan and wins the bond.
    assert ledger.net() == {
        "borrower": AMOUNT + BOND,
        "lender": -AMOUNT - BOND,
        "loan": 0,
        "swap": 0,
    }


def test_deleted_then_borrow_again(desk: Desk) -> None:
    ledger = Ledger(desk)
    loan_id = _request(desk, ledger)
    _offer_and_accept(desk, ledger, loan_id)
    ledger.paid("borrower", desk.borrower.attempt_repayment(loan_id))
    ledger.paid("lender", desk.lender.accept_repayment(loan_id, desk.secrets.preimage_lender))
    ledger.paid("borrower", desk.borrower.delete_loan(loan_id))
    assert not desk.loan(loan_id).exists
    assert desk.contracts.loan_id_of(desk.borrower.address) == 0
    assert ledger.net() == {"borrower": 0, "lender": 0, "loan": 0, "swap": 0}
    second = _request(desk, ledger)
    assert second == loan_id + 1
    assert desk.contracts.loan_id_of(desk.borrower.address) == second
    assert desk.loan(second).status is LoanStatus.REQUESTED
