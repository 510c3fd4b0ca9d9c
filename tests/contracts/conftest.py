"""Parties, loans at each stage, and balance bookkeeping for the contract tests.

Every test here runs on the session deployment (`deployed_contracts`) inside the `w3`
snapshot, so each starts from the freshly deployed contracts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
from web3 import Web3
from web3.types import RPCEndpoint, TxReceipt

from btcloan.dev.contracts import DeployedContracts
from btcloan.dev.localnodes import ANVIL_DEFAULT_KEYS
from chainwatch.evm.driver import (
    BorrowerActions,
    DecodedEvent,
    LenderActions,
    LoanContracts,
    LoanState,
)

AMOUNT = 10**16  # 0.01 rBTC, above the 0.005 minimum
BOND = AMOUNT * 10 // 100
FEE = 10**15  # PROCESSING_FEE
ESCROW_ADDRESS = "bcrt1p" + "q" * 56  # 62 characters, as a regtest P2TR address has
BORROWER_BTC_PUBKEY = "c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5"
ESCROW_TXID = "a1" * 32


@dataclass(frozen=True)
class Secrets:
    preimage_borrower: bytes
    preimage_lender: bytes

    @property
    def hash_borrower(self) -> bytes:
        return hashlib.sha256(self.preimage_borrower).digest()

    @property
    def hash_lender(self) -> bytes:
        return hashlib.sha256(self.preimage_lender).digest()


class Desk:
    """The contracts, the parties, and chain helpers for one test."""

    def __init__(self, w3: Web3, deployed: DeployedContracts) -> None:
        self.w3 = w3
        self.deployed = deployed
        self.contracts: LoanContracts = deployed.contracts
        self.lender = LenderActions(self.contracts, deployed.lender_private_key)
        self.borrower = BorrowerActions(self.contracts, ANVIL_DEFAULT_KEYS[1])
        self.other_borrower = BorrowerActions(self.contracts, ANVIL_DEFAULT_KEYS[2])
        self.stranger = LenderActions(self.contracts, ANVIL_DEFAULT_KEYS[3])
        self.secrets = Secrets(b"\x11" * 32, b"\x22" * 32)
        self.params = deployed.parameters
        # Every party starts rich (ANVIL_DEFAULT_KEYS[2] is not one of anvil's funded keys).
        for party in (self.borrower, self.other_borrower, self.stranger):
            w3.provider.make_request(RPCEndpoint("anvil_setBalance"), [party.address, hex(10**22)])

    # --- chain -------------------------------------------------------------------------
    def mine(self, blocks: int) -> None:
        self.w3.provider.make_request(RPCEndpoint("anvil_mine"), [hex(blocks)])

    def block(self) -> int:
        return int(self.w3.eth.block_number)

    def balance(self, address: str) -> int:
        return int(self.w3.eth.get_balance(Web3.to_checksum_address(address)))

    def balances(self) -> dict[str, int]:
        return {
            "borrower": self.balance(self.borrower.address),
            "lender": self.balance(self.lender.address),
            "loan": self.balance(self.deployed.loan_address),
            "swap": self.balance(self.deployed.etherswap_address),
        }

    @staticmethod
    def gas(receipt: TxReceipt) -> int:
        return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])

    def nonce(self, address: str) -> int:
        return int(self.w3.eth.get_transaction_count(Web3.to_checksum_address(address)))

    def events(self, receipt: TxReceipt) -> list[tuple[str, dict[str, object]]]:
        return [(e.name, e.args) for e in self.contracts.decode_events(receipt)]

    def decoded(self, receipt: TxReceipt) -> list[DecodedEvent]:
        return self.contracts.decode_events(receipt)

    def loan(self, loan_id: int) -> LoanState:
        return self.contracts.get_loan(loan_id)

    # --- loans at each stage -----------------------------------------------------------
    def request(self, borrower: BorrowerActions | None = None, amount: int = AMOUNT) -> int:
        party = borrower or self.borrower
        return party.request_loan(
            amount_wei=amount,
            btc_address=ESCROW_ADDRESS,
            btc_pubkey=BORROWER_BTC_PUBKEY,
            preimage_hash=self.secrets.hash_borrower,
            escrow_txid=ESCROW_TXID,
            escrow_vout=1,
        ).loan_id

    def offered(self) -> int:
        loan_id = self.request()
        self.lender.extend_offer(loan_id, preimage_hash_lender=self.secrets.hash_lender)
        return loan_id

    def active(self) -> int:
        loan_id = self.offered()
        self.borrower.accept_offer(loan_id, self.secrets.preimage_borrower)
        return loan_id

    def repaying(self) -> int:
        loan_id = self.active()
        self.borrower.attempt_repayment(loan_id)
        return loan_id


@pytest.fixture
def desk(w3: Web3, deployed_contracts: DeployedContracts) -> Desk:
    return Desk(w3, deployed_contracts)


@pytest.fixture
def seed_desk(w3: Web3, seed_contracts: DeployedContracts) -> Desk:
    """The same parties on the seed flavour's contracts."""
    return Desk(w3, seed_contracts)
