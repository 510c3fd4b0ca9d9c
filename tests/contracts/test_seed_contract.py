"""The seed flavour (SeedBtcCollateralLoan): the earlier prototype's documented semantics, flaws
included, which the backend must cope with on desks that run those contracts. Each test pins
one documented behaviour, so the backend's seed-flavour tests run against what was described."""

from __future__ import annotations

import hashlib

import pytest
from web3 import Web3

from chainwatch.evm.artifacts import LOAN_CONTRACT, SEED_LOAN_CONTRACT, load_artifact
from chainwatch.evm.driver import LoanStatus
from chainwatch.evm.errors import ContractRevert
from chainwatch.evm.flavour import (
    ContractFlavour,
    FlavourError,
    detect_flavour,
    resolve_flavour,
)
from tests.contracts.conftest import AMOUNT, BOND, FEE, Desk

pytestmark = pytest.mark.evm


def reverts(reason: str) -> pytest.RaisesExc[ContractRevert]:
    return pytest.raises(ContractRevert, match=reason)


def _mine_until_next_block_is(desk: Desk, block: int) -> None:
    """Mine so that the next transaction lands in `block`."""
    gap = block - desk.block() - 1
    assert gap >= 0
    if gap:
        desk.mine(gap)


def test_same_abi_as_ours_plus_the_emergency_withdrawal() -> None:
    ours = {
        (e["type"], e.get("name"), str(e.get("inputs")))
        for e in load_artifact(LOAN_CONTRACT)["abi"]
    }
    seed = {
        (e["type"], e.get("name"), str(e.get("inputs")))
        for e in load_artifact(SEED_LOAN_CONTRACT)["abi"]
    }
    # The seed has emergencyWithdraw, which ours leaves out; ours uses a reentrancy guard.
    assert {n for _, n, _ in seed - ours} == {"emergencyWithdraw"}
    assert {n for _, n, _ in ours - seed} == {"ReentrancyGuardReentrantCall"}


def test_flavour_is_detected_from_the_bytecode(desk: Desk, seed_desk: Desk, w3: Web3) -> None:
    assert detect_flavour(w3, desk.deployed.loan_address) == ContractFlavour.BTCLOAN
    assert detect_flavour(w3, seed_desk.deployed.loan_address) == ContractFlavour.SEED
    with pytest.raises(FlavourError, match="no contract code"):
        detect_flavour(w3, desk.lender.address)
    assert resolve_flavour(configured="auto", detected=ContractFlavour.SEED) == "seed"
    assert resolve_flavour(configured="seed", detected=ContractFlavour.SEED) == "seed"
    with pytest.raises(FlavourError, match="LOAN_CONTRACT_FLAVOUR is 'btcloan'"):
        resolve_flavour(configured="btcloan", detected=ContractFlavour.SEED)
    with pytest.raises(FlavourError, match="expected one of"):
        resolve_flavour(configured="newest", detected=ContractFlavour.SEED)


def test_ids_start_at_zero_and_one_loan_per_borrower_until_deleted(seed_desk: Desk) -> None:
    desk = seed_desk
    first = desk.request()
    assert first == 0
    assert desk.request(desk.other_borrower) == 1
    with reverts("borrower has active loan"):
        desk.request()
    desk.lender.extend_offer(first, preimage_hash_lender=desk.secrets.hash_lender)
    desk.mine(desk.params.t_borrower + 1)
    desk.lender.withdraw_offer(first)
    with reverts("borrower has active loan"):  # closed is not enough
        desk.request()
    with reverts("not borrower or lender"):
        desk.other_borrower.delete_loan(first)
    desk.lender.delete_loan(first)
    assert not desk.loan(first).exists
    assert desk.request() == 2


@pytest.mark.parametrize("late", [False, True])
def test_acceptance_is_strictly_before_offer_plus_t_b(seed_desk: Desk, late: bool) -> None:
    desk = seed_desk
    loan_id = desk.offered()
    deadline = desk.loan(loan_id).offer_block + desk.params.t_borrower
    if late:
        _mine_until_next_block_is(desk, deadline)
        with reverts("offer expired"):
            desk.borrower.accept_offer(loan_id, desk.secrets.preimage_borrower)
        with reverts("offer still open"):  # and the lender's withdrawal opens only after it
            desk.lender.withdraw_offer(loan_id)
    else:
        _mine_until_next_block_is(desk, deadline - 1)
        desk.borrower.accept_offer(loan_id, desk.secrets.preimage_borrower)
        assert desk.loan(loan_id).status == LoanStatus.ACTIVE


