"""The committed artifacts expose exactly the seed system's ABI (PROTOCOL.md).

Selectors and topics are computed here from the signatures as PROTOCOL.md writes them, so
a renamed parameter type, a reordered struct field or a lost `indexed` fails this test.
"""

from __future__ import annotations

from typing import Any

import pytest
from eth_utils import function_signature_to_4byte_selector, keccak

from chainwatch.evm.artifacts import (
    ETHERSWAP_CONTRACT,
    LOAN_CONTRACT,
    SEED_LOAN_CONTRACT,
    load_artifact,
)

# PROTOCOL.md "Functions" and views, as Solidity signatures.
LOAN_FUNCTIONS = {
    "setEtherSwapAddress(address)",
    "updateLenderBtcPubkey(string)",
    "updateParameters(uint256,uint256,uint256,uint256,uint256)",
    "requestLoan(uint256,string,string,bytes32,bytes32,uint32)",
    "associateLenderPreimageHash(uint256,bytes32)",
    "extendLoanOffer(uint256,bytes32,bytes32)",
    "acceptLoanOffer(uint256,bytes32)",
    "withdrawLoanOffer(uint256)",
    "attemptRepayment(uint256,bytes32)",
    "acceptLoanRepayment(uint256,bytes32)",
    "withdrawRepaymentAttempt(uint256)",
    "markAsDefaulted(uint256)",
    "deleteCompletedLoan(uint256)",
    "getLoan(uint256)",
    "getLoanParameters(uint256)",
    "getTotalLoans()",
    "getLoanIdByBorrower(address)",
    "lenderBtcPubkey()",
    "etherSwap()",
    "loanDuration()",
    "timelockLoanReq()",
    "timelockBtcEscrow()",
    "timelockRepaymentAccept()",
    "timelockBtcCollateral()",
    "PROCESSING_FEE()",
    "MIN_LOAN_AMOUNT()",
    "LENDER_BOND_PERCENTAGE()",
    "ORIGIN_FEE_PERCENTAGE()",
    "owner()",
    "transferOwnership(address)",
    "renounceOwnership()",
    "borrowerToLoanId(address)",
    "loans(uint256)",
    "loanParameters(uint256)",
    "loanInterestRate()",
}
# Selectors as the seed's deployed contracts have them (first 4 bytes of keccak256).
KNOWN_SELECTORS = {
    "transferOwnership(address)": "f2fde38b",
    "owner()": "8da5cb5b",
    "renounceOwnership()": "715018a6",
}
# PROTOCOL.md "Events": name, then (type, indexed) in order.
LOAN_EVENTS: dict[str, list[tuple[str, bool]]] = {
    "LenderUpdated": [("address", True), ("string", False)],
    "LoanRequested": [("uint256", True), ("address", True), ("uint256", False), ("string", False)],
    "LenderPreimageHashAssociated": [("uint256", True), ("address", True), ("bytes32", False)],
    "LoanOffered": [("uint256", True), ("address", True), ("uint256", False), ("uint256", False)],
    "LoanActivated": [("uint256", True), ("address", True), ("bytes32", False)],
    "LoanRefundedToLender": [("uint256", True), ("address", True)],
    "RepaymentAttempted": [("uint256", True), ("address", True), ("uint256", False)],
    "RepaymentAccepted": [("uint256", True), ("address", True), ("bytes32", False)],
    "RepaymentRefundedToBorrowerWithBond": [
        ("uint256", True),
        ("address", True),
        ("uint256", False),
    ],
    "ParametersUpdated": [("uint256", False)] * 5,
    "LoanDefaulted": [("uint256", True), ("address", True), ("uint256", False)],
    "LoanDeleted": [("uint256", True), ("address", True)],
    "EtherSwapAddressSet": [("address", True)],
    "OwnershipTransferred": [("address", True), ("address", True)],
}
SWAP_FUNCTIONS = {
    "lock(bytes32,address,uint256)",
    "claim(bytes32,uint256,address,address,uint256)",
    "refund(bytes32,uint256,address,address,uint256)",
    # ours, beyond the seed's interface: the bound loan contract and the swap book
    "loanContract()",
    "swaps(bytes32)",
    "hashValues(bytes32,uint256,address,address,uint256)",
}
SWAP_EVENTS: dict[str, list[tuple[str, bool]]] = {
    "Lockup": [
        ("bytes32", True),
        ("uint256", False),
        ("address", False),
        ("address", True),
        ("uint256", False),
    ],
    "Claim": [("bytes32", True), ("bytes32", False)],
    "Refund": [("bytes32", True)],
}
# getLoan's struct, field by field, in order (PROTOCOL.md).
LOAN_STRUCT = [
    ("borrowerAddr", "address"),
    ("borrowerBtcPubkey", "string"),
    ("amount", "uint256"),
    ("bondAmount", "uint256"),
    ("status", "uint8"),
    ("preimageHashBorrower", "bytes32"),
    ("preimageHashLender", "bytes32"),
    ("txid_p2tr0", "bytes32"),
    ("vout_p2tr0", "uint32"),
    ("offerBlockheight", "uint256"),
    ("activationBlockheight", "uint256"),
    ("repaymentBlockheight", "uint256"),
]
LOAN_PARAMETERS = [
    ("int_rate", "uint256"),
    ("proc_fee", "uint256"),
    ("duration", "uint256"),
    ("tl_borrower", "uint256"),
    ("tl_lender", "uint256"),
]


