"""Which semantics the watched loan contract has: ours (`btcloan`) or the earlier prototype's
(`seed`). Both share one ABI and one set of events, so the backend reads them alike; they differ
in deadlines and money flows (docs/chainwatch.md, "Contract flavours"):

| | btcloan | seed |
|---|---|---|
| borrower accepts an offer / repays | while block <= start + t | while block < start + t |
| loan duration of a live loan | the loan's snapshot | the GLOBAL loanDuration, now |
| attemptRepayment | only under the stored H_L | under any H_L |
| withdrawn offer, bond | paid to the lender | stay in the contract |
| loan ids | from 1 | from 0, one loan per borrower until deleteCompletedLoan |

Detection: a contract whose runtime bytecode is exactly our compiled BtcCollateralLoan is
`btcloan`; anything else is treated as `seed`, the conservative assumption (tighter borrower
deadlines, no trust in the fixes). LOAN_CONTRACT_FLAVOUR pins it; a pin the chain contradicts
is an error, never silently used.
"""

from __future__ import annotations

import enum
import threading

from web3 import Web3

from chainwatch.evm.artifacts import LOAN_CONTRACT, SEED_LOAN_CONTRACT, load_artifact
from chainwatch.evm.errors import EvmError


class ContractFlavour(enum.StrEnum):
    BTCLOAN = "btcloan"
    SEED = "seed"


# The artifact deployed for each flavour (the seed's is our test reproduction of it).
FLAVOUR_ARTIFACTS = {
    ContractFlavour.BTCLOAN: LOAN_CONTRACT,
    ContractFlavour.SEED: SEED_LOAN_CONTRACT,
}
AUTO = "auto"
SETTING_CHOICES = (AUTO, ContractFlavour.BTCLOAN.value, ContractFlavour.SEED.value)


class FlavourError(EvmError):
    """The loan contract is missing, or is not the flavour LOAN_CONTRACT_FLAVOUR pins."""


def detect_flavour(w3: Web3, loan_address: str) -> ContractFlavour:
    """From the deployed runtime bytecode (one eth_getCode)."""
    code = bytes(w3.eth.get_code(Web3.to_checksum_address(loan_address)))
    if not code:
        raise FlavourError(f"no contract code at {loan_address}")
    ours = bytes.fromhex(load_artifact(LOAN_CONTRACT)["deployedBytecode"].removeprefix("0x"))
    return ContractFlavour.BTCLOAN if code == ours else ContractFlavour.SEED


def resolve_flavour(*, configured: str, detected: ContractFlavour) -> ContractFlavour:
    """The flavour to act on: the detected one, which a pinned setting must agree with."""
    if configured == AUTO:
        return detected
    if configured not in SETTING_CHOICES:
        raise FlavourError(
            f"LOAN_CONTRACT_FLAVOUR is {configured!r}; expected one of {SETTING_CHOICES}"
        )
    if configured != detected.value:
        raise FlavourError(
            f"LOAN_CONTRACT_FLAVOUR is {configured!r} but the deployed loan contract is "
            f"{detected.value!r} (its bytecode {'is' if detected == 'btcloan' else 'is not'} "
            "our BtcCollateralLoan): fix the setting or the contract address"
        )
    return detected


_lock = threading.Lock()
_cache: dict[tuple[int, str], ContractFlavour] = {}


def contract_flavour(
    w3: Web3, *, chain_id: int, loan_address: str, configured: str
) -> ContractFlavour:
    """The flavour of the contract at `loan_address`, detected once per process and address
    (code at an address does not change), checked against the setting every time."""
    key = (chain_id, loan_address.lower())
    with _lock:
        detected = _cache.get(key)
    if detected is None:
        detected = detect_flavour(w3, loan_address)
        with _lock:
            _cache[key] = detected
    return resolve_flavour(configured=configured, detected=detected)


def forget_flavours() -> None:
    """Tests: a reverted chain may put another contract at a known address."""
    with _lock:
        _cache.clear()
