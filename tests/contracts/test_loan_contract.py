"""BtcCollateralLoan and EtherSwap, function by function: who may call it, each precondition
with its revert reason, the effect on state and balances, and the exact events."""

from __future__ import annotations

import pytest
from web3 import Web3
from web3.types import Wei

from btcloan.dev.contracts import TEST_LENDER_BTC_PUBKEY
from chainwatch.evm.driver import LoanStatus
from chainwatch.evm.errors import ContractRevert
from tests.contracts.conftest import (
    AMOUNT,
    BOND,
    BORROWER_BTC_PUBKEY,
    ESCROW_ADDRESS,
    ESCROW_TXID,
    FEE,
    Desk,
)

pytestmark = pytest.mark.evm

ZERO32 = bytes(32)
OTHER32 = b"\x99" * 32


def reverts(reason: str) -> pytest.RaisesExc[ContractRevert]:
    return pytest.raises(ContractRevert, match=f"reverted: {reason}$")


def raw_status(desk: Desk, loan_id: int) -> int:
    return int(desk.contracts.loan.functions.getLoan(loan_id).call()[4])


# --- deployment, administration ---------------------------------------------------------


def test_deployment_state_and_events(desk: Desk) -> None:
    loan = desk.contracts.loan.functions
    deployed = desk.deployed
    assert loan.owner().call() == deployed.lender_address
    assert loan.lenderBtcPubkey().call() == TEST_LENDER_BTC_PUBKEY
    assert loan.etherSwap().call() == deployed.etherswap_address
    assert desk.contracts.etherswap.functions.loanContract().call() == deployed.loan_address
    assert desk.contracts.timelock_parameters() == deployed.parameters
    assert loan.PROCESSING_FEE().call() == 10**15
    assert loan.MIN_LOAN_AMOUNT().call() == 5 * 10**15
    assert loan.LENDER_BOND_PERCENTAGE().call() == 10
    assert loan.ORIGIN_FEE_PERCENTAGE().call() == 1
    assert loan.loanInterestRate().call() == 0
    assert loan.getTotalLoans().call() == 0
    logs = desk.w3.eth.get_logs(
        {"fromBlock": deployed.block_number, "toBlock": "latest", "address": deployed.loan_address}
    )
    names = [e.name for e in desk.contracts.decode_logs(logs)]
    assert names == [
        "OwnershipTransferred",
        "LenderUpdated",
        "ParametersUpdated",
        "EtherSwapAddressSet",
    ]


def test_set_etherswap_address_rules(desk: Desk) -> None:
    lender = desk.lender
    with reverts("caller is not the lender"):
        desk.stranger.send(desk.contracts.loan.functions.setEtherSwapAddress(desk.stranger.address))
    with reverts("EtherSwap address already set"):
        lender.send(
            desk.contracts.loan.functions.setEtherSwapAddress(desk.deployed.etherswap_address)
        )

    # A second, unlinked loan contract: an offer cannot be made until EtherSwap is set.
    from chainwatch.evm.artifacts import ETHERSWAP_CONTRACT, LOAN_CONTRACT, load_artifact

    art = load_artifact(LOAN_CONTRACT)
    factory = desk.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    receipt = lender.sender.send(factory.constructor(TEST_LENDER_BTC_PUBKEY, 40, 5, 10, 5, 50))
    fresh = desk.w3.eth.contract(address=receipt["contractAddress"], abi=art["abi"])
    with reverts("EtherSwap address has no code"):
        lender.send(fresh.functions.setEtherSwapAddress(desk.stranger.address))
    with reverts("EtherSwap serves another loan contract"):
        lender.send(fresh.functions.setEtherSwapAddress(desk.deployed.etherswap_address))
    desk.borrower.send(
        fresh.functions.requestLoan(
            AMOUNT, ESCROW_ADDRESS, BORROWER_BTC_PUBKEY, desk.secrets.hash_borrower, ZERO32, 0
        ),
        value=FEE,
    )
    with reverts("EtherSwap address not set"):
        lender.send(
            fresh.functions.extendLoanOffer(
                1, desk.secrets.hash_borrower, desk.secrets.hash_lender
            ),
            value=AMOUNT + BOND,
        )
    swap_art = load_artifact(ETHERSWAP_CONTRACT)
    swap_factory = desk.w3.eth.contract(abi=swap_art["abi"], bytecode=swap_art["bytecode"])
    swap = lender.sender.send(swap_factory.constructor(fresh.address))["contractAddress"]
    linked = lender.send(fresh.functions.setEtherSwapAddress(swap))
    assert fresh.functions.etherSwap().call() == swap
    (event,) = fresh.events.EtherSwapAddressSet().process_receipt(linked)
    assert event["args"] == {"etherSwapAddress": swap}


