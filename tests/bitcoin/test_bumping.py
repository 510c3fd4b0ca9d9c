"""Fee bumping on a mempool with policy (the devnode's: Core's floor, full RBF, packages).

TX_1 refused below a raised mempool floor gets in as a package; the borrower's exit holding
TX_1's input is beaten by package RBF; a small loan's TX_1 is bumped to 50 sat/vB with the
lender's wallet coins; a sweep is re-signed while the estimate rises. The floor and the
estimate are set through the devnode's dev RPCs: a bitcoind run skips those with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

import vaultero
from bitcoin.fees import FeeError
from bitcoin.models import (
    BitcoinTransaction,
    LenderUtxo,
    SpendPurpose,
    TxStatus,
    UtxoStatus,
    WatchPurpose,
)
from bitcoin.rpc import NotFound, btc_to_sats
from bitcoin.selectors import bump_candidates
from bitcoin.services import (
    collateral_lock_complete,
    lender_sweep_complete,
    spend_register_template,
    transaction_broadcast,
    transaction_bump,
    wallet_deposit_register,
    wallet_sync,
    watch_outpoint,
)
from bitcoin.services.wallet import WalletError, wallet_release, wallet_reserve
from tests.bitcoin.conftest import NETWORK, Chain, LoanTerms, new_loan
from tests.bitcoin.test_chain import deposit_escrow

pytestmark = [pytest.mark.bitcoin_node]


@pytest.fixture
def policy(chain: Chain) -> Iterator[Chain]:
    """The devnode's floor and estimate, put back after the test."""
    if chain.node.kind != "devnode":
        pytest.skip("sets the mempool floor and the estimate with the devnode's dev RPCs")
    try:
        yield chain
    finally:
        chain.call("devsetmempoolminfee", 0)
        chain.call("devsetfeeestimate", "0.0002")


def tx1_for(
    chain: Chain, loan: LoanTerms, *, loan_sats: int = 1_000_000, feerate: int = 2
) -> BitcoinTransaction:
    fee = loan_sats // 100
    deposit = loan_sats + fee + 20_000
    outpoint = deposit_escrow(chain, loan, sats=deposit)
    template = vaultero.build_collateral_lock(
        escrow=loan.escrow,
        outpoint=vaultero.Outpoint(*outpoint),
        value=deposit,
        collateral=loan.collateral,
        loan_sats=loan_sats,
        origination_fee_sats=fee,
        feerate_sat_vb=feerate,
        network=NETWORK,
    )
    spend_register_template(
        loan_ref=loan.ref, purpose=SpendPurpose.COLLATERAL_LOCK, template=template
    )
    return collateral_lock_complete(
        loan_ref=loan.ref,
        txid=template.txid,
        borrower_signature=vaultero.sign_input(template, loan.borrower_secret),
        borrower_preimage=loan.p_b,
        deadline_height=chain.rpc.block_count() + loan.escrow.csv_blocks,
    )


def package_rate(chain: Chain, child: BitcoinTransaction) -> float:
    entry = chain.rpc.mempool_entry(child.txid)
    return btc_to_sats(entry["fees"]["ancestor"]) / entry["ancestorsize"]


def test_tx1_under_a_raised_floor_is_confirmed_by_a_package(policy: Chain, lender_key: str) -> None:
    chain = policy
    loan = new_loan(lender_key)
    tx1 = tx1_for(chain, loan, feerate=2)
    chain.call("devsetmempoolminfee", "0.0001")  # a full mempool: 10 sat/vB
    refused = transaction_broadcast(tx_id=tx1.pk)
    assert refused.outcome == "fee_too_low"
    assert refused.reason.startswith("mempool min fee not met"), refused.reason
    tx1.refresh_from_db()
    assert tx1.status == TxStatus.SIGNED  # not "failed", not resent as is forever
    assert list(bump_candidates()) == [tx1]
    assert list(bump_candidates(tip_moved=False)) == [tx1]  # a fee refusal: every pass

    child = transaction_bump(tx_id=tx1.pk)
    assert child is not None
    assert child.parent_id == tx1.pk
    assert transaction_broadcast(tx_id=child.pk).outcome == "accepted"
    tx1.refresh_from_db()
    assert tx1.status == TxStatus.IN_MEMPOOL
    assert package_rate(chain, child) >= 20  # the estimate (never below the floor)
    assert transaction_bump(tx_id=tx1.pk) is None  # the package pays what is asked
    # In the mempool and no new block: the estimate and the deadline stand still.
    assert list(bump_candidates(tip_moved=False)) == []
    assert list(bump_candidates()) == [tx1]

    [block] = chain.mine(1)
    chain.scan()
    tx1.refresh_from_db()
    child.refresh_from_db()
    assert (tx1.status, child.status) == (TxStatus.CONFIRMED, TxStatus.CONFIRMED)
    assert tx1.block_hash == child.block_hash == block