def test_live_loans_read_the_global_duration(seed_desk: Desk) -> None:
    desk = seed_desk
    loan_id = desk.active()
    activation = desk.loan(loan_id).activation_block
    old = desk.params
    doubled = type(old)(
        loan_duration=old.loan_duration * 2,
        t_borrower=old.t_borrower,
        t_btc_escrow=old.t_btc_escrow,
        t_lender=old.t_lender,
        t_btc_collateral=old.t_btc_collateral + old.loan_duration,
    )
    desk.lender.update_parameters(doubled)
    # The snapshot says D, but the contract reads the global 2D.
    assert desk.contracts.get_loan_parameters(loan_id).duration == old.loan_duration
    _mine_until_next_block_is(desk, activation + old.loan_duration + 1)
    with reverts("cannot mark defaulted yet"):
        desk.lender.mark_defaulted(loan_id)
    _mine_until_next_block_is(desk, activation + doubled.loan_duration)
    with reverts("cannot mark defaulted yet"):
        desk.lender.mark_defaulted(loan_id)
    with reverts("loan duration expired"):  # strict: activation + D is already too late
        desk.borrower.attempt_repayment(loan_id)
    desk.mine(1)
    lender_before = desk.balance(desk.lender.address)
    receipt = desk.lender.mark_defaulted(loan_id)
    assert desk.loan(loan_id).status == LoanStatus.DEFAULTED
    assert desk.balance(desk.lender.address) == lender_before + BOND - desk.gas(receipt)


def test_any_lender_hash_is_accepted_and_then_the_repayment_is_stuck(seed_desk: Desk) -> None:
    desk = seed_desk
    loan_id = desk.active()
    wrong = hashlib.sha256(b"not the lender's preimage").digest()
    desk.borrower.attempt_repayment(loan_id, preimage_hash_lender=wrong)
    assert desk.loan(loan_id).status == LoanStatus.REPAYMENT_IN_PROGRESS
    assert desk.loan(loan_id).preimage_hash_lender == desk.secrets.hash_lender  # unchanged
    with reverts("EtherSwap: no such swap"):
        desk.lender.accept_repayment(loan_id, desk.secrets.preimage_lender)
    # Nor can the borrower take it back: withdrawRepaymentAttempt never succeeds.
    desk.mine(desk.params.t_lender + 1)
    with reverts("lender preimage hash is set"):
        desk.borrower.withdraw_repayment(loan_id)


def test_repayment_pays_the_lender_the_amount_only(seed_desk: Desk) -> None:
    desk = seed_desk
    loan_id = desk.repaying()
    lender_before = desk.balance(desk.lender.address)
    contract_before = desk.balance(desk.deployed.loan_address)
    receipt = desk.lender.accept_repayment(loan_id, desk.secrets.preimage_lender)
    assert desk.loan(loan_id).status == LoanStatus.REPAID
    assert desk.balance(desk.lender.address) == lender_before + AMOUNT - desk.gas(receipt)
    # The bond stays behind.
    assert desk.balance(desk.deployed.loan_address) == contract_before == BOND


def test_withdrawn_offer_refunds_into_the_contract_and_emergency_takes_everything(
    seed_desk: Desk,
) -> None:
    desk = seed_desk
    loan_id = desk.offered()
    other = desk.request(desk.other_borrower)  # a second loan's fee is in the contract too
    desk.mine(desk.params.t_borrower + 1)
    lender_before = desk.balance(desk.lender.address)
    receipt = desk.lender.withdraw_offer(loan_id)
    assert desk.loan(loan_id).status == LoanStatus.REFUNDED_TO_LENDER
    assert desk.balance(desk.lender.address) == lender_before - desk.gas(receipt)
    held = desk.balance(desk.deployed.loan_address)
    assert held == AMOUNT + BOND + 2 * FEE
    assert desk.loan(other).status == LoanStatus.REQUESTED
    emergency = desk.contracts.w3.eth.contract(
        address=desk.deployed.loan_address, abi=load_artifact(SEED_LOAN_CONTRACT)["abi"]
    )
    lender_before = desk.balance(desk.lender.address)
    receipt = desk.lender.send(emergency.functions.emergencyWithdraw())
    assert desk.balance(desk.deployed.loan_address) == 0
    assert desk.balance(desk.lender.address) == lender_before + held - desk.gas(receipt)


def test_extend_offer_overwrites_both_hashes(seed_desk: Desk) -> None:
    desk = seed_desk
    loan_id = desk.request()
    desk.lender.associate_preimage_hash(loan_id, desk.secrets.hash_lender)
    other_b, other_l = b"\x33" * 32, b"\x44" * 32
    desk.lender.send(
        desk.contracts.loan.functions.extendLoanOffer(loan_id, other_b, other_l),
        value=AMOUNT + BOND,
    )
    state = desk.loan(loan_id)
    assert (state.preimage_hash_borrower, state.preimage_hash_lender) == (other_b, other_l)
