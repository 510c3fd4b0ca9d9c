"""Whole loans on real nodes, the backend acting as the lender and the test as the borrower:
every path of PROTOCOL.md to its end, and every offer refusal with its recorded reason."""

from __future__ import annotations

import pytest

import vaultero
from btcloan.models import Alert
from chainwatch.evm.errors import ContractRevert
from chainwatch.evm.flavour import ContractFlavour
from loans.accounting import PROCESSING_FEE_WEI
from loans.models import AuditEntry, BitcoinStage, Loan, LoanStatus
from loans.selectors import loan_next_action
from loans.services.accounting import loan_accounting
from loans.services.quote import escrow_quote
from tests.integration.conftest import Borrower, Desk, known

pytestmark = [pytest.mark.evm, pytest.mark.bitcoin_node, pytest.mark.slow]


@pytest.fixture(params=list(ContractFlavour))
def flavour(request: pytest.FixtureRequest) -> ContractFlavour:
    """Every scenario on our contract and on the seed's (chainwatch.evm.flavour)."""
    return ContractFlavour(request.param)


def offered(desk: Desk, borrower: Borrower, **request: object) -> int:
    """A loan requested, escrow funded and confirmed, TX_1 pre-signed, and offered."""
    onchain_id = desk.request(borrower, **request)  # type: ignore[arg-type]
    desk.until(lambda: desk.loan(onchain_id).collateral_lock_feerate is not None)
    desk.presign(borrower, onchain_id)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.OFFERED)
    return onchain_id


def activated(desk: Desk, borrower: Borrower) -> int:
    onchain_id = offered(desk, borrower)
    accepted_and_locked(desk, borrower, onchain_id)
    return onchain_id


def accepted_and_locked(desk: Desk, borrower: Borrower, onchain_id: int) -> None:
    """The borrower accepts the offer; the loan is active and TX_1 confirmed."""
    borrower.actions.accept_offer(onchain_id, borrower.preimage)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.ACTIVE)
    desk.until(
        lambda: desk.loan(onchain_id).bitcoin_stage == BitcoinStage.COLLATERAL_CONFIRMED,
        evm=0,
        btc=1,
    )


def test_repaid_and_released(desk: Desk, flavour: str):
    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    loan = desk.loan(onchain_id)
    # TX_1 is on chain: the collateral output holds the loan plus the deposit's excess.
    collateral = desk.node.rpc("gettxout", loan.collateral_txid, 1)
    assert collateral is not None
    assert known(loan.collateral_value_sats) >= loan.loan_sats

    borrower.actions.attempt_repayment(onchain_id)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REPAID)

    # The borrower reads P_L from the chain (RepaymentAccepted) and releases the collateral.
    preimage_lender = desk.revealed_lender_preimage(onchain_id)
    loan = desk.loan(onchain_id)
    desk.send_btc(borrower.release(loan, preimage_lender))
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.CLOSED, evm=0, btc=1)
    loan = desk.loan(onchain_id)
    assert loan.bitcoin_stage == BitcoinStage.RELEASED
    statuses = list(
        AuditEntry.objects.filter(loan=loan, field="status", applied=True).values_list(
            "to_value", flat=True
        )
    )
    assert statuses == ["offered", "active", "repayment_in_progress", "repaid", "closed"]
    # The seed's contract pays the lender back the amount only: the bond stays in it.
    bond = known_wei(loan.bond_wei)
    stranded = bond if flavour == ContractFlavour.SEED else 0
    assert loan_accounting(loan).stranded_wei == stranded
    assert _balance(desk, desk.deployed.loan_address) == stranded
    if stranded:
        assert _stranded_alert(loan).severity == "critical"


def test_the_same_borrower_borrows_again_after_a_closed_loan(desk: Desk, flavour: str):
    borrower = desk.borrower()
    first = activated(desk, borrower)
    # The seed's contract refuses a second request while the first loan exists on it.
    if flavour == ContractFlavour.SEED:
        with pytest.raises(ContractRevert, match="borrower has active loan"):
            desk.request(borrower)
    borrower.actions.attempt_repayment(first)
    desk.until(lambda: desk.loan(first).status == LoanStatus.REPAID)
    desk.send_btc(borrower.release(desk.loan(first), desk.revealed_lender_preimage(first)))
    desk.until(lambda: desk.loan(first).status == LoanStatus.CLOSED, evm=0, btc=1)
    _deleted_on_seed_only(desk, first, flavour)
    # Same EVM account, a fresh preimage for the new escrow.
    borrower.preimage = bytes(reversed(borrower.preimage))
    second = offered(desk, borrower)
    assert second != first
    assert desk.loan(second).borrower_address == desk.loan(first).borrower_address