def test_update_lender_btc_pubkey(desk: Desk) -> None:
    new_key = "ab" * 32
    with reverts("caller is not the lender"):
        desk.stranger.send(desk.contracts.loan.functions.updateLenderBtcPubkey(new_key))
    with reverts("btcPubkey must be 64 characters"):
        desk.lender.send(desk.contracts.loan.functions.updateLenderBtcPubkey("ab" * 31))
    receipt = desk.lender.update_btc_pubkey(new_key)
    assert desk.contracts.loan.functions.lenderBtcPubkey().call() == new_key
    assert desk.events(receipt) == [
        ("LenderUpdated", {"lender": desk.lender.address, "btcPubkey": new_key})
    ]


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ((0, 5, 10, 5, 50), "parameters must be positive"),
        ((40, 0, 10, 5, 50), "parameters must be positive"),
        ((40, 5, 10, 0, 50), "parameters must be positive"),
        ((40, 5, 5, 5, 50), "t_0 must exceed t_B"),
        ((40, 5, 10, 5, 45), "t_1 must exceed t_L \\+ D"),
    ],
)
def test_update_parameters_rejects_bad_timelocks(
    desk: Desk, values: tuple[int, ...], reason: str
) -> None:
    with reverts(reason):
        desk.lender.send(desk.contracts.loan.functions.updateParameters(*values))


def test_update_parameters_applies_to_new_loans_only(desk: Desk) -> None:
    from chainwatch.evm.deploy import TimelockParameters

    with reverts("caller is not the lender"):
        desk.stranger.send(desk.contracts.loan.functions.updateParameters(60, 7, 20, 8, 100))
    old_loan = desk.offered()
    new = TimelockParameters(
        loan_duration=60, t_borrower=100, t_btc_escrow=200, t_lender=8, t_btc_collateral=100
    )
    receipt = desk.lender.update_parameters(new)
    assert desk.contracts.timelock_parameters() == new
    assert desk.events(receipt) == [
        (
            "ParametersUpdated",
            {
                "loanDuration": 60,
                "timelockLoanReq": 100,
                "timelockBtcEscrow": 200,
                "timelockRepaymentAccept": 8,
                "timelockBtcCollateral": 100,
            },
        )
    ]
    # The live loan keeps its snapshot: its offer expires after the old t_B (5), not 100.
    assert desk.contracts.get_loan_parameters(old_loan).t_borrower == desk.params.t_borrower
    desk.mine(desk.params.t_borrower)
    desk.lender.withdraw_offer(old_loan)
    assert desk.loan(old_loan).status is LoanStatus.REFUNDED_TO_LENDER
    new_loan = desk.request(desk.other_borrower)
    terms = desk.contracts.get_loan_parameters(new_loan)
    assert (terms.duration, terms.t_borrower, terms.t_lender) == (60, 100, 8)


