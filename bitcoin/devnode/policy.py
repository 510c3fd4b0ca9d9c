"""The devnode's mempool policy: the parts of Bitcoin Core's (v28+) that fees and replacement
depend on, with Core's reject reasons and messages. Pure functions over integers.

Feerates are sat/kvB, as Core's CFeeRate; `fee_for` rounds up, as CFeeRate::GetFee does.
"""

from __future__ import annotations

from dataclasses import dataclass

from bitcoin.devnode.codec import Tx, TxOut

COIN = 100_000_000
MAX_REPLACEMENT_CANDIDATES = 100  # BIP-125 rule 5


class PolicyRejected(Exception):
    """A policy refusal: `reason` as testmempoolaccept prints it, `message` as
    sendrawtransaction does. `reconsiderable` marks a fee refusal a package may cure."""

    def __init__(self, reason: str, details: str = "", *, reconsiderable: bool = False) -> None:
        self.reason = reason
        self.message = f"{reason}, {details}" if details else reason
        self.reconsiderable = reconsiderable
        super().__init__(self.message)


@dataclass
class Policy:
    """What a `bitcoind -regtest` started with our options applies (see localnodes)."""

    min_relay_feerate: int = 1_000  # -minrelaytxfee 0.00001
    incremental_relay_feerate: int = 1_000  # -incrementalrelayfee 0.00001
    dust_relay_feerate: int = 3_000  # -dustrelayfee (Core's default)
    # The floor a full mempool raises (Core's rolling minimum fee); settable here (0: none).
    mempool_min_fee: int = 0
    # estimatesmartfee's answer in sat/kvB; None answers "Insufficient data".
    fee_estimate: int | None = 20_000

    def effective_min_fee(self) -> int:
        """getmempoolinfo.mempoolminfee: the floor, never under the min relay feerate."""
        return max(self.mempool_min_fee, self.min_relay_feerate)