def _balance(desk: Desk, address: str) -> int:
    return int(desk.w3.eth.get_balance(desk.w3.to_checksum_address(address)))


def test_defaulted_and_swept_after_t1(desk: Desk):
    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    # Nobody repays: once activation + D passes the watchdog marks the default.
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.DEFAULTED, evm=5)
    loan = desk.loan(onchain_id)
    sweep_opens = known(loan.collateral_confirmed_height) + loan.collateral_csv_blocks
    # The sweep is signed at once but the node refuses it until t1_btc has matured.
    assert desk.btc_height() + 1 < sweep_opens
    assert loan.bitcoin_stage == BitcoinStage.COLLATERAL_CONFIRMED
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.CLOSED, evm=0, btc=5)
    loan = desk.loan(onchain_id)
    assert loan.bitcoin_stage == BitcoinStage.SWEPT
    sweep = desk.node.rpc("getrawtransaction", _spender(loan.collateral_txid), True)
    assert _block_height_of(desk, sweep) >= sweep_opens


def _spender(txid: str) -> str:
    from bitcoin.models import ObservedSpend

    return ObservedSpend.objects.get(watched__txid=txid).txid


def _block_height_of(desk: Desk, tx: dict) -> int:
    return int(desk.node.rpc("getblockheader", tx["blockhash"])["height"])


def test_offer_not_accepted_is_withdrawn_and_the_borrower_exits_after_t0(desk: Desk, flavour: str):
    borrower = desk.borrower()
    lender = desk.deployed.lender_address
    onchain_id = offered(desk, borrower)
    before = _balance(desk, lender)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REFUNDED_TO_LENDER, evm=3)
    loan = desk.loan(onchain_id)
    amount, bond = int(loan.amount_wei), int(known_wei(loan.bond_wei))
    if flavour == ContractFlavour.SEED:
        # The seed's contract refunds into itself: nothing reaches the lender, the accounting
        # says so and an operator is alerted (the runbook's "money stranded" entry).
        assert _balance(desk, lender) < before
        stranded = amount + bond + PROCESSING_FEE_WEI
        assert _balance(desk, desk.deployed.loan_address) == stranded
        assert loan_accounting(loan).stranded_wei == stranded
        assert _stranded_alert(loan).details["stranded_wei"] == str(stranded)
    else:
        # The withdrawn offer and the bond came back to the lender (less gas).
        assert _balance(desk, lender) > before + amount
        assert loan_accounting(loan).stranded_wei == 0
        assert not Alert.objects.filter(key=f"loan:{loan.pk}:money_stranded").exists()
    # The borrower takes the escrow back once t0_btc has passed since its confirmation.
    exit_opens = known(loan.escrow_confirmed_height) + loan.escrow_csv_blocks
    desk.mine_btc(max(0, exit_opens - desk.btc_height() - 1))
    desk.send_btc(borrower.exit(loan))
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.CLOSED, evm=0, btc=1)
    assert desk.loan(onchain_id).bitcoin_stage == BitcoinStage.EXITED
    _deleted_on_seed_only(desk, onchain_id, flavour)


def _stranded_alert(loan: Loan) -> Alert:
    return Alert.objects.get(key=f"loan:{loan.pk}:money_stranded", resolved_at__isnull=True)


def known_wei(value: object) -> int:
    assert value is not None
    return int(value)  # type: ignore[call-overload]


def _deleted_on_seed_only(desk: Desk, onchain_id: int, flavour: str) -> None:
    """Housekeeping: the lender deletes a closed seed-flavour loan on chain (so its borrower
    may borrow again); ours keeps its record."""
    if flavour == ContractFlavour.SEED:
        desk.until(
            lambda: AuditEntry.objects.filter(
                loan=desk.loan(onchain_id), action="deleted_on_chain"
            ).exists()
        )
        assert not desk.deployed.contracts.get_loan(onchain_id).exists
    else:
        desk.advance(evm=3)
        assert desk.deployed.contracts.get_loan(onchain_id).exists
    assert desk.loan(onchain_id).status == LoanStatus.CLOSED


