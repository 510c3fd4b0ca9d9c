"""Fee bumping that works on a real mempool.

TX_1 (the collateral lock) must confirm before the escrow's exit path opens (its
`deadline_height`). It is bumped by a CPFP child sent with it as a package (`submitpackage`),
so a TX_1 the node refuses alone (below the mempool floor, or as a replacement of the
borrower's exit) still gets in:
- when it pays less than the node's estimate for confirming within half the blocks left
  (deadline risk: the fewer blocks left, the shorter the target and the higher the rate);
- at once when the node refused it for its fee (`mempool min fee not met`, `insufficient fee,
  rejecting replacement`: the exit race, won back by package RBF);
- again (the child replaced by a richer one) whenever the estimate rises above what the
  package pays.
The child spends TX_1's origination-fee output, plus confirmed coins of the lender's wallet
when that output is too small for the fee.

The lender's sweep is re-signed at the current rate (a replacement spending the same
collateral output) while it pays less than the estimate, or was refused for its fee.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from django.conf import settings

from bitcoin.fees import FeeError, target_feerate
from bitcoin.hooks import broadcast_refusal
from bitcoin.models import BitcoinTransaction, RegisteredSpend, SpendPurpose, TxPurpose, TxStatus
from bitcoin.rpc import BitcoinRPC, btc_to_sats, get_client
from bitcoin.services.signing import cpfp_child_complete, lender_sweep_complete, spend_register
from bitcoin.services.wallet import Coin, WalletError, wallet_coins, wallet_release, wallet_reserve
from bitcoin.signer import get_signer
from btcloan.alerts.services import alert_raise
from vaultero import SEQUENCE_RBF, Transaction, TxIn, TxOut

logger = logging.getLogger(__name__)

P2TR_DUST_SATS = 330
INCREMENTAL_SAT_VB = 1  # Core's incremental relay feerate (bitcoind runs with it pinned)
OPEN = (TxStatus.SIGNED, TxStatus.BROADCAST, TxStatus.IN_MEMPOOL)
FEE_REFUSALS = ("mempool min fee not met", "min relay fee not met", "insufficient fee")


def child_vsize(inputs: int) -> int:
    """A key-path P2TR child with `inputs` inputs and one P2TR output, in vbytes."""
    return (214 + 230 * inputs + 3) // 4


def refused_for_fee(row: BitcoinTransaction) -> bool:
    """Not in the mempool because the node wanted more fee (not a timelock, not invalid)."""
    return row.status != TxStatus.IN_MEMPOOL and any(
        marker in row.last_error for marker in FEE_REFUSALS
    )


def live_replacement(row: BitcoinTransaction) -> BitcoinTransaction | None:
    return row.replaced_by.filter(status__in=OPEN).order_by("-id").first()


def live_child(parent: BitcoinTransaction) -> BitcoinTransaction | None:
    """The newest CPFP child that is not replaced or failed."""
    return parent.children.filter(status__in=(*OPEN, TxStatus.CONFIRMED)).order_by("-id").first()


def deadline_feerate(rpc: BitcoinRPC, row: BitcoinTransaction) -> int:
    """The feerate to confirm within half the blocks left before the deadline (the
    configured target when there is no deadline), within the floor and cap."""
    target = int(settings.BITCOIN_FEE_TARGET_BLOCKS)
    if row.deadline_height is not None:
        left = row.deadline_height - (rpc.block_count() + 1)
        target = max(1, min(target, left // 2))
    rate = target_feerate(rpc, target_blocks=target)
    if refused_for_fee(row):  # it is not in the mempool: at least the floor, and a bit
        rate = max(rate, int(rpc.mempool_min_feerate_sat_vb()) + 1)
    return rate


@dataclass(frozen=True)
class Rival:
    """The mempool transaction holding TX_1's input (the borrower's exit): what package RBF
    must beat (its fee with descendants, and its own feerate)."""

    fee_with_descendants: int
    rate_sat_kvb: int


def _rival(rpc: BitcoinRPC, parent: Transaction, own_txid: str) -> Rival | None:
    txin = parent.inputs[0]
    spender = rpc.spending_txid(txin.prev_txid, txin.prev_vout)
    if spender is None or spender == own_txid:
        return None
    entry = rpc.mempool_entry(spender)
    base = btc_to_sats(entry["fees"]["base"])
    return Rival(btc_to_sats(entry["fees"]["descendant"]), base * 1000 // int(entry["vsize"]))


@dataclass(frozen=True)
class ChildPlan:
    parent: BitcoinTransaction
    rate: int  # sat/vB for the package
    rival: Rival | None
    previous: BitcoinTransaction | None  # the child this one replaces

    def fee(self, vsize: int) -> int:
        """The child's fee: the package at `rate`; enough to replace the rival as a package
        (BIP-125 rules 3/4 on the package, a higher feerate) and the previous child (rules
        3/4/6 on the child alone); never less than its own size at the floor."""
        parent_fee, package = self.parent.fee_sats or 0, (self.parent.vsize or 0) + vsize
        fee = self.rate * package - parent_fee
        if self.rival is not None:
            fee = max(
                fee,
                self.rival.fee_with_descendants + INCREMENTAL_SAT_VB * package - parent_fee,
                self.rival.rate_sat_kvb * package // 1000 + 1 - parent_fee,
            )
        previous = self.previous
        if previous is not None and previous.fee_sats is not None and previous.vsize:
            fee = max(
                fee,
                previous.fee_sats + INCREMENTAL_SAT_VB * vsize,
                previous.fee_sats * vsize // previous.vsize + 1,
            )
        return max(fee, vsize * int(settings.BITCOIN_FEERATE_FLOOR_SAT_VB))


def collateral_lock_bump(*, tx_id: int, rpc: BitcoinRPC | None = None) -> BitcoinTransaction | None:
    """A new CPFP child for TX_1 when the deadline risk, a fee refusal or a rival asks for
    one (None: TX_1 pays enough, or is not waiting). The child is signed and in the outbox;
    the broadcaster sends it with TX_1 as a package. Raises FeeError when neither the fee
    output nor the wallet can pay."""
    parent = BitcoinTransaction.objects.get(pk=tx_id)
    if parent.purpose != TxPurpose.COLLATERAL_LOCK or parent.status not in OPEN:
        return None
    if parent.fee_sats is None or not parent.vsize:
        raise FeeError(f"transaction {parent.txid} has no known fee to bump from")
    rpc = rpc or get_client()
    previous = live_child(parent)
    tx = Transaction.from_hex(parent.raw_hex)
    rival = None if parent.status == TxStatus.IN_MEMPOOL else _rival(rpc, tx, parent.txid)
    rate = deadline_feerate(rpc, parent)
    paid_fee = parent.fee_sats + ((previous.fee_sats or 0) if previous else 0)
    paid_vsize = parent.vsize + ((previous.vsize or 0) if previous else 0)
    if rival is None and not refused_for_fee(parent) and paid_fee >= rate * paid_vsize:
        return None
    if _guard_refuses(parent):
        return None
    plan = ChildPlan(parent=parent, rate=rate, rival=rival, previous=previous)
    child = _child_build(plan, tx)
    logger.info(
        "bitcoin bump: child %s pays %s sat for TX_1 %s (package %s sat/vB%s%s)",
        child.txid,
        child.fee_sats,
        parent.txid,
        rate,
        ", replacing a rival" if rival else "",
        f", replacing child {previous.txid}" if previous else "",
    )
    return child


def _guard_refuses(row: BitcoinTransaction) -> bool:
    """The lender's guard, asked before anything is signed for a bump."""
    refusal = broadcast_refusal(row)
    if refusal is not None:
        logger.info("bitcoin bump of %s refused by the guard: %s", row.txid, refusal)
    return refusal is not None