def test_ownership(desk: Desk) -> None:
    loan = desk.contracts.loan.functions
    with reverts(f"OwnableUnauthorizedAccount\\({desk.stranger.address.lower()}\\)"):
        desk.stranger.send(loan.transferOwnership(desk.stranger.address))
    with reverts(f"OwnableUnauthorizedAccount\\({desk.stranger.address.lower()}\\)"):
        desk.stranger.send(loan.renounceOwnership())
    with reverts("renouncing ownership is disabled"):
        desk.lender.send(loan.renounceOwnership())
    # A new lender receives what the contract owes the lender, even for older loans.
    loan_id = desk.offered()
    receipt = desk.lender.send(loan.transferOwnership(desk.stranger.address))
    assert desk.events(receipt) == [
        (
            "OwnershipTransferred",
            {"previousOwner": desk.lender.address, "newOwner": desk.stranger.address},
        )
    ]
    desk.mine(desk.params.t_borrower)
    with reverts("caller is not the lender"):
        desk.lender.withdraw_offer(loan_id)
    before = desk.balance(desk.stranger.address)
    withdrawn = desk.stranger.withdraw_offer(loan_id)
    assert desk.balance(desk.stranger.address) == before + AMOUNT + BOND + FEE - desk.gas(withdrawn)


def test_plain_payments_to_the_loan_contract_are_refused(desk: Desk) -> None:
    from btcloan.dev.localnodes import ANVIL_DEFAULT_KEYS
    from chainwatch.evm.sender import parse_private_key

    account = parse_private_key(ANVIL_DEFAULT_KEYS[1])
    with pytest.raises(Exception, match="only EtherSwap pays this contract"):
        desk.w3.eth.estimate_gas(
            {"from": account.address, "to": desk.deployed.loan_address, "value": Wei(1)}
        )


# --- requestLoan --------------------------------------------------------------------------


def _request(desk: Desk, **changes: object) -> object:
    args: dict[str, object] = {
        "amount": AMOUNT,
        "btcAddress": ESCROW_ADDRESS,
        "btcPubkey": BORROWER_BTC_PUBKEY,
        "hash": desk.secrets.hash_borrower,
        "txid": bytes.fromhex(ESCROW_TXID),
        "vout": 1,
        "value": FEE,
    }
    args.update(changes)
    value = args.pop("value")
    return desk.borrower.send(
        desk.contracts.loan.functions.requestLoan(*args.values()),
        value=int(value),  # type: ignore[call-overload]
    )


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"value": FEE - 1}, "value must equal the processing fee"),
        ({"value": FEE + 1}, "value must equal the processing fee"),
        ({"amount": 5 * 10**15 - 1}, "amount below the minimum"),
        ({"btcAddress": "b" * 61}, "btcAddress must be 62 to 64 characters"),
        ({"btcAddress": "b" * 65}, "btcAddress must be 62 to 64 characters"),
        ({"btcPubkey": "a" * 63}, "btcPubkey must be 64 characters"),
        ({"hash": ZERO32}, "empty borrower preimage hash"),
    ],
)
def test_request_loan_preconditions(desk: Desk, changes: dict[str, object], reason: str) -> None:
    with reverts(reason):
        _request(desk, **changes)
    assert desk.contracts.total_loans() == 0


def test_request_loan_effects_and_event(desk: Desk) -> None:
    before = desk.balances()
    result = desk.borrower.request_loan(
        amount_wei=AMOUNT,
        btc_address=ESCROW_ADDRESS + "qq",
        btc_pubkey=BORROWER_BTC_PUBKEY,
        preimage_hash=desk.secrets.hash_borrower,
        escrow_txid=ESCROW_TXID,
        escrow_vout=7,
    )
    assert result.loan_id == 1
    assert desk.events(result.receipt) == [
        (
            "LoanRequested",
            {
                "loanId": 1,
                "borrower": desk.borrower.address,
                "amount": AMOUNT,
                "btcAddress": ESCROW_ADDRESS + "qq",
            },
        )
    ]
    state = desk.loan(1)
    assert state.borrower_address == desk.borrower.address
    assert state.borrower_btc_pubkey == BORROWER_BTC_PUBKEY
    assert (state.amount, state.bond_amount, state.status) == (AMOUNT, 0, LoanStatus.REQUESTED)
    assert raw_status(desk, 1) == 0
    assert state.preimage_hash_borrower == desk.secrets.hash_borrower
    assert state.preimage_hash_lender == ZERO32
    assert (state.escrow_txid_hex, state.escrow_vout) == (ESCROW_TXID, 7)
    assert (state.offer_block, state.activation_block, state.repayment_block) == (0, 0, 0)
    terms = desk.contracts.get_loan_parameters(1)
    assert (terms.interest_rate, terms.processing_fee) == (0, FEE)
    assert (terms.duration, terms.t_borrower, terms.t_lender) == (40, 5, 5)
    assert desk.contracts.total_loans() == 1
    assert desk.contracts.loan_id_of(desk.borrower.address) == 1
    assert desk.contracts.loan.functions.borrowerToLoanId(desk.borrower.address).call() == 1
    after = desk.balances()
    assert after["borrower"] == before["borrower"] - FEE - desk.gas(result.receipt)
    assert after["loan"] == before["loan"] + FEE
    # One open loan per borrower; another borrower is independent.
    with reverts("borrower has an open loan"):
        _request(desk)
    assert desk.request(desk.other_borrower) == 2


