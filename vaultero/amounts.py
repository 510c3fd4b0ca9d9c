"""Amount and timelock arithmetic shared by the desk and the borrower (integers only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from vaultero.encoding import address_to_script_pubkey, check_network, check_sats
from vaultero.errors import InvalidAmountError
from vaultero.scripts import check_csv
from vaultero.transactions import check_feerate, collateral_lock_vsize

WEI_PER_SAT: Final[int] = 10**10
ORIGIN_FEE_PERCENTAGE: Final[int] = 1  # the loan contract's ORIGIN_FEE_PERCENTAGE()
DEFAULT_EVM_BLOCKS_PER_BTC_BLOCK: Final[int] = 20  # Rootstock
P2TR_FEE_OUTPUT: Final[bytes] = b"\x51\x20" + b"\x00" * 32


def sats_from_wei(wei: int) -> int:
    """1 rBTC = 10^18 wei = 10^8 sat; rounds down (sub-satoshi wei cannot be locked)."""
    return check_sats(wei, name="wei", allow_zero=True) // WEI_PER_SAT


def origination_fee_sats(loan_sats: int, percentage: int = ORIGIN_FEE_PERCENTAGE) -> int:
    """`L * ORIGIN_FEE_PERCENTAGE / 100`, rounded down like the contract's integer maths."""
    check_sats(loan_sats, name="loan_sats")
    check_sats(percentage, name="percentage", allow_zero=True)
    return loan_sats * percentage // 100


def csv_blocks_from_evm(t_evm: int, ratio: int = DEFAULT_EVM_BLOCKS_PER_BTC_BLOCK) -> int:
    """A timelock stored in EVM blocks as a Bitcoin CSV (`t // ratio`, 1..65535)."""
    if isinstance(t_evm, bool) or not isinstance(t_evm, int) or t_evm < 0:
        raise InvalidAmountError(f"t_evm must be a non-negative integer, got {t_evm!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 1:
        raise InvalidAmountError(f"ratio must be a positive integer, got {ratio!r}")
    return check_csv(t_evm // ratio)


@dataclass(frozen=True)
class DepositBreakdown:
    collateral_sats: int
    origination_fee_sats: int
    miner_fee_sats: int
    tx1_vsize: int
    feerate_sat_vb: int

    @property
    def total_sats(self) -> int:
        return self.collateral_sats + self.origination_fee_sats + self.miner_fee_sats


def required_deposit(
    *,
    loan_sats: int,
    feerate_sat_vb: int,
    network: str,
    lender_fee_address: str | None = None,
    percentage: int = ORIGIN_FEE_PERCENTAGE,
) -> DepositBreakdown:
    """The smallest escrow value `build_collateral_lock` accepts for this loan and feerate.

    TX_1's size depends only on the lender's fee output (a P2TR one when no address is given)."""
    check_network(network)
    fee = origination_fee_sats(loan_sats, percentage)
    feerate = check_feerate(feerate_sat_vb)
    script = (
        address_to_script_pubkey(lender_fee_address, network)
        if lender_fee_address
        else P2TR_FEE_OUTPUT
    )
    vsize = collateral_lock_vsize(lender_fee_script_pubkey=script)
    return DepositBreakdown(loan_sats, fee, feerate * vsize, vsize, feerate)
