"""Monitoring of open transactions and watched outpoints (fee bumping: services/bumping.py).

The scanner records what blocks say; the monitor asks the node about what blocks cannot tell:
whether our unconfirmed transactions are still in its mempool (else they are rebroadcast) and
whether a watched outpoint was spent without the scanner seeing it (an alert for the
reconciler). It batches its calls: one HTTP round trip per 500 questions.

What only a block can change is weighed once per new tip, not on every pass: a transaction
refused for a timelock is not resent, and one in the mempool not weighed for a fee bump, until
the node's best block moves (a sweep waiting days for t1 would otherwise cost a broadcast, with
its guard's chain reads, every pass).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from django.core.cache import cache
from django.db.models import F
from django.utils import timezone

from bitcoin.models import BitcoinTransaction, TransactionMonitoring, TxStatus
from bitcoin.rpc import BitcoinRPC, NotFound, RPCError, get_client
from bitcoin.selectors import open_transactions, unspent_watched_outpoints, waiting_for_a_block
from bitcoin.services.transactions import transaction_transition

logger = logging.getLogger(__name__)

BATCH = 500
_TIP_KEY = "btcloan:btc:monitor-tip"


@dataclass
class RefreshSummary:
    checked_transactions: int = 0
    checked_outpoints: int = 0
    rebroadcast: list[int] = field(default_factory=list)
    unexplained_spends: list[str] = field(default_factory=list)
    tip_moved: bool = True  # the node's best block changed since the previous pass

    def as_dict(self) -> dict[str, Any]:
        return {
            "tip_moved": self.tip_moved,
            "checked_transactions": self.checked_transactions,
            "checked_outpoints": self.checked_outpoints,
            "rebroadcast": self.rebroadcast,
            "unexplained_spends": self.unexplained_spends,
        }


def _ask(rpc: BitcoinRPC, calls: list[tuple[str, list[Any]]], batched: bool) -> list[Any]:
    """Answers (or RPCError instances) in order, batched or one call at a time."""
    if batched:
        answers: list[Any] = []
        for start in range(0, len(calls), BATCH):
            answers += rpc.batch(calls[start : start + BATCH])
        return answers
    out: list[Any] = []
    for method, params in calls:
        try:
            out.append(rpc.call(method, *params))
        except RPCError as exc:
            out.append(exc)
    return out


def transactions_refresh(*, rpc: BitcoinRPC | None = None, batched: bool = True) -> RefreshSummary:
    """Check open transactions and watched outpoints against the node (no RPC in atomic())."""
    rpc = rpc or get_client()
    summary = RefreshSummary(tip_moved=_tip_moved(rpc))
    txs = list(open_transactions())
    answers = _ask(rpc, [("getrawtransaction", [tx.txid, True]) for tx in txs], batched)
    now = timezone.now()
    for tx, answer in zip(txs, answers, strict=True):
        if isinstance(answer, NotFound):
            if tx.status == TxStatus.IN_MEMPOOL:
                transaction_transition(
                    tx_id=tx.pk,
                    to=TxStatus.BROADCAST,
                    cause="fell out of the mempool",
                    from_statuses=(TxStatus.IN_MEMPOOL,),
                )
            summary.rebroadcast.append(tx.pk)
        elif isinstance(answer, dict) and not answer.get("confirmations"):
            if tx.status == TxStatus.BROADCAST:
                transaction_transition(
                    tx_id=tx.pk,
                    to=TxStatus.IN_MEMPOOL,
                    cause="seen in the mempool",
                    from_statuses=(TxStatus.BROADCAST,),
                )
        elif isinstance(answer, RPCError):
            logger.warning("bitcoin monitor: %s: %s", tx.txid, answer)
    # A signed transaction not yet accepted is (re)sent: one waiting on a timelock or a fee,
    # and one whose broadcast task was lost with its worker before its first attempt.
    summary.rebroadcast += _signed_to_send(tip_moved=summary.tip_moved)
    TransactionMonitoring.objects.filter(transaction__in=[tx.pk for tx in txs]).update(
        last_checked_at=now, checks=F("checks") + 1
    )
    summary.checked_transactions = len(txs)

    outpoints = list(unspent_watched_outpoints())
    answers = _ask(rpc, [("gettxout", [o.txid, o.vout, True]) for o in outpoints], batched)
    for outpoint, answer in zip(outpoints, answers, strict=True):
        if answer is None:
            # Spent (or not yet created) and no spend observed: the scanner missed something,
            # or the funding is not there: the reconciler's business, loudly.
            summary.unexplained_spends.append(f"{outpoint.txid}:{outpoint.vout}")
    if summary.unexplained_spends:
        logger.warning(
            "bitcoin monitor: %d watched outpoints are not in the UTXO set and no spend was "
            "observed (first: %s)",
            len(summary.unexplained_spends),
            summary.unexplained_spends[0],
        )
    summary.checked_outpoints = len(outpoints)
    return summary


def _signed_to_send(*, tip_moved: bool) -> list[int]:
    signed = BitcoinTransaction.objects.filter(status=TxStatus.SIGNED)
    if not tip_moved:
        signed = signed.exclude(waiting_for_a_block())
    return list(signed.values_list("pk", flat=True))


def _tip_moved(rpc: BitcoinRPC) -> bool:
    """Whether the best block changed since the last pass asked (a reorg to the same height
    counts); True when nothing is remembered (a restart, a flushed cache)."""
    tip = str(rpc.call("getbestblockhash"))
    previous = cache.get(_TIP_KEY)
    cache.set(_TIP_KEY, tip, timeout=None)
    return previous != tip