# --- associateLenderPreimageHash ------------------------------------------------------------


def test_associate_lender_preimage_hash(desk: Desk) -> None:
    loan_id = desk.request()
    hash_l = desk.secrets.hash_lender
    with reverts("caller is not the lender"):
        desk.stranger.associate_preimage_hash(loan_id, hash_l)
    with reverts("loan does not exist"):
        desk.lender.associate_preimage_hash(99, hash_l)
    with reverts("empty lender preimage hash"):
        desk.lender.associate_preimage_hash(loan_id, ZERO32)
    receipt = desk.lender.associate_preimage_hash(loan_id, hash_l)
    assert desk.events(receipt) == [
        (
            "LenderPreimageHashAssociated",
            {"loanId": loan_id, "lender": desk.lender.address, "preimageHashLender": hash_l},
        )
    ]
    assert desk.loan(loan_id).preimage_hash_lender == hash_l
    with reverts("lender preimage hash already set"):
        desk.lender.associate_preimage_hash(loan_id, OTHER32)
    desk.lender.extend_offer(loan_id, preimage_hash_lender=hash_l)
    with reverts("loan is not in status Requested"):
        desk.lender.associate_preimage_hash(loan_id, OTHER32)


# --- extendLoanOffer ------------------------------------------------------------------------


def test_extend_loan_offer_preconditions(desk: Desk) -> None:
    loan_id = desk.request()
    offer = desk.contracts.loan.functions.extendLoanOffer
    hash_b, hash_l = desk.secrets.hash_borrower, desk.secrets.hash_lender
    with reverts("caller is not the lender"):
        desk.stranger.send(offer(loan_id, hash_b, hash_l), value=AMOUNT + BOND)
    with reverts("loan does not exist"):
        desk.lender.send(offer(42, hash_b, hash_l), value=AMOUNT + BOND)
    with reverts("borrower preimage hash mismatch"):
        desk.lender.send(offer(loan_id, OTHER32, hash_l), value=AMOUNT + BOND)
    with reverts("empty lender preimage hash"):
        desk.lender.send(offer(loan_id, hash_b, ZERO32), value=AMOUNT + BOND)
    with reverts("value must equal amount plus bond"):
        desk.lender.send(offer(loan_id, hash_b, hash_l), value=AMOUNT)
    with reverts("value must equal amount plus bond"):
        desk.lender.send(offer(loan_id, hash_b, hash_l), value=AMOUNT + BOND + 1)
    # A fixed H_L cannot be changed by the offer.
    desk.lender.associate_preimage_hash(loan_id, hash_l)
    with reverts("lender preimage hash mismatch"):
        desk.lender.send(offer(loan_id, hash_b, OTHER32), value=AMOUNT + BOND)
    desk.lender.send(offer(loan_id, hash_b, hash_l), value=AMOUNT + BOND)
    with reverts("loan is not in status Requested"):
        desk.lender.send(offer(loan_id, hash_b, hash_l), value=AMOUNT + BOND)