def test_a_refused_repayment_is_withdrawn_and_the_collateral_swept(
    desk: Desk, settings, flavour: str
):
    settings.LENDER_ACTIONS_REQUIRING_APPROVAL = ["accept_repayment"]
    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    borrower.actions.attempt_repayment(onchain_id)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REPAYMENT_IN_PROGRESS)
    loan = desk.loan(onchain_id)
    assert loan.approvals.get().status == "pending"  # held for an operator who never comes
    assert loan.preimage_lender_revealed_at is None
    desk.mine_evm(loan.timelock_lender + 1)
    if flavour == ContractFlavour.SEED:
        _seed_refused_repayment_stays_until_accepted(desk, borrower, onchain_id)
        return
    borrower.actions.withdraw_repayment(onchain_id)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REFUNDED_TO_BORROWER)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.CLOSED, evm=0, btc=5)
    loan = desk.loan(onchain_id)
    assert loan.bitcoin_stage == BitcoinStage.SWEPT
    assert loan.preimage_lender_revealed_at is None  # P_L never left the desk


def _seed_refused_repayment_stays_until_accepted(
    desk: Desk, borrower: Borrower, onchain_id: int
) -> None:
    """The seed's withdrawRepaymentAttempt can never succeed: the repayment stays locked, the
    collateral is not the lender's to sweep, and only the lender's acceptance (late: the seed
    has no acceptance deadline) ends the loan."""
    from loans.policy import LenderAction
    from loans.services.lender import lender_action_approve

    with pytest.raises(ContractRevert, match="lender preimage hash is set"):
        borrower.actions.withdraw_repayment(onchain_id)
    desk.advance(btc=5)
    loan = desk.loan(onchain_id)
    assert loan.status == LoanStatus.REPAYMENT_IN_PROGRESS
    assert loan.bitcoin_stage == BitcoinStage.COLLATERAL_CONFIRMED
    lender_action_approve(
        loan_id=loan.pk, action=LenderAction.ACCEPT_REPAYMENT, operator="operator"
    )
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REPAID)
    loan = desk.loan(onchain_id)
    desk.send_btc(borrower.release(loan, desk.revealed_lender_preimage(onchain_id)))
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.CLOSED, evm=0, btc=1)
    assert desk.loan(onchain_id).bitcoin_stage == BitcoinStage.RELEASED


def _refused(desk: Desk, onchain_id: int, reason: str) -> None:
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.INVALID, btc=1)
    loan = desk.loan(onchain_id)
    assert reason in loan.invalid_reason
    assert not AuditEntry.objects.filter(
        loan=loan, action="lender_action_sent", details__action="offer"
    ).exists()
    assert loan.offer_block is None


def test_an_escrow_address_that_does_not_match_is_never_offered(desk: Desk):
    borrower, stranger = desk.borrower(), desk.borrower(2)
    other = vaultero.escrow_output(
        borrower_key=stranger.btc_key,
        lender_key=vaultero.xonly_public_key("6b" * 32),
        preimage_hash=borrower.preimage_hash,
        csv_blocks=40,
    ).address("regtest")
    onchain_id = desk.request(borrower, escrow_address=other)
    _refused(desk, onchain_id, "matches no escrow derived")


