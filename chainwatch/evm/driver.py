"""Borrower and lender actions on the loan contracts, for tests and the demo.

Arguments are checked before anything is sent (`InvalidInput`), the chain id before the first
transaction (`ChainIdMismatch`), and every transaction is simulated first, so a revert raises
`ContractRevert` with the contract's reason and leaves the chain untouched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, cast

from eth_typing import ABIEvent, ChecksumAddress
from eth_utils import event_abi_to_log_topic, keccak
from web3 import Web3
from web3.contract.contract import Contract, ContractFunction
from web3.types import BlockIdentifier, EventData, LogReceipt, TxReceipt

from chainwatch.client import RPCError, rpc_batch
from chainwatch.evm.artifacts import ETHERSWAP_CONTRACT, LOAN_CONTRACT, load_abi
from chainwatch.evm.deploy import Deployment, TimelockParameters, validate_xonly_pubkey
from chainwatch.evm.errors import ContractRevert, InvalidInput
from chainwatch.evm.sender import TransactionSender

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
HEX32_PATTERN = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
BTC_ADDRESS_PATTERN = re.compile(r"^[0-9A-Za-z]{62,64}$")
MAX_VOUT = 2**32 - 1
GET_LOAN_SELECTOR = "0x" + keccak(text="getLoan(uint256)")[:4].hex()
# What `request_snapshot` reads, as call selectors (the first two take the loan id): encoded
# by hand, since web3's encode_abi looks the function up in the ABI on every call.
REQUEST_SNAPSHOT_SELECTORS = tuple(
    "0x" + keccak(text=signature)[:4].hex()
    for signature in (
        "getLoan(uint256)",
        "getLoanParameters(uint256)",
        "loanDuration()",
        "timelockLoanReq()",
        "timelockBtcEscrow()",
        "timelockRepaymentAccept()",
        "timelockBtcCollateral()",
        "lenderBtcPubkey()",
    )
)


class LoanStatus(IntEnum):
    """The contract's enum, in its order."""

    REQUESTED = 0
    OFFERED = 1
    ACTIVE = 2
    REFUNDED_TO_LENDER = 3
    REPAYMENT_IN_PROGRESS = 4
    REPAID = 5
    REFUNDED_TO_BORROWER = 6
    DEFAULTED = 7


TERMINAL_STATUSES = frozenset(
    {
        LoanStatus.REFUNDED_TO_LENDER,
        LoanStatus.REPAID,
        LoanStatus.REFUNDED_TO_BORROWER,
        LoanStatus.DEFAULTED,
    }
)


@dataclass(frozen=True)
class LoanState:
    """`getLoan(id)`, field for field."""

    borrower_address: ChecksumAddress
    borrower_btc_pubkey: str
    amount: int  # wei
    bond_amount: int  # wei
    status: LoanStatus
    preimage_hash_borrower: bytes
    preimage_hash_lender: bytes
    escrow_txid: bytes  # display byte order, as Bitcoin RPC prints it
    escrow_vout: int
    offer_block: int
    activation_block: int
    repayment_block: int

    @property
    def exists(self) -> bool:
        return self.borrower_address != ZERO_ADDRESS

    @property
    def escrow_txid_hex(self) -> str:
        return self.escrow_txid.hex()


@dataclass(frozen=True)
class LoanTerms:
    """`getLoanParameters(id)`: the snapshot taken when the loan was requested."""

    interest_rate: int
    processing_fee: int  # wei
    duration: int  # EVM blocks
    t_borrower: int  # EVM blocks
    t_lender: int  # EVM blocks


@dataclass(frozen=True)
class DecodedEvent:
    name: str
    address: str
    args: dict[str, Any]
    log_index: int


@dataclass(frozen=True)
class LoanRequestResult:
    loan_id: int
    receipt: TxReceipt


def as_bytes32(value: bytes | str, what: str) -> bytes:
    """32 bytes from bytes or hex (with or without 0x); a typed error otherwise."""
    if isinstance(value, bytes | bytearray):
        if len(value) == 32:
            return bytes(value)
    elif isinstance(value, str) and HEX32_PATTERN.match(value):
        return bytes.fromhex(value.removeprefix("0x"))
    raise InvalidInput(f"{what} must be 32 bytes (64 hex digits)")


def _word(data: bytes, index: int) -> int:
    return int.from_bytes(data[32 * index : 32 * index + 32], "big")