def _fee_output(tx: Transaction) -> int:
    ours = get_signer().key_path_script_pubkey()
    index = next((i for i, out in enumerate(tx.outputs) if out.script_pubkey == ours), None)
    if index is None:
        raise FeeError("TX_1 has no output to the lender's own address")
    return index


def _child_build(plan: ChildPlan, parent_tx: Transaction) -> BitcoinTransaction:
    """Inputs: the fee output, the previous child's wallet coins, more coins if short."""
    index = _fee_output(parent_tx)
    fee_value = parent_tx.outputs[index].value
    coins = wallet_coins(reserved_by=plan.previous.txid) if plan.previous else []
    token = ""
    for _ in range(3):
        vsize = child_vsize(1 + len(coins))
        short = plan.fee(vsize) + P2TR_DUST_SATS - fee_value - sum(c.value_sats for c in coins)
        if short <= 0:
            break
        try:  # one more input's size, paid at the package rate, is part of what is short
            token, taken = wallet_reserve(amount_sats=short + plan.rate * 58)
        except WalletError as exc:
            raise FeeError(f"TX_1 {plan.parent.txid}: {exc}") from None
        coins += taken
    else:
        wallet_release(reserved_by=[token])
        raise FeeError(f"TX_1 {plan.parent.txid}: the wallet cannot pay the child")
    try:
        return _child_sign(plan, parent_tx, index, coins, token)
    except Exception:
        wallet_release(reserved_by=[token])
        raise