def fee_for(feerate: int, vsize: int) -> int:
    """CFeeRate(feerate).GetFee(vsize), rounded up."""
    return -(-feerate * vsize // 1000)


def rate_of(fee: int, vsize: int) -> int:
    """CFeeRate(fee, vsize): sat/kvB, rounded down."""
    return fee * 1000 // vsize if vsize else 0


def format_money(sats: int) -> str:
    """Core's FormatMoney: 8 decimals, trailing zeros trimmed down to 2."""
    sign = "-" if sats < 0 else ""
    whole, frac = divmod(abs(sats), COIN)
    digits = f"{frac:08d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{digits}"


def format_feerate(rate: int) -> str:
    """CFeeRate::ToString: BTC/kvB with 8 decimals."""
    whole, frac = divmod(rate, COIN)
    return f"{whole}.{frac:08d} BTC/kvB"


def dust_threshold(out: TxOut, dust_relay_feerate: int) -> int:
    """GetDustThreshold: the cost of spending the output at the dust relay feerate; 0 for an
    unspendable (OP_RETURN) output."""
    script = out.script_pubkey
    if script[:1] == b"\x6a" or len(script) > 10_000:
        return 0
    size = 8 + len(_compact(len(script))) + len(script)
    witness_program = 4 <= len(script) <= 42 and script[0] in (0, *range(0x51, 0x61))
    witness_program = witness_program and script[1] + 2 == len(script)
    size += 32 + 4 + 1 + 107 // 4 + 4 if witness_program else 32 + 4 + 1 + 107 + 4
    return fee_for(dust_relay_feerate, size)


def _compact(n: int) -> bytes:
    return bytes([n]) if n < 0xFD else b"\xfd" + n.to_bytes(2, "little")


def check_standard(tx: Tx, policy: Policy) -> None:
    """The IsStandardTx rules we reproduce: transaction version and dust outputs."""
    if not 1 <= tx.version <= 3:
        raise PolicyRejected("version")
    if any(out.value < dust_threshold(out, policy.dust_relay_feerate) for out in tx.vout):
        raise PolicyRejected("dust")


def check_feerate(fee: int, vsize: int, policy: Policy, *, package: bool = False) -> None:
    """One transaction: the min relay feerate, which no package can cure (Core v28+ outside
    TRUC), then the mempool floor, which a package can. A package: CheckFeeRate on its totals."""
    relay = fee_for(policy.min_relay_feerate, vsize)
    if not package and fee < relay:
        raise PolicyRejected("min relay fee not met", f"{fee} < {relay}")
    floor = fee_for(policy.mempool_min_fee, vsize)
    if floor > 0 and fee < floor:
        raise PolicyRejected("mempool min fee not met", f"{fee} < {floor}", reconsiderable=True)
    if fee < relay:
        raise PolicyRejected("min relay fee not met", f"{fee} < {relay}", reconsiderable=True)


@dataclass(frozen=True)
class Conflict:
    txid_hex: str
    fee: int
    vsize: int


def check_replacement(
    *,
    txid_hex: str,
    fee: int,
    vsize: int,
    direct: list[Conflict],
    evicted_fees: int,
    evicted_count: int,
    policy: Policy,
) -> None:
    """Core v28's ReplacementChecks under full RBF (no signalling needed): a higher feerate
    than every direct conflict (rule 6), at most 100 evictions (rule 5), no less absolute fee
    than everything evicted (rule 3) and the difference paying for its own relay (rule 4)."""
    new_rate = rate_of(fee, vsize)
    for conflict in direct:
        old_rate = rate_of(conflict.fee, conflict.vsize)
        if new_rate <= old_rate:
            raise PolicyRejected(
                "insufficient fee",
                f"rejecting replacement {txid_hex}; new feerate {format_feerate(new_rate)} "
                f"<= old feerate {format_feerate(old_rate)}",
                reconsiderable=True,
            )
    if evicted_count > MAX_REPLACEMENT_CANDIDATES:
        raise PolicyRejected(
            "too many potential replacements",
            f"rejecting replacement {txid_hex}; too many potential replacements "
            f"({evicted_count} > {MAX_REPLACEMENT_CANDIDATES})",
        )
    pays_for_rbf(txid_hex=txid_hex, fee=fee, vsize=vsize, evicted_fees=evicted_fees, policy=policy)


def pays_for_rbf(*, txid_hex: str, fee: int, vsize: int, evicted_fees: int, policy: Policy) -> None:
    """BIP-125 rules 3 and 4 (Core's PaysForRBF)."""
    if fee < evicted_fees:
        raise PolicyRejected(
            "insufficient fee",
            f"rejecting replacement {txid_hex}, less fees than conflicting txs; "
            f"{format_money(fee)} < {format_money(evicted_fees)}",
            reconsiderable=True,
        )
    additional, relay = fee - evicted_fees, fee_for(policy.incremental_relay_feerate, vsize)
    if additional < relay:
        raise PolicyRejected(
            "insufficient fee",
            f"rejecting replacement {txid_hex}, not enough additional fees to relay; "
            f"{format_money(additional)} < {format_money(relay)}",
            reconsiderable=True,
        )


def check_package_replacement(
    *,
    child_txid_hex: str,
    parent_fee: int,
    parent_vsize: int,
    fee: int,
    vsize: int,
    direct: list[Conflict],
    evicted_fees: int,
    evicted_count: int,
    policy: Policy,
) -> None:
    """Core v28's package RBF (a 1-parent-1-child package replacing a cluster of at most
    two): the package pays for what it evicts plus its own relay, its feerate is above the
    parent's alone and above every conflict's (our stand-in for the feerate diagram check)."""
    prefix = "package RBF failed"
    if evicted_count > MAX_REPLACEMENT_CANDIDATES:
        raise PolicyRejected(prefix, "too many potential replacements")
    try:
        pays_for_rbf(
            txid_hex=child_txid_hex, fee=fee, vsize=vsize, evicted_fees=evicted_fees, policy=policy
        )
    except PolicyRejected as refused:
        detail = refused.message.partition(", ")[2]
        raise PolicyRejected(f"{prefix}: insufficient anti-DoS fees", detail) from None
    package_rate = rate_of(fee, vsize)
    if rate_of(parent_fee, parent_vsize) >= package_rate:
        raise PolicyRejected(f"{prefix}: package feerate is less than or equal to parent feerate")
    if any(package_rate <= rate_of(c.fee, c.vsize) for c in direct):
        raise PolicyRejected(f"{prefix}: insufficient feerate: does not improve feerate diagram")
