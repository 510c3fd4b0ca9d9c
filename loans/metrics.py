"""The loan engine's figures for /metrics, computed from the database at scrape time."""

from __future__ import annotations

from contextlib import suppress

from django.db.models import Count

from btcloan.health import ProbeResult
from btcloan.metrics import DEADLINE_MARGIN_BLOCKS, WORKFLOW_FAILURES
from loans.deadlines import Chain, loan_deadlines
from loans.models import LoanWorkflow, WorkflowStatus, WorkflowType
from loans.selectors import known_heads, loans_open


def scrape() -> None:
    failed = dict(
        LoanWorkflow.objects.filter(status=WorkflowStatus.FAILED)
        .values("type")
        .annotate(n=Count("id"))
        .values_list("type", "n")
    )
    for workflow_type in WorkflowType.values:
        WORKFLOW_FAILURES.labels(workflow_type=workflow_type).set(failed.get(workflow_type, 0))

    margins: dict[str, int] = {}
    heads: dict[int, tuple[int | None, int | None]] = {}
    for loan in loans_open():
        if loan.chain_id not in heads:
            heads[loan.chain_id] = known_heads(chain_id=loan.chain_id)
        evm, btc = heads[loan.chain_id]
        if evm is None:
            continue
        for deadline in loan_deadlines(loan, evm_head=evm, btc_head=btc):
            margins[deadline.chain] = min(
                margins.get(deadline.chain, deadline.blocks_left), deadline.blocks_left
            )
    for chain in Chain:
        if chain in margins:
            DEADLINE_MARGIN_BLOCKS.labels(chain=chain.value).set(margins[chain])
        else:
            with suppress(KeyError):  # no open loan has a deadline there: no sample at all
                DEADLINE_MARGIN_BLOCKS.remove(chain.value)


def contract_flavour_probe() -> ProbeResult:
    """Critical: the loan contract's flavour is known and agrees with LOAN_CONTRACT_FLAVOUR
    (a pin the bytecode contradicts would have the desk compute every deadline wrong). An
    unreachable node is the evm_node probe's to report."""
    from chainwatch.client import NODE_ERRORS, NodeUnavailable
    from chainwatch.evm.flavour import FlavourError
    from loans.chain import ChainNotConfigured, loan_contract_flavour

    try:
        flavour = loan_contract_flavour()
    except ChainNotConfigured:
        return ProbeResult(True, "no loan contract configured yet")
    except FlavourError as exc:
        return ProbeResult(False, str(exc))
    except NodeUnavailable:
        return ProbeResult(True, "not checked: the EVM node did not answer (see evm_node)")
    except NODE_ERRORS:
        return ProbeResult(True, "not checked: the EVM node did not answer (see evm_node)")
    return ProbeResult(True, f"the loan contract is {flavour.value}", {"flavour": flavour.value})
