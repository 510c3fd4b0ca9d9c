"""The Bitcoin coordinator against a real node (the devnode, or bitcoind when installed):
deposits, TX_1, release, sweep, reorg, downtime, double broadcast, CPFP."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

import vaultero
from bitcoin import rpc as rpc_module
from bitcoin.facts import facts_deliver, register_fact_handler
from bitcoin.fees import FEE_ESTIMATE_ALERT, target_feerate
from bitcoin.models import (
    BitcoinFact,
    BitcoinTransaction,
    FactKind,
    MonitoringStatus,
    ObservationStatus,
    ObservedPayment,
    ObservedSpend,
    ScanCursor,
    SpendPurpose,
    TxPurpose,
    TxStatus,
    WatchPurpose,
)
from bitcoin.rpc import BitcoinRPC, NodeUnavailable, NotFound, WrongNetwork
from bitcoin.selectors import fee_estimate_blocks_offers
from bitcoin.services import (
    SigningRefused,
    chain_rescan_from,
    collateral_lock_complete,
    lender_sweep_complete,
    spend_register_template,
    transaction_broadcast,
    transaction_register,
    transaction_transition,
    transactions_refresh,
    watch_outpoint,
    watch_script,
)
from bitcoin.signer import get_signer
from btcloan.models import Alert
from tests.bitcoin.conftest import NETWORK, Chain, LoanTerms, TcpRelay, new_loan, relay_url
from vaultero import Transaction

pytestmark = [pytest.mark.bitcoin_node]

LOAN_SATS = 1_000_000
ORIGINATION_FEE = LOAN_SATS // 100
DEPOSIT = LOAN_SATS + ORIGINATION_FEE + 20_000


def kinds(loan_ref: str) -> list[tuple[str, int | None]]:
    return [
        (f.kind, f.payload.get("confirmations"))
        for f in BitcoinFact.objects.filter(loan_ref=loan_ref).order_by("id")
    ]


def deposit_escrow(
    chain: Chain, loan: LoanTerms, *, confirmations: int = 1, sats: int = DEPOSIT
) -> tuple[str, int]:
    """The borrower funds the escrow; the backend watches it (script and outpoint)."""
    watch_script(
        script_pubkey=loan.escrow.script_pubkey.hex(),
        address=loan.escrow_address,
        loan_ref=loan.ref,
        purpose=WatchPurpose.ESCROW,
    )
    txid, vout = chain.fund(loan.escrow_address, sats)
    watch_outpoint(txid=txid, vout=vout, loan_ref=loan.ref, purpose=WatchPurpose.ESCROW)
    if confirmations:
        chain.mine(confirmations)
    chain.scan()
    return txid, vout


def build_tx1(loan: LoanTerms, outpoint: tuple[str, int], *, feerate: int = 5) -> Any:
    return vaultero.build_collateral_lock(
        escrow=loan.escrow,
        outpoint=vaultero.Outpoint(*outpoint),
        value=DEPOSIT,
        collateral=loan.collateral,
        loan_sats=LOAN_SATS,
        origination_fee_sats=ORIGINATION_FEE,
        feerate_sat_vb=feerate,
        network=NETWORK,
    )


def complete_tx1(chain: Chain, loan: LoanTerms, *, feerate: int = 5) -> BitcoinTransaction:
    """Escrow deposited and confirmed, TX_1 registered, pre-signed by the borrower, completed."""
    outpoint = deposit_escrow(chain, loan)
    template = build_tx1(loan, outpoint, feerate=feerate)
    spend_register_template(
        loan_ref=loan.ref, purpose=SpendPurpose.COLLATERAL_LOCK, template=template
    )
    borrower_sig = vaultero.sign_input(template, loan.borrower_secret)  # offline, borrower's tools
    return collateral_lock_complete(
        loan_ref=loan.ref,
        txid=template.txid,
        borrower_signature=borrower_sig,
        borrower_preimage=loan.p_b,
    )


def confirmed_tx1(chain: Chain, loan: LoanTerms) -> BitcoinTransaction:
    tx1 = complete_tx1(chain, loan)
    assert transaction_broadcast(tx_id=tx1.pk).outcome == "accepted"
    watch_outpoint(txid=tx1.txid, vout=1, loan_ref=loan.ref, purpose=WatchPurpose.COLLATERAL)
    chain.mine(1)
    chain.scan()
    tx1.refresh_from_db()
    assert tx1.status == TxStatus.CONFIRMED
    return tx1


def test_escrow_deposit_is_seen_in_the_mempool_then_at_1_to_n_confirmations(
    chain: Chain, lender_key: str
) -> None:
    loan = new_loan(lender_key)
    txid, vout = deposit_escrow(chain, loan, confirmations=0)
    payment = ObservedPayment.objects.get(txid=txid, vout=vout)
    assert payment.status == ObservationStatus.MEMPOOL
    assert payment.value_sats == DEPOSIT
    assert kinds(loan.ref) == [(FactKind.PAYMENT_SEEN, 0)]

    for _ in range(4):  # one block at a time, one past the target of 3
        chain.mine(1)
        chain.scan()
    payment.refresh_from_db()
    assert payment.status == ObservationStatus.CONFIRMED
    assert payment.confirmations == 3  # followed up to the target, then left alone
    assert kinds(loan.ref) == [
        (FactKind.PAYMENT_SEEN, 0),
        (FactKind.PAYMENT_CONFIRMED, 1),
        (FactKind.PAYMENT_CONFIRMED, 2),
        (FactKind.PAYMENT_CONFIRMED, 3),
    ]

    received: list[tuple[str, int]] = []
    previous = register_fact_handler(
        lambda fact: received.append((fact.kind, fact.payload.confirmations))
    )
    try:
        facts_deliver()
        chain.scan()  # nothing new
        facts_deliver()  # delivered facts are not handed on again
    finally:
        register_fact_handler(previous)
    assert received == kinds(loan.ref)


def test_tx1_from_the_borrowers_presignature_is_accepted_and_confirmed(
    chain: Chain, lender_key: str
) -> None:
    loan = new_loan(lender_key)
    outpoint = deposit_escrow(chain, loan)
    template = build_tx1(loan, outpoint)
    # TX_1 pays the origination fee to the lender's own key-path address, which CPFP spends.
    assert template.outputs[0].script_pubkey == get_signer().key_path_script_pubkey()
    spend_register_template(
        loan_ref=loan.ref, purpose=SpendPurpose.COLLATERAL_LOCK, template=template
    )
    forged = vaultero.sign_input(template, loan.borrower_secret)[::-1]
    with pytest.raises(SigningRefused, match="borrower's signature does not verify"):
        collateral_lock_complete(
            loan_ref=loan.ref, txid=template.txid, borrower_signature=forged,
            borrower_preimage=loan.p_b,
        )  # fmt: skip
    tx1 = collateral_lock_complete(
        loan_ref=loan.ref,
        txid=template.txid,
        borrower_signature=vaultero.sign_input(template, loan.borrower_secret),
        borrower_preimage=loan.p_b,
    )
    assert tx1.status == TxStatus.SIGNED
    assert tx1.fee_sats == template.fee
    assert tx1.vsize == template.vsize

    assert transaction_broadcast(tx_id=tx1.pk).outcome == "accepted"
    assert chain.in_mempool(tx1.txid)
    chain.scan()
    spend = ObservedSpend.objects.get(txid=tx1.txid)
    assert (spend.leaf_index, spend.preimage) == (1, loan.p_b.hex())  # TX_1 reveals P_B

    chain.mine(3)
    chain.scan()
    tx1.refresh_from_db()
    assert tx1.status == TxStatus.CONFIRMED
    assert tx1.confirmations == 3
    assert tx1.monitoring.status == MonitoringStatus.COMPLETED
    assert chain.call("getrawtransaction", tx1.txid, True)["confirmations"] == 3
    tx_facts = [k for k in kinds(loan.ref) if k[0] == FactKind.TX_CONFIRMED]
    assert tx_facts == [(FactKind.TX_CONFIRMED, n) for n in (1, 2, 3)]


def test_a_collateral_release_by_the_borrower_is_seen_with_its_preimage(
    chain: Chain, lender_key: str
) -> None:
    loan = new_loan(lender_key)
    tx1 = confirmed_tx1(chain, loan)
    collateral_out = chain.rpc.tx_out(tx1.txid, 1)
    assert collateral_out is not None
    value = collateral_out.value_sats
    release = vaultero.build_collateral_release(
        collateral=loan.collateral,
        outpoint=vaultero.Outpoint(tx1.txid, 1),
        value=value,
        feerate_sat_vb=5,
        network=NETWORK,
    )
    signed = vaultero.finalize(
        release,
        borrower_sig=vaultero.sign_input(release, loan.borrower_secret),
        preimage=loan.p_l,
    )
    release_txid = chain.call("sendrawtransaction", signed)  # the borrower broadcasts it
    chain.scan()
    spend = ObservedSpend.objects.get(txid=release_txid)
    assert spend.watched.purpose == WatchPurpose.COLLATERAL
    assert (spend.leaf_index, spend.preimage) == (1, loan.p_l.hex())
    fact = BitcoinFact.objects.get(kind=FactKind.SPEND_SEEN, payload__spending_txid=release_txid)
    assert fact.payload["path"] == "collateral_release"
    assert fact.payload["preimage"] == loan.p_l.hex()


def test_a_lender_sweep_is_refused_before_the_csv_matures_and_accepted_after(
    chain: Chain, lender_key: str
) -> None:
    loan = new_loan(lender_key, t1_btc=4)
    tx1 = confirmed_tx1(chain, loan)  # 1 confirmation
    collateral_out = chain.rpc.tx_out(tx1.txid, 1)
    assert collateral_out is not None
    value = collateral_out.value_sats
    template = vaultero.build_lender_sweep(
        collateral=loan.collateral,
        outpoint=vaultero.Outpoint(tx1.txid, 1),
        value=value,
        feerate_sat_vb=5,
        network=NETWORK,
    )
    spend_register_template(loan_ref=loan.ref, purpose=SpendPurpose.LENDER_SWEEP, template=template)
    sweep = lender_sweep_complete(loan_ref=loan.ref, txid=template.txid)

    chain.mine(2)  # 3 confirmations: one short of t1_btc
    result = transaction_broadcast(tx_id=sweep.pk)
    assert result.outcome == "deferred"
    assert "non-BIP68-final" in result.reason
    sweep.refresh_from_db()
    assert sweep.status == TxStatus.SIGNED
    assert sweep.last_error == result.reason
    assert not chain.in_mempool(sweep.txid)
    transactions_refresh()
    # No new block since the monitor's last pass: t1 cannot have matured, nothing is resent.
    assert sweep.pk not in transactions_refresh().rebroadcast

    chain.mine(1)  # t1_btc reached: valid in the next block
    assert sweep.pk in transactions_refresh().rebroadcast
    assert transaction_broadcast(tx_id=sweep.pk).outcome == "accepted"
    chain.mine(1)
    chain.scan()
    sweep.refresh_from_db()
    assert sweep.status == TxStatus.CONFIRMED
    assert sweep.attempts == 2
    spend = ObservedSpend.objects.get(txid=sweep.txid)
    assert (spend.leaf_index, spend.preimage) == (0, "")
    assert (
        BitcoinFact.objects.get(
            payload__spending_txid=sweep.txid, kind=FactKind.SPEND_SEEN
        ).payload["path"]
        == "lender_sweep"
    )


def test_a_reorg_unconfirms_and_reconfirms_with_nothing_lost(chain: Chain, lender_key: str) -> None:
    loan = new_loan(lender_key)
    tx1 = complete_tx1(chain, loan)
    assert transaction_broadcast(tx_id=tx1.pk).outcome == "accepted"
    mined = chain.mine(2)
    chain.scan()
    tx1.refresh_from_db()
    assert (tx1.status, tx1.confirmations) == (TxStatus.CONFIRMED, 2)
    tip_before = ScanCursor.objects.get().height

    chain.call("invalidateblock", mined[0])  # TX_1's block and the one after leave the chain
    assert chain.in_mempool(tx1.txid)
    summary = chain.scan()
    assert summary.reorged_to == tip_before - 2
    tx1.refresh_from_db()
    assert (tx1.status, tx1.confirmations, tx1.block_height) == (TxStatus.IN_MEMPOOL, 0, None)
    spend = ObservedSpend.objects.get(txid=tx1.txid)
    assert spend.status == ObservationStatus.MEMPOOL

    # a longer branch, TX_1 mined again; to a fresh address: bitcoind would otherwise build,
    # within the same second, the very block just invalidated (refused as a duplicate)
    chain.call("generatetoaddress", 3, chain.call("getnewaddress"))
    chain.scan()
    tx1.refresh_from_db()
    spend.refresh_from_db()
    assert (tx1.status, tx1.confirmations) == (TxStatus.CONFIRMED, 3)
    assert spend.status == ObservationStatus.CONFIRMED
    assert spend.epoch == 1
    facts = [
        (k, c) for k, c in kinds(loan.ref) if k in (FactKind.TX_CONFIRMED, FactKind.TX_ORPHANED)
    ]
    assert facts == [
        (FactKind.TX_CONFIRMED, 1),
        (FactKind.TX_CONFIRMED, 2),
        (FactKind.TX_ORPHANED, 2),
        (FactKind.TX_CONFIRMED, 1),
        (FactKind.TX_CONFIRMED, 2),
        (FactKind.TX_CONFIRMED, 3),
    ]
    assert BitcoinFact.objects.filter(loan_ref=loan.ref, kind=FactKind.SPEND_ORPHANED).count() == 1
    cursor = ScanCursor.objects.get()
    assert cursor.block_hash == chain.call("getbestblockhash")


def test_node_downtime_is_retried(
    chain: Chain, lender_key: str, relay: TcpRelay, bitcoin_node: Any
) -> None:
    from bitcoin import tasks

    loan = new_loan(lender_key)
    tx1 = complete_tx1(chain, loan)
    rpc_module.set_client(BitcoinRPC(relay_url(bitcoin_node.url, relay.port), timeout=5))
    assert tasks.scan()["status"] == "ok"  # a live connection through the relay

    relay.down()
    with pytest.raises(NodeUnavailable):
        transaction_broadcast(tx_id=tx1.pk)
    assert tasks.scan() == {"status": "node_unavailable"}
    tx1.refresh_from_db()
    assert tx1.status == TxStatus.SIGNED
    assert tx1.attempts == 1
    assert tx1.last_error

    relay.up()  # the same address answers again: the client reconnects by itself
    assert transaction_broadcast(tx_id=tx1.pk).outcome == "accepted"
    chain.mine(1)
    assert tasks.scan()["status"] == "ok"
    tx1.refresh_from_db()
    assert (tx1.status, tx1.attempts, tx1.last_error) == (TxStatus.CONFIRMED, 2, "")


def test_a_transaction_broadcast_twice_is_one_transaction(chain: Chain, lender_key: str) -> None:
    loan = new_loan(lender_key)
    tx1 = complete_tx1(chain, loan)
    again = transaction_register(
        raw_hex=tx1.raw_hex, purpose=TxPurpose.COLLATERAL_LOCK, loan_ref=loan.ref
    )
    assert again.pk == tx1.pk
    assert BitcoinTransaction.objects.count() == 1

    assert transaction_broadcast(tx_id=tx1.pk).outcome == "accepted"
    assert transaction_broadcast(tx_id=tx1.pk).outcome == "skipped"  # already in the mempool
    # The monitor thinks it fell out (e.g. a node restart) and sends it once more.
    assert transaction_transition(tx_id=tx1.pk, to=TxStatus.BROADCAST, cause="test: resend")
    assert transaction_broadcast(tx_id=tx1.pk).outcome in ("accepted", "already_known")
    assert chain.call("getrawmempool").count(tx1.txid) == 1

    chain.mine(1)
    chain.scan()
    # A reorg-style resend of a transaction already in the chain is success, not an error.
    assert transaction_transition(tx_id=tx1.pk, to=TxStatus.BROADCAST, cause="test: resend")
    assert transaction_broadcast(tx_id=tx1.pk).outcome == "already_known"
    chain.scan()
    tx1.refresh_from_db()
    assert chain.call("getrawtransaction", tx1.txid, True)["confirmations"] == 1
    assert BitcoinTransaction.objects.filter(txid=tx1.txid).count() == 1
    assert tx1.attempts == 3


def test_the_monitor_rebroadcasts_a_transaction_that_left_the_mempool(
    chain: Chain, lender_key: str
) -> None:
    loan = new_loan(lender_key)
    tx1 = complete_tx1(chain, loan)
    # Recorded as in the mempool, but the node does not have it (say it restarted).
    assert transaction_transition(tx_id=tx1.pk, to=TxStatus.IN_MEMPOOL, cause="test")
    batched = transactions_refresh(batched=True)
    assert batched.rebroadcast == [tx1.pk]
    assert (batched.checked_outpoints, batched.unexplained_spends) == (1, [])  # the escrow
    tx1.refresh_from_db()
    assert tx1.status == TxStatus.BROADCAST
    assert transaction_broadcast(tx_id=tx1.pk).outcome == "accepted"
    chain.scan()  # sees TX_1 spend the escrow
    one_by_one = transactions_refresh(batched=False)
    assert one_by_one.rebroadcast == []
    assert one_by_one.checked_transactions == 1
    assert one_by_one.checked_outpoints == 0
    tx1.monitoring.refresh_from_db()
    assert tx1.monitoring.checks == 2
    assert tx1.monitoring.last_checked_at is not None


def test_a_borrower_exit_first_makes_tx1_a_conflict_and_a_bad_signature_fails(
    chain: Chain, lender_key: str
) -> None:
    loan = new_loan(lender_key, t0_btc=1)
    tx1 = complete_tx1(chain, loan)  # escrow confirmed once: the exit is valid already
    exit_tx = vaultero.build_borrower_exit(
        escrow=loan.escrow,
        outpoint=vaultero.Outpoint(
            Transaction.from_hex(tx1.raw_hex).inputs[0].prev_txid,
            Transaction.from_hex(tx1.raw_hex).inputs[0].prev_vout,
        ),
        value=DEPOSIT,
        feerate_sat_vb=5,
        network=NETWORK,
    )
    signed_exit = vaultero.finalize(
        exit_tx, borrower_sig=vaultero.sign_input(exit_tx, loan.borrower_secret)
    )
    exit_txid = chain.call("sendrawtransaction", signed_exit)  # the borrower walks away
    chain.scan()
    exit_fact = BitcoinFact.objects.get(kind=FactKind.SPEND_SEEN, payload__spending_txid=exit_txid)
    assert exit_fact.payload["path"] == "borrower_exit"

    # the exit holds the escrow in the mempool: TX_1 alone is refused as a replacement
    while_unconfirmed = transaction_broadcast(tx_id=tx1.pk)
    assert while_unconfirmed.outcome == "fee_too_low"
    assert while_unconfirmed.reason.startswith("insufficient fee, rejecting replacement")
    chain.mine(1)
    result = transaction_broadcast(tx_id=tx1.pk)
    assert result.outcome == "conflict"
    tx1.refresh_from_db()
    assert tx1.status == TxStatus.REPLACED
    assert BitcoinFact.objects.filter(kind=FactKind.TX_REPLACED, loan_ref=loan.ref).count() == 1


def test_an_invalid_transaction_is_refused_for_good_with_the_reason(
    chain: Chain, lender_key: str
) -> None:
    loan = new_loan(lender_key)
    signed = complete_tx1(chain, loan)
    witness = list(Transaction.from_hex(signed.raw_hex).inputs[0].witness)
    witness[1] = bytes([witness[1][0] ^ 1]) + witness[1][1:]  # the lender's signature
    tampered = Transaction.from_hex(signed.raw_hex).with_witness(0, tuple(witness)).to_hex()
    BitcoinTransaction.objects.filter(pk=signed.pk).update(raw_hex=tampered)
    result = transaction_broadcast(tx_id=signed.pk)
    assert result.outcome == "rejected"
    assert "script-verify" in result.reason or "Schnorr" in result.reason
    signed.refresh_from_db()
    assert signed.status == TxStatus.FAILED
    assert signed.monitoring.status == MonitoringStatus.FAILED
    fact = BitcoinFact.objects.get(kind=FactKind.TX_FAILED, loan_ref=loan.ref)
    assert fact.payload["reason"] == result.reason


def test_an_operator_rescan_reconfirms_from_a_height(chain: Chain, lender_key: str) -> None:
    loan = new_loan(lender_key)
    txid, vout = deposit_escrow(chain, loan, confirmations=2)
    payment = ObservedPayment.objects.get(txid=txid, vout=vout)
    assert payment.block_height is not None
    assert chain_rescan_from(height=payment.block_height) == 1  # its orphaned fact
    chain.scan()
    payment.refresh_from_db()
    assert (payment.status, payment.confirmations, payment.epoch) == ("confirmed", 2, 1)


def test_the_client_checks_the_network_and_batches_with_per_item_errors(chain: Chain) -> None:
    assert chain.rpc.check_network("regtest").chain == "regtest"
    with pytest.raises(WrongNetwork, match="BITCOIN_NETWORK is 'mainnet'"):
        chain.rpc.check_network("mainnet")
    tip_hash = chain.call("getbestblockhash")
    count, missing, block_hash = chain.rpc.batch(
        [("getblockcount", []), ("getrawtransaction", ["00" * 32, True]), ("getbestblockhash", [])]
    )
    assert isinstance(count, int)
    assert isinstance(missing, NotFound)
    assert block_hash == tip_hash
    assert chain.rpc.estimate_feerate_sat_vb(3) in (None, Decimal(20))


def test_a_missing_fee_estimate_is_alerted_and_stops_offers_on_mainnet(
    chain: Chain, settings: Any
) -> None:
    if chain.node.kind != "devnode":
        pytest.skip("needs the devnode's devsetfeeestimate (a bitcoind cannot be made young)")
    chain.call("devsetfeeestimate", None)
    try:
        assert target_feerate(chain.rpc) == settings.BITCOIN_FEERATE_FALLBACK_SAT_VB == 20
        alert = Alert.objects.get(key=FEE_ESTIMATE_ALERT, resolved_at__isnull=True)
        assert alert.severity == "warning"
        assert not fee_estimate_blocks_offers()  # regtest: offers go on
        settings.BITCOIN_NETWORK = "mainnet"
        assert fee_estimate_blocks_offers()
    finally:
        chain.call("devsetfeeestimate", "0.0003")
    assert target_feerate(chain.rpc) == 30
    assert not fee_estimate_blocks_offers()  # an estimate is back: the alert is resolved
    assert not Alert.objects.filter(key=FEE_ESTIMATE_ALERT, resolved_at__isnull=True).exists()
    chain.call("devsetfeeestimate", "0.0002")
