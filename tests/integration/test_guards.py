"""Guards at the moment of acting, on anvil and the Bitcoin node, the borrower playing the
attacks of issue 13: an offer approved (or pending in the mempool) after the borrower took the
escrow back, P_L asked for after the acceptance margin, a deadline action that reverts on a
node estimating at `latest`. Each ends safe: nothing sent, nothing revealed, or retried to
success."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from web3 import Web3

from btcloan.models import Alert
from chainwatch.evm.driver import LoanStatus as ChainStatus
from chainwatch.models import EvmTransaction, OutboxStatus
from loans.models import AuditEntry, BitcoinStage, LenderApproval, LoanStatus
from loans.policy import LenderAction
from loans.services.lender import lender_action_approve
from loans.services.preimages import lender_preimage_reveal
from tests.integration.conftest import Borrower, Desk, known
from tests.integration.test_lifecycles import activated

pytestmark = [pytest.mark.evm, pytest.mark.bitcoin_node, pytest.mark.slow]


@pytest.fixture
def node_requests(desk: Desk) -> Iterator[list[tuple[str, Any]]]:
    """Every JSON-RPC request the process sends to the EVM node, in order."""
    provider: Any = desk.w3.provider
    original = provider.make_request
    seen: list[tuple[str, Any]] = []

    def recording(method: str, params: Any) -> Any:
        seen.append((str(method), params))
        return original(method, params)

    provider.make_request = recording
    try:
        yield seen
    finally:
        provider.make_request = original


def _chain_status(desk: Desk, onchain_id: int) -> ChainStatus:
    return desk.deployed.contracts.get_loan(onchain_id).status


def _held_offer(desk: Desk, borrower: Borrower) -> int:
    """Escrow funded and confirmed, TX_1 pre-signed: the offer waits for an operator."""
    onchain_id = desk.request(borrower)
    desk.until(lambda: desk.loan(onchain_id).collateral_lock_feerate is not None)
    desk.presign(borrower, onchain_id)
    desk.until(
        lambda: LenderApproval.objects.filter(
            loan=desk.loan(onchain_id), action=LenderAction.OFFER
        ).exists()
    )
    return onchain_id


def _exit_escrow(desk: Desk, borrower: Borrower, onchain_id: int) -> str:
    """The borrower waits for the exit path (t0) and takes the escrow back."""
    loan = desk.loan(onchain_id)
    exit_opens = known(loan.escrow_confirmed_height) + loan.escrow_csv_blocks
    desk.mine_btc(max(0, exit_opens - desk.btc_height() - 1))
    return desk.send_btc(borrower.exit(loan))


def _refusals(desk: Desk, onchain_id: int, action: str) -> list[str]:
    return [
        e.details["reason"]
        for e in AuditEntry.objects.filter(loan=desk.loan(onchain_id), action="guard_refused")
        if e.details["action"] == action
    ]


def test_an_offer_approved_after_the_borrower_left_the_escrow_is_never_sent(
    desk: Desk, settings: Any
) -> None:
    """Finding 2: held for approval, the borrower exits, the operator approves: nothing goes."""
    settings.LENDER_ACTIONS_REQUIRING_APPROVAL = ["offer"]
    borrower = desk.borrower()
    onchain_id = _held_offer(desk, borrower)
    lender = Web3.to_checksum_address(desk.deployed.lender_address)
    _exit_escrow(desk, borrower, onchain_id)
    balance = desk.w3.eth.get_balance(lender)

    lender_action_approve(
        loan_id=desk.loan(onchain_id).pk, action=LenderAction.OFFER, operator="alice"
    )
    desk.advance(evm=2, btc=1)

    row = EvmTransaction.objects.get(loan_ref=str(desk.loan(onchain_id).pk), action="offer")
    assert (row.status, row.nonce) == (OutboxStatus.REFUSED, None)
    assert _chain_status(desk, onchain_id) == ChainStatus.REQUESTED
    assert desk.w3.eth.get_balance(lender) == balance  # no amount + bond left the lender
    (reason,) = set(_refusals(desk, onchain_id, "offer"))
    assert "escrow" in reason
    assert Alert.objects.filter(key=f"loan:{desk.loan(onchain_id).pk}:guard:offer").exists()
    loan = desk.loan(onchain_id)
    assert loan.offer_block is None
    assert loan.status != LoanStatus.OFFERED


def test_an_offer_queued_through_an_evm_node_outage_is_rechecked_when_it_goes_out(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 2: the offer is queued while the outbox cannot reach the EVM node; meanwhile
    the borrower exits the escrow; when the node is back, the offer's guard refuses it."""
    import chainwatch.outbox.services as outbox
    import tests.support.desk as desk_module
    from chainwatch.client import NodeUnavailable

    borrower = desk.borrower()
    onchain_id = desk.request(borrower)
    desk.until(lambda: desk.loan(onchain_id).collateral_lock_feerate is not None)
    pump = desk_module.evm_transactions_pump

    def pump_through_outage() -> object:
        try:
            return pump()
        except NodeUnavailable:  # as the beat's outbox task does
            return None

    dead = Web3(Web3.HTTPProvider("http://127.0.0.1:9", request_kwargs={"timeout": 2}))
    monkeypatch.setattr(outbox, "get_web3", lambda: dead)
    monkeypatch.setattr(desk_module, "evm_transactions_pump", pump_through_outage)
    desk.lose = lambda name: name == "chainwatch.send_evm_transaction"
    desk.presign(borrower, onchain_id)
    loan_ref = str(desk.loan(onchain_id).pk)
    desk.until(lambda: EvmTransaction.objects.filter(loan_ref=loan_ref, action="offer").exists())
    row = EvmTransaction.objects.get(loan_ref=loan_ref, action="offer")
    assert (row.status, row.nonce) == (OutboxStatus.QUEUED, None)

    _exit_escrow(desk, borrower, onchain_id)
    monkeypatch.undo()  # the node is back
    desk.lose = None
    desk.pump()
    row.refresh_from_db()
    assert (row.status, row.nonce) == (OutboxStatus.REFUSED, None)
    assert "escrow" in " ".join(_refusals(desk, onchain_id, "offer"))
    assert _chain_status(desk, onchain_id) == ChainStatus.REQUESTED


