"""What each party was owed on the EVM side of a loan and what the loan contract pays them,
by the contract's flavour and the loan's outcome. Pure: the caller passes the figures.

Amount A, bond B (10% of A), processing fee F (0.001 rBTC, paid by the borrower at request):
| outcome | owed | btcloan pays | seed pays |
|---|---|---|---|
| activated (any later outcome) | borrower A + F | A + F | A + F |
| offer withdrawn | lender A + B + F | A + B + F | nothing: refunded into the contract |
| repaid | lender A + B | A + B | A: the bond stays in the contract |
| defaulted | lender B | B | B |
| repayment refunded | borrower A + B | A + B | (cannot happen: the refund never succeeds) |
| request never offered | borrower F | nothing | nothing |
What is owed but not paid stays in the contract ("stranded"): on the seed's contract only
`emergencyWithdraw` moves it, and it takes every loan's funds at once (docs/runbook.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from loans.models import ContractFlavour, LoanStatus

# PROCESSING_FEE() of both contracts (a constant in each).
PROCESSING_FEE_WEI = 10**15

ACTIVATED = frozenset(
    {
        LoanStatus.ACTIVE,
        LoanStatus.REPAYMENT_IN_PROGRESS,
        LoanStatus.REPAID,
        LoanStatus.REFUNDED_TO_BORROWER,
        LoanStatus.DEFAULTED,
    }
)


@dataclass(frozen=True)
class Flow:
    party: str  # "lender" or "borrower"
    item: str
    owed_wei: int
    paid_wei: int  # what the contract pays out for it

    @property
    def stranded_wei(self) -> int:
        return self.owed_wei - self.paid_wei


def _lender_flow(flavour: str, outcome: str, a: int, b: int, f: int) -> Flow | None:
    seed = flavour == ContractFlavour.SEED
    if outcome == LoanStatus.REFUNDED_TO_LENDER:
        return Flow(
            "lender", "offer withdrawn: amount + bond + fee", a + b + f, 0 if seed else a + b + f
        )
    if outcome == LoanStatus.REPAID:
        return Flow("lender", "repayment accepted: amount + bond", a + b, a if seed else a + b)
    if outcome == LoanStatus.DEFAULTED:
        return Flow("lender", "default: bond", b, b)
    return None


def loan_flows(
    *, flavour: str, outcome: str, amount_wei: int, bond_wei: int, fee_wei: int = PROCESSING_FEE_WEI
) -> list[Flow]:
    """The flows settled by `outcome` (the loan's last contract status)."""
    a, b, f = amount_wei, bond_wei, fee_wei
    flows = []
    if outcome in ACTIVATED:
        flows.append(Flow("borrower", "loan paid out: amount + fee", a + f, a + f))
    if outcome == LoanStatus.REFUNDED_TO_BORROWER:
        flows.append(Flow("borrower", "refused repayment refunded: amount + bond", a + b, a + b))
    lender = _lender_flow(flavour, outcome, a, b, f)
    if lender is not None:
        flows.append(lender)
    if outcome == LoanStatus.INVALID:  # the caller's word for "closed, never offered"
        flows.append(Flow("borrower", "processing fee of a request never offered", f, 0))
    return flows


def stranded_wei(flows: list[Flow]) -> int:
    return sum(flow.stranded_wei for flow in flows)