def test_extend_loan_offer_effects_and_events(desk: Desk) -> None:
    loan_id = desk.request()
    before = desk.balances()
    receipt = desk.lender.extend_offer(loan_id, preimage_hash_lender=desk.secrets.hash_lender)
    block = int(receipt["blockNumber"])
    deadline = block + desk.params.t_borrower
    assert desk.events(receipt) == [
        (
            "LenderPreimageHashAssociated",
            {
                "loanId": loan_id,
                "lender": desk.lender.address,
                "preimageHashLender": desk.secrets.hash_lender,
            },
        ),
        (
            "LoanOffered",
            {
                "loanId": loan_id,
                "lender": desk.lender.address,
                "amount": AMOUNT,
                "bondAmount": BOND,
            },
        ),
        (
            "Lockup",
            {
                "preimageHash": desk.secrets.hash_borrower,
                "amount": AMOUNT,
                "claimAddress": desk.borrower.address,
                "refundAddress": desk.deployed.loan_address,
                "timelock": deadline,
            },
        ),
    ]
    state = desk.loan(loan_id)
    assert (state.status, state.bond_amount, state.offer_block) == (LoanStatus.OFFERED, BOND, block)
    assert raw_status(desk, loan_id) == 1
    assert state.preimage_hash_lender == desk.secrets.hash_lender
    key = desk.contracts.etherswap.functions.hashValues(
        desk.secrets.hash_borrower,
        AMOUNT,
        desk.borrower.address,
        desk.deployed.loan_address,
        deadline,
    ).call()
    assert desk.contracts.etherswap.functions.swaps(key).call() is True
    after = desk.balances()
    assert after["lender"] == before["lender"] - AMOUNT - BOND - desk.gas(receipt)
    assert after["swap"] == before["swap"] + AMOUNT
    assert after["loan"] == before["loan"] + BOND


# --- acceptLoanOffer --------------------------------------------------------------------------


def test_accept_loan_offer_preconditions(desk: Desk) -> None:
    loan_id = desk.request()
    preimage = desk.secrets.preimage_borrower
    with reverts("loan is not in status Offered"):
        desk.borrower.accept_offer(loan_id, preimage)
    desk.lender.extend_offer(loan_id, preimage_hash_lender=desk.secrets.hash_lender)
    with reverts("caller is not the borrower"):
        desk.other_borrower.accept_offer(loan_id, preimage)
    with reverts("wrong borrower preimage"):
        desk.borrower.accept_offer(loan_id, OTHER32)
    with reverts("loan does not exist"):
        desk.borrower.accept_offer(loan_id + 1, preimage)
    desk.mine(desk.params.t_borrower)  # the next block is past offer + t_B
    with reverts("offer has expired"):
        desk.borrower.accept_offer(loan_id, preimage)


def test_accept_loan_offer_on_the_last_block(desk: Desk) -> None:
    loan_id = desk.offered()
    offer_block = desk.loan(loan_id).offer_block
    desk.mine(desk.params.t_borrower - 1)  # the acceptance lands in block offer + t_B
    before = desk.balances()
    receipt = desk.borrower.accept_offer(loan_id, desk.secrets.preimage_borrower)
    assert int(receipt["blockNumber"]) == offer_block + desk.params.t_borrower
    assert desk.events(receipt) == [
        (
            "LoanActivated",
            {
                "loanId": loan_id,
                "borrower": desk.borrower.address,
                "preimageBorrower": desk.secrets.preimage_borrower,
            },
        ),
        (
            "Claim",
            {
                "preimageHash": desk.secrets.hash_borrower,
                "preimage": desk.secrets.preimage_borrower,
            },
        ),
    ]
    state = desk.loan(loan_id)
    assert (state.status, state.activation_block) == (LoanStatus.ACTIVE, receipt["blockNumber"])
    assert raw_status(desk, loan_id) == 2
    after = desk.balances()
    assert after["borrower"] == before["borrower"] + AMOUNT + FEE - desk.gas(receipt)
    assert after["swap"] == before["swap"] - AMOUNT
    assert after["loan"] == before["loan"] - FEE  # the bond stays
    assert after["lender"] == before["lender"]