def test_a_pending_offer_whose_escrow_is_exited_is_cancelled_with_its_nonce(
    desk: Desk, settings: Any
) -> None:
    """An offer stuck in the mempool while the borrower exits: replaced by a 0-value transfer
    with the same nonce, so the loan is never offered on chain."""
    settings.LENDER_ACTIONS_REQUIRING_APPROVAL = ["offer"]
    borrower = desk.borrower()
    onchain_id = _held_offer(desk, borrower)
    desk.w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        lender_action_approve(
            loan_id=desk.loan(onchain_id).pk, action=LenderAction.OFFER, operator="alice"
        )
        desk.pump()
        row = EvmTransaction.objects.get(loan_ref=str(desk.loan(onchain_id).pk), action="offer")
        assert row.status == OutboxStatus.SENT  # in the mempool, not mined
        _exit_escrow(desk, borrower, onchain_id)
        desk.pump()  # the pending offer's guard fails: cancelled
        row.refresh_from_db()
        assert row.status == OutboxStatus.CANCELLING
    finally:
        desk.w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
    desk.advance(evm=3, btc=1)
    row.refresh_from_db()
    assert row.status == OutboxStatus.CANCELLED
    assert [a.kind for a in row.attempts.order_by("id")] == ["signed", "cancel"]
    assert _chain_status(desk, onchain_id) == ChainStatus.REQUESTED
    assert not AuditEntry.objects.filter(
        loan=desk.loan(onchain_id), field="status", to_value=LoanStatus.OFFERED
    ).exists()
    assert desk.loan(onchain_id).bitcoin_stage == BitcoinStage.EXITED