def test_a_short_deposit_is_never_offered(desk: Desk, settings):
    # Short even at the relay floor: the collateral and the origination fee, nothing for
    # TX_1's miner fee. Not a final INVALID (issue 13, finding 6): the request stays open and
    # the borrower is told exactly what is missing.
    borrower = desk.borrower()
    quote = escrow_quote(
        borrower_btc_pubkey=borrower.btc_key,
        preimage_hash_borrower=borrower.preimage_hash,
        amount_wei=10**16,
    )
    onchain_id = desk.request(borrower, deposit_delta=-quote.deposit.miner_fee_sats)
    missing = settings.BITCOIN_FEERATE_FLOOR_SAT_VB * quote.deposit.tx1_vsize
    desk.until(
        lambda: AuditEntry.objects.filter(
            loan=desk.loan(onchain_id), action="escrow_deposit_short"
        ).exists()
    )
    desk.advance(evm=3, btc=1)
    loan = desk.loan(onchain_id)
    assert loan.status == LoanStatus.REQUESTED
    assert loan.collateral_lock_feerate is None  # no TX_1 to sign, so nothing to offer
    (short,) = AuditEntry.objects.filter(loan=loan, action="escrow_deposit_short")
    assert short.details["missing_sats"] == missing
    assert f"{missing} sats short" in loan_next_action(loan=loan).action
    assert not AuditEntry.objects.filter(
        loan=loan, action="lender_action_sent", details__action="offer"
    ).exists()


def test_a_bad_presignature_is_refused_and_nothing_is_offered(desk: Desk):
    from loans.outputs import InvalidBorrowerSignature, collateral_lock_template
    from loans.services.collateral import borrower_signature_submit

    borrower = desk.borrower()
    onchain_id = desk.request(borrower)
    desk.until(lambda: desk.loan(onchain_id).collateral_lock_feerate is not None)
    loan = desk.loan(onchain_id)
    wrong = vaultero.schnorr_sign(collateral_lock_template(loan).sighash, "11" * 32)
    with pytest.raises(InvalidBorrowerSignature, match="does not verify"):
        borrower_signature_submit(loan_id=loan.pk, signature_hex=wrong.hex())
    desk.advance(evm=3, btc=1)
    loan = desk.loan(onchain_id)
    assert loan.status == LoanStatus.REQUESTED
    assert not loan.borrower_signatures.exists()
    waiting = AuditEntry.objects.filter(loan=loan, action="offer_waiting").last()
    assert waiting is not None
    assert waiting.details["reasons"] == ["no verified borrower pre-signature on TX_1"]


def test_an_escrow_whose_exit_window_is_too_short_is_never_offered(desk: Desk):
    borrower = desk.borrower()
    onchain_id = desk.request(borrower)
    desk.until(lambda: desk.loan(onchain_id).collateral_lock_feerate is not None)
    desk.mine_btc(92)  # most of t0 (100) passes before the borrower signs
    desk.presign(borrower, onchain_id)
    _refused(desk, onchain_id, "escrow CSV window too short")


def _defaulted_block(desk: Desk, onchain_id: int) -> int:
    (log,) = desk.deployed.loan.events.LoanDefaulted().get_logs(
        argument_filters={"loanId": onchain_id}, from_block=desk.deployed.block_number
    )
    return int(log["blockNumber"])


def test_a_longer_global_duration_after_activation(desk: Desk, lender_actions, flavour: str):
    """The lender raises loanDuration after activation. Ours keeps the loan's snapshot; the
    seed's reads the global one: the backend follows it, sends markAsDefaulted only when the
    contract allows it (never into a revert), and the default is still swept."""
    from dataclasses import replace

    from chainwatch.models import EvmTransaction
    from tests.integration.conftest import TIMELOCKS

    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    activation = known(desk.loan(onchain_id).activation_block)
    doubled = replace(
        TIMELOCKS,
        loan_duration=2 * TIMELOCKS.loan_duration,
        t_btc_collateral=2 * TIMELOCKS.loan_duration + TIMELOCKS.t_lender + 1,
    )
    lender_actions.update_parameters(doubled)
    effective = (
        doubled.loan_duration if flavour == ContractFlavour.SEED else TIMELOCKS.loan_duration
    )
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.DEFAULTED, evm=5)
    loan = desk.loan(onchain_id)
    assert loan.loan_duration == effective
    assert _defaulted_block(desk, onchain_id) > activation + effective
    (default_call,) = EvmTransaction.objects.filter(loan_ref=str(loan.pk), action="mark_default")
    assert default_call.revert_reason == ""
    # Sent once, when due: never refused by the contract and retried.
    assert default_call.retries == 0
    if flavour == ContractFlavour.SEED:
        followed = AuditEntry.objects.get(loan=loan, action="loan_duration_followed")
        assert followed.details == {"from": TIMELOCKS.loan_duration, "to": effective}
        # 2D + t_L now reaches past the collateral's t_1, fixed when TX_1 was built.
        assert Alert.objects.filter(
            key=f"loan:{loan.pk}:duration_past_collateral_lock", severity="critical"
        ).exists()
    else:
        assert not AuditEntry.objects.filter(action="loan_duration_followed").exists()
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.CLOSED, evm=0, btc=5)
    assert desk.loan(onchain_id).bitcoin_stage == BitcoinStage.SWEPT


