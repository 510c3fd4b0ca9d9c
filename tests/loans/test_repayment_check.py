"""The repayment's Lockup against the loan (pure part): what the borrower may have done wrong
on a seed-flavour contract, which accepts any H_L in attemptRepayment."""

from __future__ import annotations

from typing import Any

import pytest

from loans.models import Loan
from loans.services.repayment_check import _mismatch

LENDER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"  # anvil's key 0, the tests' lender


@pytest.fixture(autouse=True)
def _lender(settings: Any) -> None:
    settings.LENDER_EVM_PRIVATE_KEY = (
        "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
    )


def _loan() -> Loan:
    return Loan(
        contract_address="0x5FbDB2315678afecb367f032d93F642f64180aa3",
        amount_wei=10**16,
        preimage_hash_lender="ab" * 32,
        timelock_lender=8,
        repayment_block=100,
    )


def _lockup(**overrides: Any) -> dict[str, Any]:
    args = {
        "preimageHash": bytes.fromhex("ab" * 32),
        "amount": 10**16,
        "claimAddress": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
        "refundAddress": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
        "timelock": 108,
    }
    return {**args, **overrides}


def test_a_lockup_that_matches_the_loan_passes() -> None:
    assert _mismatch(_loan(), _lockup(), block=100, deadline_block=108) is None
    # Claimable by the lender is also what the protocol allows.
    assert _mismatch(_loan(), _lockup(claimAddress=LENDER), block=100, deadline_block=108) is None


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"preimageHash": bytes(32)}, "not the loan's H_L"),
        ({"amount": 10**16 - 1}, "locked 9999999999999999 wei"),
        ({"claimAddress": "0x" + "12" * 20}, "claimable by"),
        ({"refundAddress": "0x" + "12" * 20}, "refundable to"),
        ({"timelock": 50}, "times out at block 50"),
    ],
)
def test_each_way_a_lockup_can_differ_is_refused_with_what_the_borrower_did(
    overrides: dict[str, Any], says: str
) -> None:
    reason = _mismatch(_loan(), _lockup(**overrides), block=100, deadline_block=108)
    assert reason is not None
    assert says in reason


def test_a_strict_deadline_flavour_is_judged_by_its_own_deadline_block() -> None:
    # A contract whose acceptance deadline is one block earlier locks until that block.
    assert _mismatch(_loan(), _lockup(timelock=107), block=100, deadline_block=107) is None