def test_an_exit_holding_tx1s_input_at_t0_is_beaten_by_package_rbf(
    chain: Chain, lender_key: str
) -> None:
    loan = new_loan(lender_key, t0_btc=1)  # the exit path is open once the escrow confirms
    tx1 = tx1_for(chain, loan, feerate=2)
    escrow_in = vaultero.Transaction.from_hex(tx1.raw_hex).inputs[0]
    exit_tx = vaultero.build_borrower_exit(
        escrow=loan.escrow,
        outpoint=vaultero.Outpoint(escrow_in.prev_txid, escrow_in.prev_vout),
        value=chain.rpc.tx_out(escrow_in.prev_txid, escrow_in.prev_vout).value_sats,  # type: ignore[union-attr]
        feerate_sat_vb=2,
        network=NETWORK,
    )
    signed_exit = vaultero.finalize(
        exit_tx, borrower_sig=vaultero.sign_input(exit_tx, loan.borrower_secret)
    )
    exit_txid = chain.call("sendrawtransaction", signed_exit)  # the borrower's race

    refused = transaction_broadcast(tx_id=tx1.pk)
    assert refused.outcome == "fee_too_low"
    assert refused.reason.startswith("insufficient fee, rejecting replacement"), refused.reason
    child = transaction_bump(tx_id=tx1.pk)
    assert child is not None
    assert transaction_broadcast(tx_id=child.pk).outcome == "accepted"
    assert set(chain.call("getrawmempool")) == {tx1.txid, child.txid}  # the exit is gone
    chain.mine(1)
    chain.scan()
    tx1.refresh_from_db()
    assert tx1.status == TxStatus.CONFIRMED
    assert chain.rpc.tx_out(escrow_in.prev_txid, escrow_in.prev_vout) is None
    with pytest.raises(NotFound):
        chain.rpc.raw_transaction(exit_txid)


def test_a_small_loans_tx1_is_bumped_to_50_sat_vb_with_wallet_coins(
    policy: Chain, lender_key: str
) -> None:
    chain = policy
    loan = new_loan(lender_key)
    tx1 = tx1_for(chain, loan, loan_sats=500_000, feerate=2)  # a 5,000 sat fee output
    assert transaction_broadcast(tx_id=tx1.pk).outcome == "accepted"
    chain.call("devsetfeeestimate", "0.0005")  # 50 sat/vB
    with pytest.raises(FeeError, match="wallet"):
        transaction_bump(tx_id=tx1.pk)  # the fee output alone cannot, the wallet is empty

    lender_address = vaultero.key_path_address(lender_key, NETWORK)
    deposits = [chain.fund(lender_address, 12_000), chain.fund(lender_address, 9_000)]
    chain.call("generateblock", chain.faucet, [txid for txid, _ in deposits])
    for txid, vout in deposits:
        wallet_deposit_register(txid=txid, vout=vout)

    child = transaction_bump(tx_id=tx1.pk)
    assert child is not None
    spent = vaultero.Transaction.from_hex(child.raw_hex).inputs
    assert (spent[0].prev_txid, len(spent)) == (tx1.txid, 3)  # fee output + both coins
    reserved = LenderUtxo.objects.filter(status=UtxoStatus.RESERVED, reserved_by=child.txid)
    assert reserved.count() == 2
    with pytest.raises(WalletError, match="confirmed coins free"):
        wallet_reserve(amount_sats=1)  # nothing left to give twice

    assert transaction_broadcast(tx_id=child.pk).outcome == "accepted"
    assert package_rate(chain, child) >= 50
    chain.mine(1)
    chain.scan()
    wallet_sync()
    coins = LenderUtxo.objects.filter(txid__in=[txid for txid, _ in deposits])
    assert set(coins.values_list("status", flat=True)) == {UtxoStatus.SPENT}
    change = LenderUtxo.objects.get(txid=child.txid)
    assert (change.status, change.source) == (UtxoStatus.AVAILABLE, "cpfp")
    assert wallet_release(reserved_by=[child.txid]) == 0