def test_the_deadlines_told_to_the_borrower_are_what_the_contract_allows(desk: Desk, flavour: str):
    """The last block the API names for acceptance is the last one the contract accepts, and
    the lender's withdrawal is due only once the contract allows it."""
    from web3.exceptions import ContractLogicError

    from loans.deadlines import Deadline, DeadlineKind, loan_deadlines

    borrower = desk.borrower()
    onchain_id = offered(desk, borrower)
    loan = desk.loan(onchain_id)

    def expiry_at(head: int) -> Deadline:
        (found,) = [
            d
            for d in loan_deadlines(loan, evm_head=head, btc_head=None)
            if d.kind == DeadlineKind.OFFER_EXPIRY
        ]
        return found

    expiry = expiry_at(int(desk.w3.eth.block_number))
    strict = flavour == ContractFlavour.SEED
    assert expiry.block == known(loan.offer_block) + loan.timelock_borrower - int(strict)
    desk.mine_evm(expiry.remedy_block + 1 - int(desk.w3.eth.block_number))
    accept = desk.deployed.loan.functions.acceptLoanOffer(onchain_id, borrower.preimage)
    withdraw = desk.deployed.loan.functions.withdrawLoanOffer(onchain_id)
    lender = desk.deployed.lender_address
    # eth_call at block N runs with block.number == N.
    accept.call({"from": borrower.actions.address}, block_identifier=expiry.block)
    with pytest.raises(ContractLogicError):
        accept.call({"from": borrower.actions.address}, block_identifier=expiry.block + 1)
    with pytest.raises(ContractLogicError):
        withdraw.call({"from": lender}, block_identifier=expiry.remedy_block - 1)
    withdraw.call({"from": lender}, block_identifier=expiry.remedy_block)
    # The watchdog asks for the withdrawal from the head before the remedy block on.
    assert not expiry_at(expiry.remedy_block - 2).remedy_open
    assert expiry_at(expiry.remedy_block - 1).remedy_open


def test_a_repayment_under_a_wrong_lender_hash_is_refused_and_alerted(desk: Desk, flavour: str):
    """The seed dApp's repay form defaults to a hard-coded hash. Our contract refuses it; the
    seed's takes it, and then P_L must not leave: it could not claim that lock, and would
    only hand the borrower the collateral for nothing. The operator is told what happened."""
    import hashlib

    from chainwatch.models import EvmTransaction

    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    wrong = hashlib.sha256(b"the seed dApp's default lender hash").digest()
    if flavour == ContractFlavour.BTCLOAN:
        with pytest.raises(ContractRevert, match="lender preimage hash mismatch"):
            borrower.actions.attempt_repayment(onchain_id, preimage_hash_lender=wrong)
        return
    borrower.actions.attempt_repayment(onchain_id, preimage_hash_lender=wrong)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REPAYMENT_IN_PROGRESS)
    desk.advance(evm=3)
    loan = desk.loan(onchain_id)
    assert loan.status == LoanStatus.REPAYMENT_IN_PROGRESS
    assert loan.preimage_lender_revealed_at is None
    assert not desk.deployed.loan.events.RepaymentAccepted().get_logs(
        from_block=desk.deployed.block_number
    )
    # No acceptLoanRepayment was ever signed (the secret is resolved only when signing).
    assert not EvmTransaction.objects.filter(
        loan_ref=str(loan.pk), action="accept_repayment", nonce__isnull=False
    ).exists()
    anomaly = AuditEntry.objects.filter(loan=loan, action="anomaly").last()
    assert anomaly is not None
    assert wrong.hex() in anomaly.details["problem"]
    alert = Alert.objects.get(key=f"loan:{loan.pk}:guard:accept_repayment", resolved_at=None)
    assert alert.severity == "critical"
    assert wrong.hex() in alert.details["reason"]