def _child_sign(
    plan: ChildPlan, parent_tx: Transaction, index: int, coins: list[Coin], token: str
) -> BitcoinTransaction:
    ours = get_signer().key_path_script_pubkey()
    fee_out = parent_tx.outputs[index]
    fee = plan.fee(child_vsize(1 + len(coins)))
    total = fee_out.value + sum(c.value_sats for c in coins)
    inputs = (
        TxIn(plan.parent.txid, index, sequence=SEQUENCE_RBF),
        *(TxIn(c.txid, c.vout, sequence=SEQUENCE_RBF) for c in coins),
    )
    unsigned = Transaction(version=2, inputs=inputs, outputs=(TxOut(total - fee, ours),))
    prevouts = (fee_out, *(TxOut(c.value_sats, ours) for c in coins))
    return cpfp_child_complete(
        parent=plan.parent,
        unsigned=unsigned,
        prevouts=prevouts,
        reservations=[r for r in (token, plan.previous.txid if plan.previous else "") if r],
        replaces=plan.previous,
    )


def lender_sweep_bump(*, tx_id: int, rpc: BitcoinRPC | None = None) -> BitcoinTransaction | None:
    """The sweep re-signed at the current rate, replacing the one in the mempool (or the one
    refused for its fee); None when it pays enough or is not waiting."""
    row = BitcoinTransaction.objects.get(pk=tx_id)
    if row.purpose != TxPurpose.LENDER_SWEEP or row.status not in OPEN:
        return None
    if live_replacement(row) is not None or not (row.fee_sats and row.vsize):
        return None
    if row.status != TxStatus.IN_MEMPOOL and not refused_for_fee(row):
        return None  # waiting for t1 (non-BIP68-final) or for the node
    rpc = rpc or get_client()
    rate = deadline_feerate(rpc, row)
    if not refused_for_fee(row) and row.fee_sats >= rate * row.vsize:
        return None
    if _guard_refuses(row):
        return None
    spend = RegisteredSpend.objects.get(txid=row.txid, purpose=SpendPurpose.LENDER_SWEEP)
    fee = max(rate * row.vsize, row.fee_sats + INCREMENTAL_SAT_VB * row.vsize)
    value = spend.prevout_value_sats - fee
    if value < P2TR_DUST_SATS:
        raise FeeError(f"the sweep {row.txid} cannot pay {fee} sat")
    tx = Transaction.from_hex(spend.unsigned_hex)
    bumped = replace(tx, outputs=(TxOut(value, tx.outputs[0].script_pubkey),))
    spend_register(
        loan_ref=row.loan_ref,
        purpose=SpendPurpose.LENDER_SWEEP,
        unsigned_hex=bumped.to_hex(),
        prevout_script_pubkey=spend.prevout_script_pubkey,
        prevout_value_sats=spend.prevout_value_sats,
        leaf_script=spend.leaf_script,
        control_block=spend.control_block,
        input_index=spend.input_index,
    )
    new = lender_sweep_complete(loan_ref=row.loan_ref, txid=bumped.txid, replaces=row)
    logger.info("bitcoin bump: sweep %s re-signed as %s at %s sat/vB", row.txid, new.txid, rate)
    return new


def transaction_bump(*, tx_id: int, rpc: BitcoinRPC | None = None) -> BitcoinTransaction | None:
    """Bump what this transaction stands for: TX_1 (or the TX_1 of a CPFP child) by a new
    child, a sweep by a re-signed one. None when nothing needs it. After
    BITCOIN_MAX_FEE_BUMPS bumps of one transaction it stops and raises an alert."""
    row = BitcoinTransaction.objects.get(pk=tx_id)
    if row.purpose == TxPurpose.CPFP and row.parent_id is not None:
        row = BitcoinTransaction.objects.get(pk=row.parent_id)
    bumps = row.children.count() if row.purpose == TxPurpose.COLLATERAL_LOCK else _replacements(row)
    if bumps >= int(settings.BITCOIN_MAX_FEE_BUMPS):
        alert_raise(
            key=f"bitcoin:bump-limit:{row.txid}",
            severity="critical",
            title=f"{row.purpose} {row.txid} bumped {bumps} times and still not confirmed",
            details={"txid": row.txid, "last_error": row.last_error[:500]},
            loan_ref=row.loan_ref or None,
        )
        return None
    if row.purpose == TxPurpose.COLLATERAL_LOCK:
        return collateral_lock_bump(tx_id=row.pk, rpc=rpc)
    if row.purpose == TxPurpose.LENDER_SWEEP:
        return lender_sweep_bump(tx_id=row.pk, rpc=rpc)
    return None


def _replacements(row: BitcoinTransaction) -> int:
    """How many of our own versions came before this one."""
    count = 0
    while row.replaces_id is not None and count < 1000:
        row = BitcoinTransaction.objects.get(pk=row.replaces_id)
        count += 1
    return count