# --- withdrawLoanOffer ------------------------------------------------------------------------


def test_withdraw_loan_offer(desk: Desk) -> None:
    loan_id = desk.offered()
    with reverts("caller is not the lender"):
        desk.stranger.withdraw_offer(loan_id)
    desk.mine(desk.params.t_borrower - 1)  # the next block is offer + t_B: still the borrower's
    with reverts("offer is still open to the borrower"):
        desk.lender.withdraw_offer(loan_id)
    desk.mine(1)
    before = desk.balances()
    receipt = desk.lender.withdraw_offer(loan_id)
    assert desk.events(receipt) == [
        ("LoanRefundedToLender", {"loanId": loan_id, "lender": desk.lender.address}),
        ("Refund", {"preimageHash": desk.secrets.hash_borrower}),
    ]
    assert desk.loan(loan_id).status is LoanStatus.REFUNDED_TO_LENDER
    assert raw_status(desk, loan_id) == 3
    after = desk.balances()
    assert after["lender"] == before["lender"] + AMOUNT + BOND + FEE - desk.gas(receipt)
    assert (after["swap"], after["loan"]) == (before["swap"] - AMOUNT, before["loan"] - BOND - FEE)
    with reverts("loan is not in status Offered"):
        desk.lender.withdraw_offer(loan_id)
    with reverts("loan is not in status Offered"):
        desk.borrower.accept_offer(loan_id, desk.secrets.preimage_borrower)


# --- attemptRepayment -------------------------------------------------------------------------


def test_attempt_repayment_preconditions(desk: Desk) -> None:
    loan_id = desk.offered()
    repay = desk.contracts.loan.functions.attemptRepayment
    hash_l = desk.secrets.hash_lender
    with reverts("loan is not in status Active"):
        desk.borrower.send(repay(loan_id, hash_l), value=AMOUNT)
    desk.borrower.accept_offer(loan_id, desk.secrets.preimage_borrower)
    with reverts("lender preimage hash mismatch"):
        desk.borrower.send(repay(loan_id, OTHER32), value=AMOUNT)
    with reverts("value must equal the loan amount"):
        desk.borrower.send(repay(loan_id, hash_l), value=AMOUNT - 1)
    with reverts("loan does not exist"):
        desk.borrower.send(repay(loan_id + 1, hash_l), value=AMOUNT)
    desk.mine(desk.params.loan_duration)  # the next block is past activation + D
    with reverts("loan term is over"):
        desk.borrower.send(repay(loan_id, hash_l), value=AMOUNT)


def test_anyone_may_repay_under_the_stored_hash(desk: Desk) -> None:
    loan_id = desk.active()
    activation = desk.loan(loan_id).activation_block
    desk.mine(desk.params.loan_duration - 1)  # the repayment lands on the term's last block
    before = desk.balances()
    payer_before = desk.balance(desk.stranger.address)
    receipt = desk.stranger.send(
        desk.contracts.loan.functions.attemptRepayment(loan_id, desk.secrets.hash_lender),
        value=AMOUNT,
    )
    block = int(receipt["blockNumber"])
    assert block == activation + desk.params.loan_duration
    assert desk.events(receipt) == [
        (
            "RepaymentAttempted",
            {"loanId": loan_id, "borrower": desk.stranger.address, "amount": AMOUNT},
        ),
        (
            "Lockup",
            {
                "preimageHash": desk.secrets.hash_lender,
                "amount": AMOUNT,
                "claimAddress": desk.deployed.loan_address,
                "refundAddress": desk.deployed.loan_address,
                "timelock": block + desk.params.t_lender,
            },
        ),
    ]
    state = desk.loan(loan_id)
    assert (state.status, state.repayment_block) == (LoanStatus.REPAYMENT_IN_PROGRESS, block)
    assert raw_status(desk, loan_id) == 4
    after = desk.balances()
    assert after["swap"] == before["swap"] + AMOUNT
    assert after["loan"] == before["loan"]
    assert desk.balance(desk.stranger.address) == payer_before - AMOUNT - desk.gas(receipt)


