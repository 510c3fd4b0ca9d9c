"""The repayment's check before P_L may leave: the EtherSwap `Lockup` of the very transaction
that emitted `RepaymentAttempted` must lock the loan's amount under the loan's H_L, claimable
by the loan contract (or the lender), refundable to the loan contract, until the acceptance
deadline. A seed-flavour contract accepts any H_L in `attemptRepayment`: a repayment locked
under another hash can never be claimed with P_L, and accepting it would only publish P_L.

Reads the chain (a receipt): call outside `atomic()`.
"""

from __future__ import annotations

from typing import Any

from web3.exceptions import TransactionNotFound

from chainwatch.client import NODE_ERRORS
from chainwatch.client import NodeUnavailable as EvmNodeUnavailable
from chainwatch.models import DeliveryStatus, EvmEvent
from chainwatch.outbox.services import lender_account
from loans.chain import loan_contracts
from loans.models import Loan


def _repayment_event(loan: Loan) -> EvmEvent | None:
    return (
        EvmEvent.objects.filter(
            chain_id=loan.chain_id,
            contract_address__iexact=loan.contract_address,
            event_name="RepaymentAttempted",
            loan_id=loan.onchain_id,
        )
        .exclude(status=DeliveryStatus.ORPHANED)
        .order_by("-block_number", "-log_index")
        .first()
    )


def _lockups(tx_hash: str) -> tuple[list[Any], int | None]:
    """The Lockup events of a transaction (from its receipt) and its block; ([], None) when
    the node has no receipt (the repayment was reorged out)."""
    contracts = loan_contracts()
    try:
        receipt = contracts.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
    except NODE_ERRORS as exc:
        raise EvmNodeUnavailable(f"eth_getTransactionReceipt: {type(exc).__name__}") from exc
    except TransactionNotFound:
        return [], None
    swap = contracts.etherswap.address.lower()
    events = [
        e
        for e in contracts.decode_events(receipt)
        if e.name == "Lockup" and e.address.lower() == swap
    ]
    return events, int(receipt["blockNumber"])


def lockup_mismatch(loan: Loan, *, deadline_block: int) -> str | None:
    """None when the repayment's Lockup matches the loan; otherwise what the borrower did."""
    event = _repayment_event(loan)
    if event is None:
        return "no RepaymentAttempted event is recorded for the loan"
    lockups, block = _lockups(event.transaction_hash)
    if block is None:
        return f"the repayment transaction {event.transaction_hash} is not on chain"
    if len(lockups) != 1:
        return f"the repayment transaction locked {len(lockups)} swaps in EtherSwap, not one"
    args = lockups[0].args
    return _mismatch(loan, args, block=block, deadline_block=deadline_block)


def _mismatch(loan: Loan, args: dict[str, Any], *, block: int, deadline_block: int) -> str | None:
    loan_contract = loan.contract_address.lower()
    locked_hash = bytes(args["preimageHash"]).hex()
    if locked_hash != loan.preimage_hash_lender:
        return (
            f"the borrower locked the repayment under hash {locked_hash}, not the loan's H_L "
            f"{loan.preimage_hash_lender}: P_L could not claim it, so it is not revealed"
        )
    if int(args["amount"]) != int(loan.amount_wei):
        return f"the borrower locked {args['amount']} wei, the loan is {loan.amount_wei} wei"
    lender = lender_account().address.lower()
    claim = str(args["claimAddress"]).lower()
    if claim not in {loan_contract, lender} - {""}:
        return f"the repayment is claimable by {claim}, not by the loan contract or the lender"
    if str(args["refundAddress"]).lower() != loan_contract:
        return f"the repayment is refundable to {args['refundAddress']}, not the loan contract"
    timelock = int(args["timelock"])
    expected = {deadline_block, block + int(loan.timelock_lender)}
    if timelock not in expected:
        return f"the repayment's swap times out at block {timelock}, not {sorted(expected)}"
    return None
