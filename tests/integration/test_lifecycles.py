"""Whole loans on real nodes, the backend acting as the lender and the test as the borrower:
every path of PROTOCOL.md to its end, and every offer refusal with its recorded reason."""

from __future__ import annotations

import pytest

import vaultero
from loans.models import AuditEntry, BitcoinStage, LoanStatus
from loans.selectors import loan_next_action
from loans.services.quote import escrow_quote
from tests.integration.conftest import Borrower, Desk, known

pytestmark = [pytest.mark.evm, pytest.mark.bitcoin_node, pytest.mark.slow]


def offered(desk: Desk, borrower: Borrower, **request: object) -> int:
    """A loan requested, escrow funded and confirmed, TX_1 pre-signed, and offered."""
    onchain_id = desk.request(borrower, **request)  # type: ignore[arg-type]
    desk.until(lambda: desk.loan(onchain_id).collateral_lock_feerate is not None)
    desk.presign(borrower, onchain_id)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.OFFERED)
    return onchain_id


def activated(desk: Desk, borrower: Borrower) -> int:
    onchain_id = offered(desk, borrower)
    borrower.actions.accept_offer(onchain_id, borrower.preimage)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.ACTIVE)
    desk.until(
        lambda: desk.loan(onchain_id).bitcoin_stage == BitcoinStage.COLLATERAL_CONFIRMED,
        evm=0,
        btc=1,
    )
    return onchain_id


def test_repaid_and_released(desk: Desk):
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


def test_offer_not_accepted_is_withdrawn_and_the_borrower_exits_after_t0(desk: Desk):
    borrower = desk.borrower()
    lender = desk.deployed.lender_address
    onchain_id = offered(desk, borrower)
    before = _balance(desk, lender)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REFUNDED_TO_LENDER, evm=3)
    # The withdrawn offer and the bond came back to the lender (less gas).
    loan = desk.loan(onchain_id)
    assert _balance(desk, lender) > before + int(loan.amount_wei)
    # The borrower takes the escrow back once t0_btc has passed since its confirmation.
    exit_opens = known(loan.escrow_confirmed_height) + loan.escrow_csv_blocks
    desk.mine_btc(max(0, exit_opens - desk.btc_height() - 1))
    desk.send_btc(borrower.exit(loan))
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.CLOSED, evm=0, btc=1)
    assert desk.loan(onchain_id).bitcoin_stage == BitcoinStage.EXITED


def test_a_refused_repayment_is_withdrawn_and_the_collateral_swept(desk: Desk, settings):
    settings.LENDER_ACTIONS_REQUIRING_APPROVAL = ["accept_repayment"]
    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    borrower.actions.attempt_repayment(onchain_id)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REPAYMENT_IN_PROGRESS)
    loan = desk.loan(onchain_id)
    assert loan.approvals.get().status == "pending"  # held for an operator who never comes
    assert loan.preimage_lender_revealed_at is None
    desk.mine_evm(loan.timelock_lender + 1)
    borrower.actions.withdraw_repayment(onchain_id)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REFUNDED_TO_BORROWER)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.CLOSED, evm=0, btc=5)
    loan = desk.loan(onchain_id)
    assert loan.bitcoin_stage == BitcoinStage.SWEPT
    assert loan.preimage_lender_revealed_at is None  # P_L never left the desk


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
    desk.mine_btc(32)  # most of t0 (40) passes before the borrower signs
    desk.presign(borrower, onchain_id)
    _refused(desk, onchain_id, "escrow CSV window too short")