def test_p_l_is_never_revealed_after_the_acceptance_margin(
    desk: Desk, settings: Any, node_requests: list[tuple[str, Any]]
) -> None:
    """Finding 3: the acceptance, held for an operator, is approved too late: refused, and P_L
    reaches no node in any form; the borrower takes the repayment back, the lender sweeps."""
    settings.LENDER_ACTIONS_REQUIRING_APPROVAL = ["accept_repayment"]
    settings.LOAN_REPAYMENT_ACCEPT_MARGIN = 3
    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    borrower.actions.attempt_repayment(onchain_id)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REPAYMENT_IN_PROGRESS)
    loan = desk.loan(onchain_id)
    deadline = known(loan.repayment_block) + loan.timelock_lender
    desk.mine_evm(max(0, deadline - 2 - desk.w3.eth.block_number))  # 1 block left, 3 required

    lender_action_approve(loan_id=loan.pk, action=LenderAction.ACCEPT_REPAYMENT, operator="bob")
    desk.pump()
    row = EvmTransaction.objects.get(loan_ref=str(loan.pk), action="accept_repayment")
    assert (row.status, row.nonce) == (OutboxStatus.REFUSED, None)
    (reason,) = set(_refusals(desk, onchain_id, "accept_repayment"))
    assert "P_L is not revealed" in reason
    assert Alert.objects.get(key=f"loan:{loan.pk}:guard:accept_repayment").severity == "critical"

    desk.mine_evm(3)
    borrower.actions.withdraw_repayment(onchain_id)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.CLOSED, evm=1, btc=5)
    loan = desk.loan(onchain_id)
    assert loan.bitcoin_stage == BitcoinStage.SWEPT
    assert loan.preimage_lender_revealed_at is None
    secret = lender_preimage_reveal(loan_id=loan.pk).hex()
    assert not [m for m, params in node_requests if secret in str(params).lower()]


def test_p_l_goes_out_only_inside_the_signed_call(
    desk: Desk, node_requests: list[tuple[str, Any]]
) -> None:
    """No estimate or simulation carries P_L; the reveal is recorded once it was sent."""
    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    borrower.actions.attempt_repayment(onchain_id)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REPAID)
    loan = desk.loan(onchain_id)
    secret = lender_preimage_reveal(loan_id=loan.pk).hex()
    carrying = [m for m, params in node_requests if secret in str(params).lower()]
    assert carrying == ["eth_sendRawTransaction"]
    row = EvmTransaction.objects.get(loan_ref=str(loan.pk), action="accept_repayment")
    assert loan.preimage_lender_revealed_at is not None
    released = AuditEntry.objects.get(loan=loan, action="lender_preimage_released")
    assert released.cause_ref == f"evm-tx:{row.tx_hash}"


def test_a_default_that_reverts_in_estimation_is_retried_to_success(
    desk: Desk, settings: Any
) -> None:
    """Finding 5: on a node that estimates at `latest`, markAsDefaulted sent at the first due
    block reverts in estimation; the outbox retries it (its guard still holds) and it lands."""
    settings.EVM_ESTIMATE_BLOCK = "latest"
    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    loan = desk.loan(onchain_id)
    due = known(loan.activation_block) + loan.loan_duration
    desk.mine_evm(max(0, due - desk.w3.eth.block_number))  # the head is the due block
    desk.pump()
    row = EvmTransaction.objects.get(loan_ref=str(loan.pk), action="mark_default")
    assert row.retries >= 1 or row.status == OutboxStatus.REVERTED
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.DEFAULTED, evm=1)
    row.refresh_from_db()
    assert row.status == OutboxStatus.CONFIRMED
    assert row.retries >= 1
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.CLOSED, evm=0, btc=5)
    assert desk.loan(onchain_id).bitcoin_stage == BitcoinStage.SWEPT