def decode_loan_state(data: bytes) -> LoanState:
    """`getLoan`'s return data decoded by hand: a fixed layout (one tuple holding one string),
    ~30x faster than the generic ABI decoder, which matters at 100,000 loans a pass."""
    if len(data) < 32 * 14:
        raise ValueError(f"getLoan returned {len(data)} bytes")
    base = _word(data, 0)  # the tuple's offset
    head = data[base : base + 32 * 12]
    text_at = base + _word(head, 1)
    length = _word(data[text_at : text_at + 32], 0)
    pubkey = data[text_at + 32 : text_at + 32 + length]
    if len(head) != 32 * 12 or len(pubkey) != length:
        raise ValueError("getLoan returned truncated data")
    return LoanState(
        borrower_address=Web3.to_checksum_address(head[12:32]),
        borrower_btc_pubkey=pubkey.decode(),
        amount=_word(head, 2),
        bond_amount=_word(head, 3),
        status=LoanStatus(_word(head, 4)),
        preimage_hash_borrower=head[160:192],
        preimage_hash_lender=head[192:224],
        escrow_txid=head[224:256],
        escrow_vout=_word(head, 8),
        offer_block=_word(head, 9),
        activation_block=_word(head, 10),
        repayment_block=_word(head, 11),
    )


def _loan_id(value: int) -> int:
    # Ours starts at 1, the seed's contract at 0.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput("a loan id is a non-negative integer")
    return value


class LoanContracts:
    """The two deployed contracts, bound to a node."""

    def __init__(
        self, w3: Web3, *, loan_address: str, etherswap_address: str, chain_id: int
    ) -> None:
        self.w3 = w3
        self.chain_id = chain_id
        self.loan: Contract = w3.eth.contract(
            address=Web3.to_checksum_address(loan_address), abi=load_abi(LOAN_CONTRACT)
        )
        self.etherswap: Contract = w3.eth.contract(
            address=Web3.to_checksum_address(etherswap_address), abi=load_abi(ETHERSWAP_CONTRACT)
        )
        self._topics: dict[tuple[str, bytes], tuple[Contract, str]] = {}
        for contract in (self.loan, self.etherswap):
            for entry in contract.abi:
                if entry.get("type") == "event":
                    event_abi = cast(ABIEvent, entry)
                    topic = event_abi_to_log_topic(event_abi)
                    self._topics[(str(contract.address), topic)] = (contract, event_abi["name"])

    @classmethod
    def from_deployment(cls, w3: Web3, deployment: Deployment) -> LoanContracts:
        return cls(
            w3,
            loan_address=deployment.loan_address,
            etherswap_address=deployment.etherswap_address,
            chain_id=deployment.chain_id,
        )

    @property
    def error_abis(self) -> list[list[dict[str, Any]]]:
        return [load_abi(LOAN_CONTRACT), load_abi(ETHERSWAP_CONTRACT)]

    # --- reads (at `block`, default the latest) ---------------------------------------
    def get_loan(self, loan_id: int, *, block: BlockIdentifier = "latest") -> LoanState:
        raw = self.loan.functions.getLoan(_loan_id(loan_id)).call(block_identifier=block)
        return LoanState(
            borrower_address=Web3.to_checksum_address(raw[0]),
            borrower_btc_pubkey=str(raw[1]),
            amount=int(raw[2]),
            bond_amount=int(raw[3]),
            status=LoanStatus(raw[4]),
            preimage_hash_borrower=bytes(raw[5]),
            preimage_hash_lender=bytes(raw[6]),
            escrow_txid=bytes(raw[7]),
            escrow_vout=int(raw[8]),
            offer_block=int(raw[9]),
            activation_block=int(raw[10]),
            repayment_block=int(raw[11]),
        )

    def get_loans(
        self, loan_ids: Sequence[int], *, block: int, per_request: int = 500
    ) -> dict[int, LoanState]:
        """`getLoan` of many loans at `block`: `per_request` eth_calls per HTTP request (a
        JSON-RPC batch), so a remote node costs one round trip per `per_request` loans."""
        selector = GET_LOAN_SELECTOR
        tag = hex(block)
        states: dict[int, LoanState] = {}
        for start in range(0, len(loan_ids), per_request):
            chunk = [_loan_id(i) for i in loan_ids[start : start + per_request]]
            calls = [
                ("eth_call", [{"to": self.loan.address, "data": selector + f"{i:064x}"}, tag])
                for i in chunk
            ]
            for loan_id, answer in zip(chunk, rpc_batch(self.w3, calls), strict=True):
                if isinstance(answer, RPCError):
                    raise answer
                states[loan_id] = decode_loan_state(bytes.fromhex(answer[2:]))
        return states

    def request_snapshot(
        self, loan_id: int, *, block: int
    ) -> tuple[LoanState, LoanTerms, TimelockParameters, str]:
        """getLoan, getLoanParameters, the five timelock getters and lenderBtcPubkey at
        `block`, in one JSON-RPC batch (one round trip instead of eight)."""
        loan_id_word = f"{_loan_id(loan_id):064x}"
        calls = [
            (
                "eth_call",
                [
                    {"to": self.loan.address, "data": selector + (loan_id_word if i < 2 else "")},
                    hex(block),
                ],
            )
            for i, selector in enumerate(REQUEST_SNAPSHOT_SELECTORS)
        ]
        answers = rpc_batch(self.w3, calls)
        for answer in answers:
            if isinstance(answer, RPCError):
                raise answer
        raw = [bytes.fromhex(str(a)[2:]) for a in answers]
        terms = self.w3.codec.decode(["uint256"] * 5, raw[1])
        timelocks = [int(self.w3.codec.decode(["uint256"], r)[0]) for r in raw[2:7]]
        (pubkey,) = self.w3.codec.decode(["string"], raw[7])
        return (
            decode_loan_state(raw[0]),
            LoanTerms(*(int(v) for v in terms)),
            TimelockParameters(*timelocks),
            str(pubkey),
        )

    def get_loan_parameters(self, loan_id: int, *, block: BlockIdentifier = "latest") -> LoanTerms:
        call = self.loan.functions.getLoanParameters(_loan_id(loan_id))
        return LoanTerms(*(int(v) for v in call.call(block_identifier=block)))

    def total_loans(self, *, block: BlockIdentifier = "latest") -> int:
        return int(self.loan.functions.getTotalLoans().call(block_identifier=block))

    def loan_id_of(self, borrower: str, *, block: BlockIdentifier = "latest") -> int:
        address = Web3.to_checksum_address(borrower)
        call = self.loan.functions.getLoanIdByBorrower(address)
        return int(call.call(block_identifier=block))

    def lender_btc_pubkey(self, *, block: BlockIdentifier = "latest") -> str:
        return str(self.loan.functions.lenderBtcPubkey().call(block_identifier=block))

    def processing_fee(self) -> int:
        return int(self.loan.functions.PROCESSING_FEE().call())

    def min_loan_amount(self) -> int:
        return int(self.loan.functions.MIN_LOAN_AMOUNT().call())

    def bond_for(self, amount: int) -> int:
        return amount * int(self.loan.functions.LENDER_BOND_PERCENTAGE().call()) // 100

    def timelock_parameters(self, *, block: BlockIdentifier = "latest") -> TimelockParameters:
        fns = self.loan.functions
        return TimelockParameters(
            loan_duration=int(fns.loanDuration().call(block_identifier=block)),
            t_borrower=int(fns.timelockLoanReq().call(block_identifier=block)),
            t_btc_escrow=int(fns.timelockBtcEscrow().call(block_identifier=block)),
            t_lender=int(fns.timelockRepaymentAccept().call(block_identifier=block)),
            t_btc_collateral=int(fns.timelockBtcCollateral().call(block_identifier=block)),
        )

    def decode_events(self, receipt: TxReceipt) -> list[DecodedEvent]:
        """Every event of either contract in a receipt, in log order."""
        return self.decode_logs(receipt["logs"])

    def decode_logs(self, logs: Iterable[LogReceipt]) -> list[DecodedEvent]:
        """The logs (from a receipt or eth_getLogs) that are either contract's events."""
        decoded = []
        for log in logs:
            if not log["topics"]:
                continue
            key = (Web3.to_checksum_address(log["address"]), bytes(log["topics"][0]))
            if key not in self._topics:
                continue
            contract, name = self._topics[key]
            event: EventData = contract.events[name]().process_log(log)
            decoded.append(DecodedEvent(name, key[0], dict(event["args"]), int(log["logIndex"])))
        return decoded