# --- acceptLoanRepayment ----------------------------------------------------------------------


def test_accept_loan_repayment_preconditions(desk: Desk) -> None:
    loan_id = desk.active()
    preimage = desk.secrets.preimage_lender
    with reverts("loan is not in status RepaymentInProgress"):
        desk.lender.accept_repayment(loan_id, preimage)
    desk.borrower.attempt_repayment(loan_id)
    with reverts("caller is not the lender"):
        desk.stranger.accept_repayment(loan_id, preimage)
    with reverts("wrong lender preimage"):
        desk.lender.accept_repayment(loan_id, OTHER32)
    desk.mine(desk.params.t_lender)  # the next block is past repayment + t_L
    with reverts("repayment acceptance has expired"):
        desk.lender.accept_repayment(loan_id, preimage)


def test_accept_loan_repayment_on_the_last_block(desk: Desk) -> None:
    loan_id = desk.repaying()
    desk.mine(desk.params.t_lender - 1)
    before = desk.balances()
    receipt = desk.lender.accept_repayment(loan_id, desk.secrets.preimage_lender)
    assert int(receipt["blockNumber"]) == desk.loan(loan_id).repayment_block + desk.params.t_lender
    assert desk.events(receipt) == [
        (
            "RepaymentAccepted",
            {
                "loanId": loan_id,
                "lender": desk.lender.address,
                "preimageLender": desk.secrets.preimage_lender,
            },
        ),
        (
            "Claim",
            {"preimageHash": desk.secrets.hash_lender, "preimage": desk.secrets.preimage_lender},
        ),
    ]
    assert desk.loan(loan_id).status is LoanStatus.REPAID
    assert raw_status(desk, loan_id) == 5
    after = desk.balances()
    assert after["lender"] == before["lender"] + AMOUNT + BOND - desk.gas(receipt)
    assert (after["swap"], after["loan"]) == (before["swap"] - AMOUNT, before["loan"] - BOND)
    assert after["borrower"] == before["borrower"]


# --- withdrawRepaymentAttempt -----------------------------------------------------------------


def test_withdraw_repayment_attempt(desk: Desk) -> None:
    loan_id = desk.active()
    with reverts("loan is not in status RepaymentInProgress"):
        desk.borrower.withdraw_repayment(loan_id)
    desk.borrower.attempt_repayment(loan_id)
    desk.mine(desk.params.t_lender - 1)  # the next block is repayment + t_L: the lender's
    with reverts("lender may still accept the repayment"):
        desk.borrower.withdraw_repayment(loan_id)
    desk.mine(1)
    with reverts("caller is not the borrower"):
        desk.other_borrower.withdraw_repayment(loan_id)
    before = desk.balances()
    receipt = desk.borrower.withdraw_repayment(loan_id)
    assert desk.events(receipt) == [
        (
            "RepaymentRefundedToBorrowerWithBond",
            {"loanId": loan_id, "borrower": desk.borrower.address, "bondAmount": BOND},
        ),
        ("Refund", {"preimageHash": desk.secrets.hash_lender}),
    ]
    assert desk.loan(loan_id).status is LoanStatus.REFUNDED_TO_BORROWER
    assert raw_status(desk, loan_id) == 6
    after = desk.balances()
    assert after["borrower"] == before["borrower"] + AMOUNT + BOND - desk.gas(receipt)
    assert (after["swap"], after["loan"]) == (before["swap"] - AMOUNT, before["loan"] - BOND)
    with reverts("loan is not in status RepaymentInProgress"):
        desk.lender.accept_repayment(loan_id, desk.secrets.preimage_lender)


# --- markAsDefaulted --------------------------------------------------------------------------


