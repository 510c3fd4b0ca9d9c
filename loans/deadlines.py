"""Every deadline of a loan on both chains, who must act before it, and how much room is left.

Pure: it reads a loan's recorded blocks and the two chain heads, and nothing else.

A deadline's `block` is the last block in which the party that must act can still act;
`remedy_block` the first in which the other party's remedy opens. They depend on the loan
contract's flavour (chainwatch.evm.flavour):
- btcloan: the timely action is allowed while `block.number <= start + t` and the remedy from
  start + t + 1 on (t_B, t_L, D from the offer, repayment and activation blocks; D is the
  loan's snapshot).
- seed: the borrower accepts while `block.number < offer + t_B` and repays while
  `block.number < activation + D`, D being the contract's GLOBAL loanDuration (the loan's
  `loan_duration` follows it: ParametersUpdated and the watchdog refresh it). Its remedies
  open "after" start + t: we take start + t + 1, the later reading, so a lender action is
  never sent into a block where it could revert. The seed has no deadline for accepting a
  repayment; the lender keeps btcloan's t_L anyway.
Bitcoin: an output confirmed at height h with a CSV of n can be spent from block h + n on
(BIP-68), so the last block before that path opens is h + n - 1. `blocks_left` and
`remedy_left` count from the next block to be mined: 0 means only the next block is left
(or: the next block may carry the remedy), negative means passed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from loans.models import BitcoinStage, ContractFlavour, Loan, LoanStatus


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
    remedy_block: int  # the first block in which the other party's remedy opens
    remedy_left: int  # like blocks_left; <= 0: the next block may carry the remedy

    @property
    def passed(self) -> bool:
        return self.blocks_left < 0

    @property
    def remedy_open(self) -> bool:
        return self.remedy_left <= 0


def _left(deadline: int, head: int) -> int:
    return deadline - (head + 1)


def _deadline(
    kind: DeadlineKind,
    chain: Chain,
    last: int,
    head: int,
    must_act: Party,
    action: str,
    remedy: int | None = None,
) -> Deadline:
    remedy_block = last + 1 if remedy is None else remedy
    return Deadline(
        kind,
        chain,
        last,
        _left(last, head),
        must_act,
        action,
        remedy_block,
        _left(remedy_block, head),
    )


def _evm_window(loan: Loan, start: int, t: int, *, strict: bool) -> tuple[int, int]:
    """(last block for the party that must act, first block of the remedy) on the EVM side."""
    last = start + t - 1 if strict and loan.contract_flavour == ContractFlavour.SEED else start + t
    return last, start + t + 1


def loan_deadlines(loan: Loan, *, evm_head: int, btc_head: int | None) -> list[Deadline]:
    """The deadlines that matter in the loan's current state, soonest first per chain."""
    found = _evm_deadlines(loan, evm_head)
    if btc_head is not None:
        found.extend(_bitcoin_deadlines(loan, btc_head))
    return found


def _evm_deadlines(loan: Loan, head: int) -> list[Deadline]:
    status = loan.status
    if status == LoanStatus.OFFERED and loan.offer_block is not None:
        last, remedy = _evm_window(loan, loan.offer_block, loan.timelock_borrower, strict=True)
        return [
            _deadline(
                DeadlineKind.OFFER_EXPIRY,
                Chain.EVM,
                last,
                head,
                Party.BORROWER,
                "accept the offer (acceptLoanOffer)",
                remedy,
            )
        ]
    if status == LoanStatus.ACTIVE and loan.activation_block is not None:
        last, remedy = _evm_window(loan, loan.activation_block, loan.loan_duration, strict=True)
        return [
            _deadline(
                DeadlineKind.REPAYMENT_DUE,
                Chain.EVM,
                last,
                head,
                Party.BORROWER,
                "repay the loan (attemptRepayment)",
                remedy,
            )
        ]
    if status == LoanStatus.REPAYMENT_IN_PROGRESS and loan.repayment_block is not None:
        last, remedy = _evm_window(loan, loan.repayment_block, loan.timelock_lender, strict=False)
        return [
            _deadline(
                DeadlineKind.REPAYMENT_ACCEPTANCE,
                Chain.EVM,
                last,
                head,
                Party.LENDER,
                "accept the repayment (acceptLoanRepayment)",
                remedy,
            )
        ]
    return []


ESCROW_OPEN_STAGES = frozenset(
    {BitcoinStage.ESCROW_CONFIRMED, BitcoinStage.PRESIGNED, BitcoinStage.COLLATERAL_LOCKED}
)


def _bitcoin_deadlines(loan: Loan, head: int) -> list[Deadline]:
    found = []
    if loan.bitcoin_stage in ESCROW_OPEN_STAGES and loan.escrow_confirmed_height is not None:
        found.append(
            _deadline(
                DeadlineKind.ESCROW_EXIT,
                Chain.BITCOIN,
                loan.escrow_confirmed_height + loan.escrow_csv_blocks - 1,
                head,
                Party.LENDER,
                "get TX_1 confirmed before the borrower can exit the escrow",
            )
        )
    if (
        loan.bitcoin_stage == BitcoinStage.COLLATERAL_CONFIRMED
        and loan.collateral_confirmed_height is not None
    ):
        repaid = loan.status in {LoanStatus.REPAID, LoanStatus.REPAYMENT_IN_PROGRESS}
        found.append(
            _deadline(
                DeadlineKind.COLLATERAL_SWEEP,
                Chain.BITCOIN,
                loan.collateral_confirmed_height + loan.collateral_csv_blocks - 1,
                head,
                Party.BORROWER if repaid else Party.LENDER,
                "release the collateral" if repaid else "sweep the collateral once mature",
            )
        )
    return found


def smallest_margin(deadlines: list[Deadline]) -> Deadline | None:
    """The deadline with the fewest blocks left (comparing within each chain's own units)."""
    return min(deadlines, key=lambda d: d.blocks_left, default=None)