class _Party:
    def __init__(self, contracts: LoanContracts, private_key: str) -> None:
        self.contracts = contracts
        self.sender = TransactionSender(
            contracts.w3,
            private_key,
            expected_chain_id=contracts.chain_id,
            error_abis=contracts.error_abis,
        )

    @property
    def address(self) -> ChecksumAddress:
        return self.sender.address

    @property
    def loan(self) -> Contract:
        return self.contracts.loan

    def send(self, call: ContractFunction, *, value: int = 0) -> TxReceipt:
        """Any loan-contract call, unchecked on our side: the contract's own rules decide."""
        return self.sender.send(call, value=value)

    def delete_loan(self, loan_id: int) -> TxReceipt:
        return self.send(self.loan.functions.deleteCompletedLoan(_loan_id(loan_id)))

    def _existing_loan(self, loan_id: int) -> LoanState:
        state = self.contracts.get_loan(loan_id)
        if not state.exists:
            raise ContractRevert("getLoan", f"loan {loan_id} does not exist")
        return state


class BorrowerActions(_Party):
    def request_loan(
        self,
        *,
        amount_wei: int,
        btc_address: str,
        btc_pubkey: str,
        preimage_hash: bytes | str,
        escrow_txid: bytes | str,
        escrow_vout: int,
    ) -> LoanRequestResult:
        """requestLoan, paying the processing fee; returns the new loan id."""
        if not isinstance(amount_wei, int) or isinstance(amount_wei, bool):
            raise InvalidInput("the loan amount must be an integer number of wei")
        if not isinstance(btc_address, str) or not BTC_ADDRESS_PATTERN.match(btc_address):
            raise InvalidInput("the escrow address must be 62 to 64 letters and digits")
        pubkey = validate_xonly_pubkey(btc_pubkey, "borrower BTC public key")
        hash_b = as_bytes32(preimage_hash, "the borrower preimage hash")
        txid = as_bytes32(escrow_txid, "the escrow txid")
        if not isinstance(escrow_vout, int) or not 0 <= escrow_vout <= MAX_VOUT:
            raise InvalidInput("the escrow vout must be an integer in 0..2^32-1")
        minimum = self.contracts.min_loan_amount()
        if amount_wei < minimum:
            raise InvalidInput(f"the loan amount {amount_wei} wei is below the minimum {minimum}")
        self.sender.ensure_chain()
        receipt = self.send(
            self.loan.functions.requestLoan(
                amount_wei, btc_address, pubkey, hash_b, txid, escrow_vout
            ),
            value=self.contracts.processing_fee(),
        )
        (event,) = self.loan.events.LoanRequested().process_receipt(receipt)
        return LoanRequestResult(loan_id=int(event["args"]["loanId"]), receipt=receipt)

    def accept_offer(self, loan_id: int, preimage: bytes | str) -> TxReceipt:
        """acceptLoanOffer: reveals P_B, receives the amount and the processing fee."""
        secret = as_bytes32(preimage, "the borrower preimage")
        return self.send(self.loan.functions.acceptLoanOffer(_loan_id(loan_id), secret))

    def attempt_repayment(
        self, loan_id: int, *, preimage_hash_lender: bytes | str | None = None
    ) -> TxReceipt:
        """attemptRepayment with the loan amount, under the stored H_L unless one is given."""
        state = self._existing_loan(_loan_id(loan_id))
        hash_l = (
            state.preimage_hash_lender
            if preimage_hash_lender is None
            else as_bytes32(preimage_hash_lender, "the lender preimage hash")
        )
        return self.send(self.loan.functions.attemptRepayment(loan_id, hash_l), value=state.amount)

    def withdraw_repayment(self, loan_id: int) -> TxReceipt:
        """withdrawRepaymentAttempt: the repayment and the lender's bond come back."""
        return self.send(self.loan.functions.withdrawRepaymentAttempt(_loan_id(loan_id)))