def test_mark_as_defaulted(desk: Desk) -> None:
    loan_id = desk.offered()
    with reverts("loan is not in status Active"):
        desk.lender.mark_defaulted(loan_id)
    desk.borrower.accept_offer(loan_id, desk.secrets.preimage_borrower)
    desk.mine(desk.params.loan_duration - 1)  # the next block is the term's last
    with reverts("loan term is not over"):
        desk.lender.mark_defaulted(loan_id)
    desk.mine(1)
    with reverts("caller is not the lender"):
        desk.stranger.mark_defaulted(loan_id)
    before = desk.balances()
    receipt = desk.lender.mark_defaulted(loan_id)
    assert desk.events(receipt) == [
        ("LoanDefaulted", {"loanId": loan_id, "lender": desk.lender.address, "bondAmount": BOND}),
    ]
    assert desk.loan(loan_id).status is LoanStatus.DEFAULTED
    assert raw_status(desk, loan_id) == 7
    after = desk.balances()
    assert after["lender"] == before["lender"] + BOND - desk.gas(receipt)
    assert after["loan"] == before["loan"] - BOND
    with reverts("loan is not in status Active"):
        desk.borrower.attempt_repayment(loan_id)


# --- deleteCompletedLoan ----------------------------------------------------------------------


def test_delete_completed_loan(desk: Desk) -> None:
    loan_id = desk.repaying()
    with reverts("loan is not completed"):
        desk.borrower.delete_loan(loan_id)
    desk.lender.accept_repayment(loan_id, desk.secrets.preimage_lender)
    with reverts("caller is neither borrower nor lender"):
        desk.stranger.delete_loan(loan_id)
    with reverts("loan does not exist"):
        desk.borrower.delete_loan(loan_id + 1)
    receipt = desk.borrower.delete_loan(loan_id)
    assert desk.events(receipt) == [
        ("LoanDeleted", {"loanId": loan_id, "borrower": desk.borrower.address})
    ]
    state = desk.loan(loan_id)
    assert not state.exists
    assert (state.amount, state.bond_amount, state.preimage_hash_borrower) == (0, 0, ZERO32)
    assert desk.contracts.get_loan_parameters(loan_id).processing_fee == 0
    assert desk.contracts.loan_id_of(desk.borrower.address) == 0
    assert desk.contracts.total_loans() == 1  # ids are never reused
    with reverts("loan does not exist"):
        desk.lender.delete_loan(loan_id)


def test_lender_may_delete_and_a_later_loan_keeps_its_index(desk: Desk) -> None:
    first = desk.offered()
    desk.mine(desk.params.t_borrower)
    desk.lender.withdraw_offer(first)
    second = desk.request()  # a completed loan does not block a new request
    assert desk.contracts.loan_id_of(desk.borrower.address) == second
    receipt = desk.lender.delete_loan(first)
    assert desk.events(receipt) == [
        ("LoanDeleted", {"loanId": first, "borrower": desk.borrower.address})
    ]
    assert desk.contracts.loan_id_of(desk.borrower.address) == second


# --- EtherSwap --------------------------------------------------------------------------------


def test_etherswap_serves_only_the_loan_contract(desk: Desk) -> None:
    swap = desk.contracts.etherswap.functions
    me = desk.stranger.address
    hash_b = desk.secrets.hash_borrower
    calls = [
        (swap.lock(hash_b, me, 10), 1),
        (swap.claim(desk.secrets.preimage_borrower, 1, me, me, 10), 0),
        (swap.refund(hash_b, 1, me, me, 0), 0),
    ]
    for call, value in calls:
        with reverts("EtherSwap: caller is not the loan contract"):
            desk.stranger.sender.send(call, value=value)


def test_etherswap_key_is_keccak_of_the_packed_values(desk: Desk) -> None:
    hash_b = desk.secrets.hash_borrower
    claim, refund = desk.borrower.address, desk.deployed.loan_address
    packed = (
        hash_b
        + AMOUNT.to_bytes(32, "big")
        + bytes.fromhex(claim[2:])
        + bytes.fromhex(refund[2:])
        + (123).to_bytes(32, "big")
    )
    key = desk.contracts.etherswap.functions.hashValues(hash_b, AMOUNT, claim, refund, 123).call()
    assert key == Web3.keccak(packed)
