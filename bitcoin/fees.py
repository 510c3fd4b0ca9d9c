"""Fee policy: a feerate from the node's estimate within the operator's floor and cap, and the
arithmetic of a CPFP child. Integer sat/vB and sats throughout."""

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

# A 1-input key-path P2TR -> 1-output P2TR transaction (the CPFP child), in vbytes.
CPFP_CHILD_VSIZE = 111
P2TR_DUST_SATS = 330


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


def cpfp_child_fee(*, parent_fee: int, parent_vsize: int, child_vsize: int, feerate: int) -> int:
    """The child's fee so that parent and child together pay `feerate` on their joint size,
    and never less than the child's own size at the floor (it must relay by itself)."""
    package = feerate * (parent_vsize + child_vsize) - parent_fee
    return max(package, child_vsize * settings.BITCOIN_FEERATE_FLOOR_SAT_VB)


def cpfp_child_value(*, input_value: int, child_fee: int) -> int:
    """What the child keeps after its fee; refuses to build dust."""
    value = input_value - child_fee
    if value < P2TR_DUST_SATS:
        raise FeeError(
            f"the fee output ({input_value} sat) cannot pay a {child_fee} sat child fee "
            f"and keep {P2TR_DUST_SATS} sat"
        )
    return value