class LenderActions(_Party):
    def associate_preimage_hash(self, loan_id: int, preimage_hash: bytes | str) -> TxReceipt:
        hash_l = as_bytes32(preimage_hash, "the lender preimage hash")
        return self.send(self.loan.functions.associateLenderPreimageHash(_loan_id(loan_id), hash_l))

    def extend_offer(self, loan_id: int, *, preimage_hash_lender: bytes | str) -> TxReceipt:
        """extendLoanOffer, paying the amount plus the bond."""
        hash_l = as_bytes32(preimage_hash_lender, "the lender preimage hash")
        state = self._existing_loan(_loan_id(loan_id))
        value = state.amount + self.contracts.bond_for(state.amount)
        return self.send(
            self.loan.functions.extendLoanOffer(loan_id, state.preimage_hash_borrower, hash_l),
            value=value,
        )

    def withdraw_offer(self, loan_id: int) -> TxReceipt:
        return self.send(self.loan.functions.withdrawLoanOffer(_loan_id(loan_id)))

    def accept_repayment(self, loan_id: int, preimage: bytes | str) -> TxReceipt:
        """acceptLoanRepayment: reveals P_L, receives the repayment and the bond."""
        secret = as_bytes32(preimage, "the lender preimage")
        return self.send(self.loan.functions.acceptLoanRepayment(_loan_id(loan_id), secret))

    def mark_defaulted(self, loan_id: int) -> TxReceipt:
        return self.send(self.loan.functions.markAsDefaulted(_loan_id(loan_id)))

    def update_parameters(self, parameters: TimelockParameters) -> TxReceipt:
        return self.send(self.loan.functions.updateParameters(*parameters.as_tuple()))

    def update_btc_pubkey(self, btc_pubkey: str) -> TxReceipt:
        pubkey = validate_xonly_pubkey(btc_pubkey)
        return self.send(self.loan.functions.updateLenderBtcPubkey(pubkey))


__all__ = [
    "TERMINAL_STATUSES",
    "BorrowerActions",
    "ContractRevert",
    "DecodedEvent",
    "InvalidInput",
    "LenderActions",
    "LoanContracts",
    "LoanRequestResult",
    "LoanState",
    "LoanStatus",
    "LoanTerms",
    "as_bytes32",
]