def test_a_sweep_is_re_signed_while_the_estimate_rises(policy: Chain, lender_key: str) -> None:
    chain = policy
    loan = new_loan(lender_key, t1_btc=2)
    tx1 = tx1_for(chain, loan, feerate=5)
    assert transaction_broadcast(tx_id=tx1.pk).outcome == "accepted"
    watch_outpoint(txid=tx1.txid, vout=1, loan_ref=loan.ref, purpose=WatchPurpose.COLLATERAL)
    chain.mine(1)
    chain.scan()
    value = chain.rpc.tx_out(tx1.txid, 1).value_sats  # type: ignore[union-attr]
    template = vaultero.build_lender_sweep(
        collateral=loan.collateral,
        outpoint=vaultero.Outpoint(tx1.txid, 1),
        value=value,
        feerate_sat_vb=5,
        network=NETWORK,
    )
    spend_register_template(loan_ref=loan.ref, purpose=SpendPurpose.LENDER_SWEEP, template=template)
    first = lender_sweep_complete(loan_ref=loan.ref, txid=template.txid)
    chain.mine(1)  # t1_btc reached
    chain.call("devsetfeeestimate", "0.00005")
    assert transaction_broadcast(tx_id=first.pk).outcome == "accepted"
    assert transaction_bump(tx_id=first.pk) is None  # it pays the estimate

    versions = [first]
    for rate in ("0.0003", "0.0006"):
        chain.call("devsetfeeestimate", rate)
        bumped = transaction_bump(tx_id=versions[-1].pk)
        assert bumped is not None
        assert bumped.replaces_id == versions[-1].pk
        assert transaction_broadcast(tx_id=bumped.pk).outcome == "accepted"
        assert chain.call("getrawmempool") == [bumped.txid]
        assert bumped.fee_sats is not None
        assert bumped.vsize is not None
        assert bumped.fee_sats >= int(Decimal(rate) * 100_000) * bumped.vsize
        versions.append(bumped)
    statuses = [BitcoinTransaction.objects.get(pk=v.pk).status for v in versions]
    assert statuses == [TxStatus.REPLACED, TxStatus.REPLACED, TxStatus.IN_MEMPOOL]
    chain.mine(1)
    chain.scan()
    assert BitcoinTransaction.objects.get(pk=versions[-1].pk).status == TxStatus.CONFIRMED


def test_a_child_is_replaced_by_a_richer_one_as_the_estimate_rises(
    policy: Chain, lender_key: str
) -> None:
    chain = policy
    tx1 = tx1_for(chain, new_loan(lender_key), feerate=2)
    assert transaction_broadcast(tx_id=tx1.pk).outcome == "accepted"
    chain.call("devsetfeeestimate", "0.0001")  # 10 sat/vB: TX_1 at 2 is at risk
    first = transaction_bump(tx_id=tx1.pk)
    assert first is not None
    assert transaction_broadcast(tx_id=first.pk).outcome == "accepted"
    assert transaction_bump(tx_id=tx1.pk) is None  # the package pays 10
    chain.call("devsetfeeestimate", "0.00025")  # 25 sat/vB: the fee output still pays
    second = transaction_bump(tx_id=first.pk)  # a child's bump bumps its TX_1
    assert second is not None
    assert second.replaces_id == first.pk
    assert transaction_broadcast(tx_id=second.pk).outcome == "accepted"  # RBF of the child
    assert set(chain.call("getrawmempool")) == {tx1.txid, second.txid}
    first.refresh_from_db()
    assert first.status == TxStatus.REPLACED
    assert package_rate(chain, second) >= 25
    chain.mine(1)
    chain.scan()
    second.refresh_from_db()
    assert second.status == TxStatus.CONFIRMED


def test_bumps_stop_at_the_limit_with_an_alert(
    policy: Chain, lender_key: str, settings: Any
) -> None:
    from btcloan.models import Alert

    chain = policy
    settings.BITCOIN_MAX_FEE_BUMPS = 1
    tx1 = tx1_for(chain, new_loan(lender_key), feerate=2)
    assert transaction_broadcast(tx_id=tx1.pk).outcome == "accepted"
    chain.call("devsetfeeestimate", "0.0001")
    first = transaction_bump(tx_id=tx1.pk)
    assert first is not None
    chain.call("devsetfeeestimate", "0.0004")
    assert transaction_bump(tx_id=tx1.pk) is None
    assert Alert.objects.filter(key=f"bitcoin:bump-limit:{tx1.txid}").exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_workers_never_reserve_the_same_coin() -> None:
    import threading

    from django.db import connection

    LenderUtxo.objects.bulk_create(
        LenderUtxo(
            txid=f"{i:064x}",
            vout=0,
            value_sats=1_000,
            script_pubkey="51",
            source="deposit",
            confirmed_height=1,
        )
        for i in range(12)
    )
    start = threading.Barrier(4)
    taken: list[list[tuple[str, int]]] = []
    refused: list[str] = []

    def worker() -> None:
        try:
            start.wait()
            for _ in range(3):
                try:
                    _token, coins = wallet_reserve(amount_sats=1_500)  # two coins each time
                    taken.append([(c.txid, c.vout) for c in coins])
                except WalletError as exc:
                    refused.append(str(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    coins = [coin for batch in taken for coin in batch]
    assert len(coins) == len(set(coins))  # no coin reserved twice
    assert all(len(batch) == 2 for batch in taken)
    assert len(taken) + len(refused) == 12
    assert len(taken) >= 5  # a loser's coins go back at once (at most one left over)
    assert LenderUtxo.objects.filter(status=UtxoStatus.RESERVED).count() == len(coins)
