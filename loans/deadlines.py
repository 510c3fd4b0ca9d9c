"""Every deadline of a loan on both chains, who must act before it, and how much room is left.

Pure: it reads a loan's recorded blocks and the two chain heads, and nothing else.

A deadline's `block` is the last block in which the party that must act can still act; from
the next block on, the other party may act. EVM: the contract allows the timely action while
`block.number <= start + t` (t_B, t_L, t_D from the offer, repayment and activation blocks).
Bitcoin: an output confirmed at height h with a CSV of n can be spent from block h + n on
(BIP-68), so the last block before that path opens is h + n - 1. `blocks_left` counts from
the next block to be mined: 0 means only the next block is left, negative means passed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from loans.models import BitcoinStage, Loan, LoanStatus


class Chain(enum.StrEnum):
    EVM = "evm"
    BITCOIN = "bitcoin"


class Party(enum.StrEnum):
    BORROWER = "borrower"
    LENDER = "lender"


class DeadlineKind(enum.StrEnum):
    # The borrower must accept the offer before it; afterwards the lender withdraws it.
    OFFER_EXPIRY = "offer_expiry"
    # The borrower must repay before it; afterwards the lender marks the loan defaulted.
    REPAYMENT_DUE = "repayment_due"
    # The lender must accept a repayment before it; afterwards the borrower takes it back.
    REPAYMENT_ACCEPTANCE = "repayment_acceptance"
    # TX_1 must confirm before it; from it on the borrower can take the escrow back.
    ESCROW_EXIT = "escrow_exit"
    # The borrower must release the collateral before it (if repaid); from it on the lender
    # can sweep (after a default or a refused repayment).
    COLLATERAL_SWEEP = "collateral_sweep"


@dataclass(frozen=True)
class Deadline:
    kind: DeadlineKind
    chain: Chain
    block: int  # the last block in which `must_act` can act
    blocks_left: int  # blocks after the next one still inside the deadline; < 0: passed
    must_act: Party  # who loses something if the deadline passes without action
    action: str

    @property
    def passed(self) -> bool:
        return self.blocks_left < 0


def _left(deadline: int, head: int) -> int:
    return deadline - (head + 1)


def loan_deadlines(loan: Loan, *, evm_head: int, btc_head: int | None) -> list[Deadline]:
    """The deadlines that matter in the loan's current state, soonest first per chain."""
    found: list[Deadline] = []
    status = loan.status
    if status == LoanStatus.OFFERED and loan.offer_block is not None:
        block = loan.offer_block + loan.timelock_borrower
        found.append(
            Deadline(
                DeadlineKind.OFFER_EXPIRY,
                Chain.EVM,
                block,
                _left(block, evm_head),
                Party.BORROWER,
                "accept the offer (acceptLoanOffer)",
            )
        )
    if status == LoanStatus.ACTIVE and loan.activation_block is not None:
        block = loan.activation_block + loan.loan_duration
        found.append(
            Deadline(
                DeadlineKind.REPAYMENT_DUE,
                Chain.EVM,
                block,
                _left(block, evm_head),
                Party.BORROWER,
                "repay the loan (attemptRepayment)",
            )
        )
    if status == LoanStatus.REPAYMENT_IN_PROGRESS and loan.repayment_block is not None:
        block = loan.repayment_block + loan.timelock_lender
        found.append(
            Deadline(
                DeadlineKind.REPAYMENT_ACCEPTANCE,
                Chain.EVM,
                block,
                _left(block, evm_head),
                Party.LENDER,
                "accept the repayment (acceptLoanRepayment)",
            )
        )
    if btc_head is None:
        return found
    escrow_open = loan.bitcoin_stage in {
        BitcoinStage.ESCROW_CONFIRMED,
        BitcoinStage.PRESIGNED,
        BitcoinStage.COLLATERAL_LOCKED,
    }
    if escrow_open and loan.escrow_confirmed_height is not None:
        height = loan.escrow_confirmed_height + loan.escrow_csv_blocks - 1
        found.append(
            Deadline(
                DeadlineKind.ESCROW_EXIT,
                Chain.BITCOIN,
                height,
                _left(height, btc_head),
                Party.LENDER,
                "get TX_1 confirmed before the borrower can exit the escrow",
            )
        )
    if (
        loan.bitcoin_stage == BitcoinStage.COLLATERAL_CONFIRMED
        and loan.collateral_confirmed_height is not None
    ):
        height = loan.collateral_confirmed_height + loan.collateral_csv_blocks - 1
        repaid = status in {LoanStatus.REPAID, LoanStatus.REPAYMENT_IN_PROGRESS}
        found.append(
            Deadline(
                DeadlineKind.COLLATERAL_SWEEP,
                Chain.BITCOIN,
                height,
                _left(height, btc_head),
                Party.BORROWER if repaid else Party.LENDER,
                "release the collateral" if repaid else "sweep the collateral once mature",
            )
        )
    return found


def smallest_margin(deadlines: list[Deadline]) -> Deadline | None:
    """The deadline with the fewest blocks left (comparing within each chain's own units)."""
    return min(deadlines, key=lambda d: d.blocks_left, default=None)