def test_the_lender_keys_never_sign_inside_a_database_transaction(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 8: a remote signer may be slow; no signature is made with a transaction open
    (TX_1, the sweep, every EVM call of a defaulted loan)."""
    from django.db import connection

    import chainwatch.outbox.services as outbox
    from bitcoin import signer as signer_module

    inside: list[tuple[str, bool]] = []
    local = signer_module.LocalKeySigner.from_settings()

    class RecordingSigner:
        def x_only_public_key(self) -> bytes:
            return local.x_only_public_key()

        def key_path_script_pubkey(self) -> bytes:
            return local.key_path_script_pubkey()

        def sign(self, request: Any) -> bytes:
            inside.append(("bitcoin", connection.in_atomic_block))
            return local.sign(request)

    evm_sign = outbox._sign

    def recording_evm_sign(fields: dict) -> tuple[str, str]:
        inside.append(("evm", connection.in_atomic_block))
        return evm_sign(fields)

    signer_module.set_signer(RecordingSigner())
    monkeypatch.setattr(outbox, "_sign", recording_evm_sign)
    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.DEFAULTED, evm=5)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.CLOSED, evm=0, btc=5)
    assert {chain for chain, _ in inside} == {"bitcoin", "evm"}
    assert not [chain for chain, in_atomic in inside if in_atomic]


def test_an_acceptance_mined_before_its_repayment_after_a_reorg_is_retried(desk: Desk) -> None:
    """Finding 5, the reorg case: on the new branch our acceptLoanRepayment lands before the
    borrower's repayment and reverts; its guard still holds once the repayment is back, so the
    outbox retries it and the loan is repaid."""
    import chainwatch.outbox.services as outbox

    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    fork = desk.w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    borrower.actions.attempt_repayment(onchain_id)
    loan_ref = str(desk.loan(onchain_id).pk)

    def accepted_not_confirmed() -> bool:
        row = EvmTransaction.objects.filter(loan_ref=loan_ref, action="accept_repayment").first()
        return row is not None and row.status == OutboxStatus.MINED

    desk.until(accepted_not_confirmed)
    row = EvmTransaction.objects.get(loan_ref=loan_ref, action="accept_repayment")
    raw = outbox._signed_bytes(row)

    # A longer branch without the repayment replaces the blocks; our call, gossiped again,
    # is mined there first (and reverts), the borrower's repayment only after it.
    revert = desk.w3.provider.make_request("evm_revert", [fork])  # type: ignore[arg-type]
    assert revert["result"] is True
    # The fork point's base fee can be above the price the call was signed at (blocks mined
    # since lowered it); on the new branch it is not, or the node would refuse the call.
    desk.w3.provider.make_request(
        "anvil_setNextBlockBaseFeePerGas",  # type: ignore[arg-type]
        [hex(int(row.gas_price_wei or 0) // 2)],
    )
    sent = desk.w3.provider.make_request("eth_sendRawTransaction", [raw])  # type: ignore[arg-type]
    assert "error" not in sent, sent
    # anvil automines in the background: the receipt can lag the send by a moment.
    receipt = desk.w3.eth.wait_for_transaction_receipt(
        row.tx_hash,  # type: ignore[arg-type]
        timeout=30,
        poll_latency=0.05,
    )
    assert receipt["status"] == 0
    borrower.actions.attempt_repayment(onchain_id)
    desk.mine_evm(3)

    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REPAID)
    row.refresh_from_db()
    assert row.status == OutboxStatus.CONFIRMED
    assert row.retries == 1
    assert row.tx_hash != receipt["transactionHash"].to_0x_hex()
    assert desk.w3.eth.get_transaction_receipt(row.tx_hash)["status"] == 1  # type: ignore[arg-type]
    assert _chain_status(desk, onchain_id) == ChainStatus.REPAID


def test_tx1_waits_for_an_activation_a_reorg_took_away_and_goes_once_it_is_back(
    desk: Desk,
) -> None:
    """The broadcaster asks TX_1's guard before every attempt: signed for an activation that
    an EVM reorg then removed, TX_1 is not sent (it would lock the borrower's collateral with
    no loan); the borrower accepts again on the new branch and TX_1 goes."""
    from bitcoin.models import BitcoinTransaction, TxPurpose
    from tests.integration.test_lifecycles import offered

    borrower = desk.borrower()
    onchain_id = offered(desk, borrower)
    fork = desk.w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    borrower.actions.accept_offer(onchain_id, borrower.preimage)
    desk.lose = lambda name: name == "bitcoin.broadcast"  # TX_1 signed, its send lost
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.ACTIVE)
    desk.lose = None
    tx1 = BitcoinTransaction.objects.get(purpose=TxPurpose.COLLATERAL_LOCK)
    assert tx1.status == "signed"

    revert = desk.w3.provider.make_request("evm_revert", [fork])  # type: ignore[arg-type]
    assert revert["result"] is True
    desk.advance(evm=3, btc=1)  # another branch, without the activation
    assert _chain_status(desk, onchain_id) == ChainStatus.OFFERED
    tx1.refresh_from_db()
    assert tx1.status == "signed"
    assert "refused" in tx1.last_error
    assert _refusals(desk, onchain_id, "broadcast_collateral_lock")
    assert desk.node.rpc("gettxout", desk.loan(onchain_id).escrow_txid, 0) is not None

    borrower.actions.accept_offer(onchain_id, borrower.preimage)
    desk.until(
        lambda: desk.loan(onchain_id).bitcoin_stage == BitcoinStage.COLLATERAL_CONFIRMED,
        evm=1,
        btc=1,
    )
    assert list(BitcoinTransaction.objects.values_list("purpose", flat=True)) == ["collateral_lock"]


def test_a_sweep_signed_for_a_default_a_reorg_undid_is_never_broadcast(desk: Desk) -> None:
    """The broadcaster asks the sweep's guard before every attempt: signed after a default that
    an EVM reorg then removed (on the new branch the borrower repaid in time), the sweep is not
    sent once t1 matures; the collateral output stays for the borrower's release."""
    from bitcoin.models import BitcoinTransaction, TxPurpose

    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    fork = desk.w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    desk.lose = lambda name: name == "bitcoin.broadcast"  # the sweep signed, its send lost
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.DEFAULTED, evm=5)
    desk.until(
        lambda: BitcoinTransaction.objects.filter(purpose=TxPurpose.LENDER_SWEEP).exists(), evm=0
    )
    desk.lose = None
    sweep = BitcoinTransaction.objects.get(purpose=TxPurpose.LENDER_SWEEP)

    revert = desk.w3.provider.make_request("evm_revert", [fork])  # type: ignore[arg-type]
    assert revert["result"] is True
    borrower.actions.attempt_repayment(onchain_id)  # in time, on the new branch
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REPAID)
    loan = desk.loan(onchain_id)
    sweep_opens = known(loan.collateral_confirmed_height) + loan.collateral_csv_blocks
    desk.mine_btc(max(0, sweep_opens - desk.btc_height()))  # the sweep is valid on Bitcoin now
    desk.advance(btc=1)

    sweep.refresh_from_db()
    assert sweep.status == "signed"
    assert "refused" in sweep.last_error
    assert any("repaid" in reason for reason in _refusals(desk, onchain_id, "sweep"))
    assert desk.node.rpc("gettxout", loan.collateral_txid, 1) is not None
    assert _chain_status(desk, onchain_id) == ChainStatus.REPAID
    # The default, final before the reorg, is gone from the chain: its nonce went to a
    # cancellation (its guard refused it on the new branch), so the acceptance behind it went.
    default = EvmTransaction.objects.get(function="markAsDefaulted")
    assert default.status == OutboxStatus.CANCELLED
    assert default.attempts.filter(kind="cancel").exists()


