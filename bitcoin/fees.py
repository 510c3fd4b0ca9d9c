"""Fee policy: a feerate from the node's estimate within the operator's floor and cap, and the
alert while the node has none. Integer sat/vB and sats throughout (the arithmetic of a bump is
in services/bumping.py)."""

from __future__ import annotations

import logging
import math
from decimal import Decimal

from django.conf import settings

from bitcoin.rpc import BitcoinRPC
from btcloan.alerts.services import alert_raise, alert_resolve

logger = logging.getLogger(__name__)

# The open alert while the node gives no estimate; on mainnet it also stops new offers
# (bitcoin.selectors.fee_estimate_blocks_offers).
FEE_ESTIMATE_ALERT = "bitcoin:fee-estimate-missing"


class FeeError(Exception):
    """No fee satisfies the policy (e.g. the bump would leave dust)."""


def clamp_feerate(estimate_sat_vb: Decimal | None, *, floor: int, cap: int, fallback: int) -> int:
    """The estimate rounded up, or the fallback when there is none, kept within [floor, cap]."""
    if floor > cap:
        raise FeeError(f"feerate floor {floor} is above the cap {cap}")
    rate = fallback if estimate_sat_vb is None else math.ceil(estimate_sat_vb)
    return max(floor, min(cap, rate))


def target_feerate(rpc: BitcoinRPC, *, target_blocks: int | None = None) -> int:
    """The feerate (sat/vB) we pay now. A node without an estimate gets the fallback;
    a node that is down raises NodeUnavailable (we never guess while blind)."""
    blocks = target_blocks or settings.BITCOIN_FEE_TARGET_BLOCKS
    estimate = fee_estimate_check(rpc, target_blocks=blocks)
    return clamp_feerate(
        estimate,
        floor=settings.BITCOIN_FEERATE_FLOOR_SAT_VB,
        cap=settings.BITCOIN_FEERATE_CAP_SAT_VB,
        fallback=settings.BITCOIN_FEERATE_FALLBACK_SAT_VB,
    )


def fee_estimate_check(rpc: BitcoinRPC, *, target_blocks: int) -> Decimal | None:
    """The node's estimate (sat/vB); None ("Insufficient data", a young node) is logged and
    alerted, and the alert is closed when an estimate is back."""
    estimate = rpc.estimate_feerate_sat_vb(target_blocks)
    if estimate is None:
        mainnet = settings.BITCOIN_NETWORK == "mainnet"
        logger.warning(
            "bitcoin fees: no estimate for %d blocks from the node; using %d sat/vB%s",
            target_blocks,
            settings.BITCOIN_FEERATE_FALLBACK_SAT_VB,
            " and stopping new offers" if mainnet else "",
        )
        alert_raise(
            key=FEE_ESTIMATE_ALERT,
            severity="critical" if mainnet else "warning",
            title="The Bitcoin node has no fee estimate (estimatesmartfee: insufficient data)",
            details={"target_blocks": target_blocks, "network": settings.BITCOIN_NETWORK},
        )
    else:
        alert_resolve(key=FEE_ESTIMATE_ALERT)
    return estimate
