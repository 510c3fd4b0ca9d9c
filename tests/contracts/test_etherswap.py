"""EtherSwap on its own: an instance bound to an ordinary account, so every rule of the HTLC
can be exercised directly (in production only the loan contract is bound to it)."""

from __future__ import annotations

import hashlib

import pytest
from web3 import Web3
from web3.contract.contract import Contract

from chainwatch.evm.artifacts import ETHERSWAP_CONTRACT, load_artifact
from chainwatch.evm.driver import LenderActions
from chainwatch.evm.errors import ContractRevert
from tests.contracts.conftest import Desk

pytestmark = pytest.mark.evm

PREIMAGE = b"\x33" * 32
HASH = hashlib.sha256(PREIMAGE).digest()
AMOUNT = 7 * 10**15


def reverts(reason: str) -> pytest.RaisesExc[ContractRevert]:
    return pytest.raises(ContractRevert, match=f"reverted: {reason}$")


@pytest.fixture
def bound(desk: Desk) -> tuple[Contract, LenderActions]:
    """An EtherSwap whose loan contract is the `stranger` account."""
    artifact = load_artifact(ETHERSWAP_CONTRACT)
    factory = desk.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    receipt = desk.stranger.sender.send(factory.constructor(desk.stranger.address))
    address = Web3.to_checksum_address(str(receipt["contractAddress"]))
    swap = desk.w3.eth.contract(address=address, abi=artifact["abi"])
    return swap, desk.stranger


def test_lock_rules_and_event(desk: Desk, bound: tuple[Contract, LenderActions]) -> None:
    swap, owner = bound
    claimer = desk.borrower.address
    timelock = desk.block() + 10
    with reverts("EtherSwap: nothing to lock"):
        owner.sender.send(swap.functions.lock(HASH, claimer, timelock))
    with reverts("EtherSwap: empty preimage hash"):
        owner.sender.send(swap.functions.lock(bytes(32), claimer, timelock), value=AMOUNT)
    with reverts("EtherSwap: claim address is the zero address"):
        owner.sender.send(swap.functions.lock(HASH, "0x" + "00" * 20, timelock), value=AMOUNT)
    receipt = owner.sender.send(swap.functions.lock(HASH, claimer, timelock), value=AMOUNT)
    (event,) = swap.events.Lockup().process_receipt(receipt)
    assert event["args"] == {
        "preimageHash": HASH,
        "amount": AMOUNT,
        "claimAddress": claimer,
        "refundAddress": owner.address,
        "timelock": timelock,
    }
    key = swap.functions.hashValues(HASH, AMOUNT, claimer, owner.address, timelock).call()
    assert swap.functions.swaps(key).call() is True
    assert desk.balance(swap.address) == AMOUNT
    with reverts("EtherSwap: swap exists already"):
        owner.sender.send(swap.functions.lock(HASH, claimer, timelock), value=AMOUNT)


def test_claim_pays_the_claim_address(desk: Desk, bound: tuple[Contract, LenderActions]) -> None:
    swap, owner = bound
    claimer = desk.borrower.address
    timelock = desk.block() + 10
    owner.sender.send(swap.functions.lock(HASH, claimer, timelock), value=AMOUNT)
    claim = swap.functions.claim
    with reverts("EtherSwap: no such swap"):
        owner.sender.send(claim(b"\x34" * 32, AMOUNT, claimer, owner.address, timelock))
    with reverts("EtherSwap: no such swap"):
        owner.sender.send(claim(PREIMAGE, AMOUNT - 1, claimer, owner.address, timelock))
    before = desk.balance(claimer)
    receipt = owner.sender.send(claim(PREIMAGE, AMOUNT, claimer, owner.address, timelock))
    (event,) = swap.events.Claim().process_receipt(receipt)
    assert event["args"] == {"preimageHash": HASH, "preimage": PREIMAGE}
    assert desk.balance(claimer) == before + AMOUNT
    assert desk.balance(swap.address) == 0
    with reverts("EtherSwap: no such swap"):
        owner.sender.send(claim(PREIMAGE, AMOUNT, claimer, owner.address, timelock))


def test_refund_only_after_the_timelock(desk: Desk, bound: tuple[Contract, LenderActions]) -> None:
    swap, owner = bound
    claimer = desk.borrower.address
    timelock = desk.block() + 3
    owner.sender.send(swap.functions.lock(HASH, claimer, timelock), value=AMOUNT)
    refund = swap.functions.refund(HASH, AMOUNT, claimer, owner.address, timelock)
    desk.mine(timelock - desk.block() - 1)  # the next block is the timelock itself
    with reverts("EtherSwap: timelock not yet expired"):
        owner.sender.send(refund)
    desk.mine(1)
    with reverts("EtherSwap: no such swap"):
        owner.sender.send(swap.functions.refund(HASH, AMOUNT, owner.address, claimer, timelock))
    before = desk.balance(owner.address)
    receipt = owner.sender.send(refund)
    (event,) = swap.events.Refund().process_receipt(receipt)
    assert event["args"] == {"preimageHash": HASH}
    assert desk.balance(owner.address) == before + AMOUNT - desk.gas(receipt)
    with reverts("EtherSwap: no such swap"):
        owner.sender.send(refund)


def test_zero_loan_contract_is_refused(desk: Desk) -> None:
    artifact = load_artifact(ETHERSWAP_CONTRACT)
    factory = desk.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    with reverts("EtherSwap: loan contract is the zero address"):
        desk.stranger.sender.send(factory.constructor("0x" + "00" * 20))