def test_a_call_mined_since_the_outbox_looked_is_done_not_refused(desk: Desk) -> None:
    """The pump reads receipts for all its rows, then asks each pending row's guard: a call
    mined in between has moved the contract past the status its guard requires. That is the
    call done, not a refusal (no alert, no audit row, no cancellation), while the same state
    before signing is still refused."""
    from chainwatch.outbox.hooks import Moment, guard_refusal

    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    borrower.actions.attempt_repayment(onchain_id)
    loan_ref = str(desk.loan(onchain_id).pk)

    def mined_not_applied() -> bool:
        row = EvmTransaction.objects.filter(loan_ref=loan_ref, action="accept_repayment").first()
        return row is not None and row.status == OutboxStatus.MINED

    desk.until(mined_not_applied)
    assert desk.loan(onchain_id).status == LoanStatus.REPAYMENT_IN_PROGRESS
    assert _chain_status(desk, onchain_id) == ChainStatus.REPAID
    row = EvmTransaction.objects.get(loan_ref=loan_ref, action="accept_repayment")

    assert guard_refusal(row, Moment.PENDING) is None
    assert _refusals(desk, onchain_id, "accept_repayment") == []
    assert not Alert.objects.filter(key__contains=":guard:").exists()

    # Before a signature the guard still holds the loan to REPAYMENT_IN_PROGRESS on chain.
    assert guard_refusal(row, Moment.SIGN) is not None
    assert _refusals(desk, onchain_id, "accept_repayment")
