"""The one transition table: for each target state, the states a loan may reach it from.

Two dimensions move independently: `status` follows the contract (plus the backend's closed,
deleted and invalid), `bitcoin_stage` follows the escrow and collateral outputs.
"""

from __future__ import annotations

from typing import Literal

from loans.models import BitcoinStage, LoanStatus

S = LoanStatus
B = BitcoinStage

LoanField = Literal["status", "bitcoin_stage"]

_EVM_TERMINAL = frozenset({S.REFUNDED_TO_LENDER, S.REPAID, S.REFUNDED_TO_BORROWER, S.DEFAULTED})

STATUS_SOURCES: dict[str, frozenset[str]] = {
    # Chain facts win: an offer confirmed on chain is applied even to a request the backend
    # had judged invalid (the loan is taken up again, with an alert).
    S.OFFERED: frozenset({S.REQUESTED, S.INVALID}),
    S.ACTIVE: frozenset({S.OFFERED}),
    S.REFUNDED_TO_LENDER: frozenset({S.OFFERED}),
    S.REPAYMENT_IN_PROGRESS: frozenset({S.ACTIVE}),
    S.REPAID: frozenset({S.REPAYMENT_IN_PROGRESS}),
    S.REFUNDED_TO_BORROWER: frozenset({S.REPAYMENT_IN_PROGRESS}),
    S.DEFAULTED: frozenset({S.ACTIVE}),
    # The contract forgets a finished loan; the backend may still owe a sweep, so deletion
    # does not close it.
    S.DELETED: _EVM_TERMINAL,
    # Closed: nothing is left to do on either chain (a request never offered is closed once
    # the borrower took the escrow back).
    S.CLOSED: _EVM_TERMINAL | {S.REQUESTED, S.DELETED},
    S.INVALID: frozenset({S.REQUESTED}),
}

BITCOIN_STAGE_SOURCES: dict[str, frozenset[str]] = {
    B.ESCROW_SEEN: frozenset({B.AWAITING_ESCROW}),
    B.ESCROW_CONFIRMED: frozenset({B.AWAITING_ESCROW, B.ESCROW_SEEN}),
    # The borrower may sign before the deposit confirms; the stage moves once both hold.
    B.PRESIGNED: frozenset({B.ESCROW_CONFIRMED}),
    B.COLLATERAL_LOCKED: frozenset({B.PRESIGNED}),
    # After a restart TX_1 may be seen confirmed without its broadcast having been recorded.
    B.COLLATERAL_CONFIRMED: frozenset({B.PRESIGNED, B.COLLATERAL_LOCKED}),
    B.RELEASED: frozenset({B.COLLATERAL_LOCKED, B.COLLATERAL_CONFIRMED}),
    B.SWEPT: frozenset({B.COLLATERAL_LOCKED, B.COLLATERAL_CONFIRMED}),
    B.EXITED: frozenset({B.ESCROW_SEEN, B.ESCROW_CONFIRMED, B.PRESIGNED}),
}

TABLES: dict[LoanField, dict[str, frozenset[str]]] = {
    "status": STATUS_SOURCES,
    "bitcoin_stage": BITCOIN_STAGE_SOURCES,
}


def allowed_sources(field: LoanField, target: str) -> frozenset[str]:
    """The states `field` may move to `target` from; empty when `target` is never reachable."""
    return TABLES[field].get(target, frozenset())


def is_allowed(field: LoanField, source: str, target: str) -> bool:
    return source in allowed_sources(field, target)


# The Bitcoin side's forward order up to a final outcome (released, swept, exited).
BITCOIN_PROGRESS: tuple[str, ...] = (
    B.AWAITING_ESCROW,
    B.ESCROW_SEEN,
    B.ESCROW_CONFIRMED,
    B.PRESIGNED,
    B.COLLATERAL_LOCKED,
    B.COLLATERAL_CONFIRMED,
)


def is_behind(target: str, current: str) -> bool:
    """True when a fact would move the Bitcoin stage to where it already was or behind it:
    a late or repeated observation, not a conflict."""
    if target not in BITCOIN_PROGRESS:
        return False
    if current not in BITCOIN_PROGRESS:
        return True  # an outcome is reached; progress facts about earlier steps are old news
    return BITCOIN_PROGRESS.index(target) <= BITCOIN_PROGRESS.index(current)
