"""The lender's Bitcoin wallet: the confirmed outputs paying the lender's key-path address.

They fund what a loan's own outputs cannot: a CPFP child for a TX_1 whose origination-fee
output is too small for the feerate needed. (A sweep's replacement needs none: it pays its fee
out of the collateral it sweeps, which is the lender's by then.) Coins are
reserved before they are spent (compare-and-set under a row lock, skipping rows another
worker holds), bound to the spending txid once it is built, released when that spend is
replaced or refused, and marked spent once a block spends them.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from bitcoin.models import BitcoinTransaction, LenderUtxo, TxStatus, UtxoStatus
from bitcoin.rpc import BitcoinRPC, get_client
from bitcoin.signer import get_signer
from vaultero import Transaction

logger = logging.getLogger(__name__)

SYNC_WINDOW_BLOCKS = 2016


class WalletError(Exception):
    """The wallet cannot do this (not enough confirmed coins, not the lender's output)."""


@dataclass(frozen=True)
class Coin:
    txid: str
    vout: int
    value_sats: int


def wallet_deposit_register(*, txid: str, vout: int, rpc: BitcoinRPC | None = None) -> LenderUtxo:
    """Record an output an operator paid to the lender's address (checked on the node: it
    must be unspent, confirmed and pay the lender's key-path address)."""
    rpc = rpc or get_client()
    out = rpc.tx_out(txid, vout, include_mempool=False)
    ours = get_signer().key_path_script_pubkey().hex()
    if out is None or out.confirmations < 1 or out.script_pubkey_hex != ours:
        raise WalletError(f"{txid}:{vout} is not a confirmed unspent output to the lender")
    height = rpc.block_count() - out.confirmations + 1
    row, _created = LenderUtxo.objects.get_or_create(
        txid=txid,
        vout=vout,
        defaults={
            "value_sats": out.value_sats,
            "script_pubkey": ours,
            "source": "deposit",
            "confirmed_height": height,
        },
    )
    return row


def wallet_sync(*, rpc: BitcoinRPC | None = None) -> dict[str, int]:
    """Record the lender's outputs of our confirmed transactions; mark spent the coins a
    block spent; release reservations whose spend was replaced or refused."""
    ours = get_signer().key_path_script_pubkey()
    added = 0
    # Recently confirmed transactions not yet looked at (a sweep to another payout address
    # has no output of ours: two weeks of blocks bound how often it is read again).
    newest = BitcoinTransaction.objects.aggregate(top=Max("block_height"))["top"] or 0
    confirmed = (
        BitcoinTransaction.objects.filter(
            status=TxStatus.CONFIRMED, block_height__gte=newest - SYNC_WINDOW_BLOCKS
        )
        .exclude(txid__in=LenderUtxo.objects.values("txid"))
        .only("txid", "raw_hex", "purpose", "loan_ref", "block_height")
    )
    for row in confirmed.iterator():
        if row.block_height is None:
            continue
        tx = Transaction.from_hex(row.raw_hex)
        for index, out in enumerate(tx.outputs):
            if out.script_pubkey != ours:
                continue
            _, created = LenderUtxo.objects.get_or_create(
                txid=row.txid,
                vout=index,
                defaults={
                    "value_sats": out.value,
                    "script_pubkey": ours.hex(),
                    "source": row.purpose,
                    "loan_ref": row.loan_ref,
                    "confirmed_height": row.block_height,
                },
            )
            added += created
    spent = _mark_spent(rpc or get_client())
    released = _release_dead_reservations()
    return {"added": added, "spent": spent, "released": released}


def _mark_spent(rpc: BitcoinRPC) -> int:
    """Coins no longer in the chain's UTXO set (spent in a block) are spent."""
    live = LenderUtxo.objects.exclude(status=UtxoStatus.SPENT)
    coins = list(live.values_list("pk", "txid", "vout"))
    if not coins:
        return 0
    answers = rpc.batch([("gettxout", [txid, vout, False]) for _pk, txid, vout in coins])
    gone = [pk for (pk, _t, _v), answer in zip(coins, answers, strict=True) if answer is None]
    return LenderUtxo.objects.filter(pk__in=gone).update(
        status=UtxoStatus.SPENT, updated_at=timezone.now()
    )


def _release_dead_reservations() -> int:
    """A reservation bound to a spend that was replaced or refused goes back to available."""
    dead = BitcoinTransaction.objects.filter(
        status__in=(TxStatus.REPLACED, TxStatus.FAILED)
    ).values_list("txid", flat=True)
    return wallet_release(reserved_by=list(dead))


def wallet_reserve(*, amount_sats: int, exclude_loan_ref: str = "") -> tuple[str, list[Coin]]:
    """Reserve confirmed coins worth at least `amount_sats`, largest first; (token, coins).
    Rows locked by another worker are skipped, and each is taken by compare-and-set, so no
    coin is ever reserved twice. Raises WalletError when the wallet cannot cover it."""
    token = f"r-{uuid.uuid4().hex}"
    taken: list[Coin] = []
    available = LenderUtxo.objects.filter(status=UtxoStatus.AVAILABLE).order_by("-value_sats", "id")
    with transaction.atomic():
        total = 0
        while total < amount_sats:
            # one row at a time: FOR UPDATE locks only the coin taken, not every candidate
            coin = available.select_for_update(skip_locked=True).first()
            if coin is None:
                transaction.set_rollback(True)
                raise WalletError(
                    f"the lender's wallet has {total} sat of confirmed coins free, "
                    f"{amount_sats} needed"
                )
            moved = LenderUtxo.objects.filter(pk=coin.pk, status=UtxoStatus.AVAILABLE).update(
                status=UtxoStatus.RESERVED, reserved_by=token, reserved_at=timezone.now()
            )
            if moved:
                taken.append(Coin(coin.txid, coin.vout, coin.value_sats))
                total += coin.value_sats
    return token, taken


def wallet_bind(*, tokens: list[str], txid: str) -> None:
    """The coins reserved under `tokens` (a reservation, a replaced spend's txid) now
    belong to the built spend `txid`."""
    LenderUtxo.objects.filter(reserved_by__in=tokens, status=UtxoStatus.RESERVED).update(
        reserved_by=txid
    )


def wallet_release(*, reserved_by: list[str]) -> int:
    """Reservations (tokens or txids) back to available, unless a block spent the coin."""
    if not reserved_by:
        return 0
    return LenderUtxo.objects.filter(
        reserved_by__in=reserved_by, status=UtxoStatus.RESERVED
    ).update(status=UtxoStatus.AVAILABLE, reserved_by="", reserved_at=None)


def wallet_coins(*, reserved_by: str) -> list[Coin]:
    return [
        Coin(row.txid, row.vout, row.value_sats)
        for row in LenderUtxo.objects.filter(reserved_by=reserved_by).order_by("id")
    ]