def _type(entry: dict[str, Any]) -> str:
    if entry["type"] == "tuple":
        return "(" + ",".join(_type(c) for c in entry["components"]) + ")"
    return str(entry["type"])


def _function_selectors(abi: list[dict[str, Any]]) -> dict[str, str]:
    selectors = {}
    for entry in abi:
        if entry["type"] == "function":
            signature = f"{entry['name']}({','.join(_type(i) for i in entry['inputs'])})"
            selectors[signature] = function_signature_to_4byte_selector(signature).hex()
    return selectors


def _event_topics(abi: list[dict[str, Any]]) -> dict[str, tuple[str, list[bool]]]:
    topics = {}
    for entry in abi:
        if entry["type"] == "event":
            signature = f"{entry['name']}({','.join(_type(i) for i in entry['inputs'])})"
            topics[entry["name"]] = (
                keccak(text=signature).hex(),
                [i["indexed"] for i in entry["inputs"]],
            )
    return topics


def _expected_topic(name: str, params: list[tuple[str, bool]]) -> str:
    return keccak(text=f"{name}({','.join(t for t, _ in params)})").hex()


@pytest.mark.parametrize(
    ("contract", "functions"),
    [
        (LOAN_CONTRACT, LOAN_FUNCTIONS),
        (ETHERSWAP_CONTRACT, SWAP_FUNCTIONS),
        # the seed flavour (tests only) has the earlier prototype's emergencyWithdraw too
        (SEED_LOAN_CONTRACT, LOAN_FUNCTIONS | {"emergencyWithdraw()"}),
    ],
)
def test_functions_and_selectors_are_exactly_the_protocols(
    contract: str, functions: set[str]
) -> None:
    actual = _function_selectors(load_artifact(contract)["abi"])
    expected = {sig: function_signature_to_4byte_selector(sig).hex() for sig in functions}
    assert actual == expected
    for signature, selector in KNOWN_SELECTORS.items():
        if signature in actual:
            assert actual[signature] == selector


@pytest.mark.parametrize(
    ("contract", "events"),
    [
        (LOAN_CONTRACT, LOAN_EVENTS),
        (ETHERSWAP_CONTRACT, SWAP_EVENTS),
        (SEED_LOAN_CONTRACT, LOAN_EVENTS),
    ],
)
def test_events_topics_and_indexed_flags_are_the_protocols(
    contract: str, events: dict[str, list[tuple[str, bool]]]
) -> None:
    actual = _event_topics(load_artifact(contract)["abi"])
    expected = {
        name: (_expected_topic(name, params), [indexed for _, indexed in params])
        for name, params in events.items()
    }
    assert actual == expected


def test_owner_transfer_topic_is_the_well_known_one() -> None:
    topics = _event_topics(load_artifact(LOAN_CONTRACT)["abi"])
    assert topics["OwnershipTransferred"][0] == (
        "8be0079c531659141344cd1fd0a4f28419497f9722a3daafe3b4186f6b6457e0"
    )


def _outputs(name: str) -> list[dict[str, Any]]:
    (entry,) = [
        e
        for e in load_artifact(LOAN_CONTRACT)["abi"]
        if e.get("name") == name and e["type"] == "function"
    ]
    outputs: list[dict[str, Any]] = entry["outputs"]
    return outputs


def test_get_loan_returns_the_struct_in_protocol_order() -> None:
    (struct,) = _outputs("getLoan")
    assert struct["type"] == "tuple"
    assert [(c["name"], c["type"]) for c in struct["components"]] == LOAN_STRUCT
    # The raw mapping getter returns the same fields, flat.
    assert [(o["name"], o["type"]) for o in _outputs("loans")] == LOAN_STRUCT


def test_get_loan_parameters_layout() -> None:
    (struct,) = _outputs("getLoanParameters")
    assert [(c["name"], c["type"]) for c in struct["components"]] == LOAN_PARAMETERS
    assert [(o["name"], o["type"]) for o in _outputs("loanParameters")] == LOAN_PARAMETERS


def test_payable_functions_are_the_protocols() -> None:
    payable = {
        e["name"]
        for e in load_artifact(LOAN_CONTRACT)["abi"]
        if e["type"] == "function" and e["stateMutability"] == "payable"
    }
    assert payable == {"requestLoan", "extendLoanOffer", "attemptRepayment"}


def test_constructor_takes_pubkey_and_five_timelocks() -> None:
    (constructor,) = [e for e in load_artifact(LOAN_CONTRACT)["abi"] if e["type"] == "constructor"]
    assert [i["type"] for i in constructor["inputs"]] == ["string"] + ["uint256"] * 5
