"""The desk on real nodes: anvil with the real contracts, the Bitcoin node (bitcoind or the
devnode), PostgreSQL and Redis. The backend is the lender; the test is the borrower, with its
own keys, signing with vaultero as a borrower's wallet would.

Celery tasks the backend enqueues are captured and run in-process by `Desk.pump`, in the
order they were sent, so a scenario is deterministic; the live-worker lanes are tests/e2e.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery import current_app
from celery.app.task import Task
from django.core.cache import cache
from web3 import Web3
from web3.types import RPCEndpoint

import vaultero
from bitcoin import signer as signer_module
from bitcoin.facts import facts_deliver
from bitcoin.rpc import BitcoinRPC, sats_to_btc, set_client
from bitcoin.services import chain_scan
from btcloan.localnodes import ANVIL_DEFAULT_KEYS
from chainwatch.client import use_web3
from chainwatch.evm.deploy import TimelockParameters
from chainwatch.evm.driver import BorrowerActions, LenderActions
from chainwatch.evm.testing import DeployedContracts, deploy_for_tests
from chainwatch.outbox.services import evm_transactions_pump
from chainwatch.services import chain_sync
from loans.models import AuditEntry, Loan
from loans.services.quote import escrow_quote
from loans.services.watchdog import watchdog_run

LENDER_BTC_SECRET = "6b" * 32  # a throwaway test key
NETWORK = "regtest"
# Ratio 1: the contract's t_0/t_1 are the CSV block counts, so scenarios stay short.
TIMELOCKS = TimelockParameters(
    loan_duration=40, t_borrower=8, t_btc_escrow=40, t_lender=8, t_btc_collateral=60
)


def known(value: int | None) -> int:
    """A loan figure the scenario has reached (a height, a value): set by now."""
    assert value is not None
    return value


@dataclass
class Borrower:
    """The borrower's wallet: an EVM account, a Bitcoin key and the preimage P_B."""

    actions: BorrowerActions
    btc_secret: str
    preimage: bytes

    @property
    def btc_key(self) -> str:
        return vaultero.xonly_public_key(self.btc_secret)

    @property
    def preimage_hash(self) -> str:
        return hashlib.sha256(self.preimage).hexdigest()

    @property
    def payout_address(self) -> str:
        return vaultero.key_path_address(self.btc_key, NETWORK)


@dataclass
class Desk:
    w3: Web3
    node: Any
    rpc: BitcoinRPC
    deployed: DeployedContracts
    faucet: str
    queue: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    # Faults: a task dropped as if its worker died before running it (`lose`), and a hook
    # run after every round (`after_round`, e.g. to deliver every fact once more).
    lose: Callable[[str], bool] | None = None
    lost: list[str] = field(default_factory=list)
    after_round: Callable[[], None] | None = None

    # --- chains ------------------------------------------------------------------------
    def mine_evm(self, blocks: int = 1) -> None:
        self.w3.provider.make_request(RPCEndpoint("anvil_mine"), [hex(blocks)])

    def mine_btc(self, blocks: int = 1) -> None:
        self.node.rpc("generatetoaddress", blocks, self.faucet)

    def btc_height(self) -> int:
        return int(self.node.rpc("getblockcount"))

    def fund(self, address: str, sats: int) -> tuple[str, int]:
        txid = str(self.node.rpc("sendtoaddress", address, str(sats_to_btc(sats))))
        decoded = self.node.rpc("getrawtransaction", txid, True)
        vout = next(o["n"] for o in decoded["vout"] if o["scriptPubKey"].get("address") == address)
        return txid, int(vout)

    # --- the backend -------------------------------------------------------------------
    def pump(self, rounds: int = 12) -> None:
        """What beat and the workers do: the watchdog once, then the pollers and every task
        they enqueue until nothing new happens."""
        watchdog_run()
        current_app.tasks["bitcoin.monitor"].run()
        for _ in range(rounds):
            before = len(self.ran)
            chain_sync(deliver=True)
            chain_scan(rpc=self.rpc)
            facts_deliver()
            evm_transactions_pump()
            while self.queue:
                name, args = self.queue.pop(0)
                if self.lose is not None and self.lose(name):
                    self.lost.append(name)
                    continue
                current_app.tasks[name].run(*args)
                self.ran.append(name)
            if self.after_round is not None:
                self.after_round()
            if len(self.ran) == before:
                return

    def advance(self, *, evm: int = 0, btc: int = 0) -> None:
        if evm:
            self.mine_evm(evm)
        if btc:
            self.mine_btc(btc)
        self.pump()

    def until(
        self, done: Callable[[], bool], *, evm: int = 1, btc: int = 0, steps: int = 30
    ) -> None:
        self.pump()
        for _ in range(steps):
            try:
                if done():
                    return
            except Loan.DoesNotExist:
                pass  # the request is still being read
            self.advance(evm=evm, btc=btc)
        trail = [
            (a.action, a.from_value, a.to_value, a.details)
            for a in AuditEntry.objects.order_by("-id")[:8]
        ]
        from bitcoin.models import BitcoinTransaction

        btc = list(BitcoinTransaction.objects.values_list("purpose", "status", "last_error"))
        raise AssertionError(
            f"not reached after {steps} steps; tasks run: {self.ran[-12:]}; audit: {trail}; "
            f"bitcoin transactions: {btc}"
        )

    def loan(self, onchain_id: int) -> Loan:
        return Loan.objects.get(onchain_id=onchain_id, contract_address=self.deployed.loan_address)

    # --- the borrower ------------------------------------------------------------------
    def borrower(self, key_index: int = 1) -> Borrower:
        return Borrower(
            actions=BorrowerActions(self.deployed.contracts, ANVIL_DEFAULT_KEYS[key_index]),
            btc_secret=secrets.token_hex(32),
            preimage=secrets.token_bytes(32),
        )

    def request(
        self,
        borrower: Borrower,
        *,
        amount_wei: int = 10**16,
        deposit_delta: int = 1000,
        escrow_address: str | None = None,
        confirm: bool = True,
    ) -> int:
        """Fund an escrow as the quote says, then request the loan; returns its id."""
        quote = escrow_quote(
            borrower_btc_pubkey=borrower.btc_key,
            preimage_hash_borrower=borrower.preimage_hash,
            amount_wei=amount_wei,
        )
        address = escrow_address or quote.escrow_address
        txid, vout = self.fund(address, quote.deposit.total_sats + deposit_delta)
        if confirm:
            self.mine_btc(3)
        result = borrower.actions.request_loan(
            amount_wei=amount_wei,
            btc_address=address,
            btc_pubkey=borrower.btc_key,
            preimage_hash=borrower.preimage_hash,
            escrow_txid=txid,
            escrow_vout=vout,
        )
        return result.loan_id

    def presign(self, borrower: Borrower, onchain_id: int) -> None:
        """What a borrower's wallet does with GET collateral-tx: check and sign TX_1."""
        from loans.services.collateral import borrower_signature_submit, collateral_lock_template

        loan = self.loan(onchain_id)
        template = collateral_lock_template(loan)
        signature = vaultero.sign_input(template, borrower.btc_secret)
        borrower_signature_submit(loan_id=loan.pk, signature_hex=signature.hex())

    def revealed_lender_preimage(self, onchain_id: int) -> bytes:
        """P_L as a borrower's wallet learns it: from the RepaymentAccepted log."""
        (log,) = self.deployed.loan.events.RepaymentAccepted().get_logs(
            argument_filters={"loanId": onchain_id}, from_block=self.deployed.block_number
        )
        return bytes(log["args"]["preimageLender"])

    def send_btc(self, raw_hex: str) -> str:
        return str(self.node.rpc("sendrawtransaction", raw_hex))


@pytest.fixture
def desk(
    w3: Web3, bitcoin_node: Any, settings: Any, transactional_db: None, redis_client: Any
) -> Iterator[Desk]:
    deployed = deploy_for_tests(
        w3,
        parameters=TIMELOCKS,
        lender_btc_pubkey=vaultero.xonly_public_key(LENDER_BTC_SECRET),
    )
    settings.EVM_RPC_URL = w3.provider.endpoint_uri  # type: ignore[attr-defined]
    settings.EVM_CHAIN_ID = deployed.chain_id
    settings.LOAN_CONTRACT_ADDRESS = deployed.loan_address
    settings.ETHERSWAP_CONTRACT_ADDRESS = deployed.etherswap_address
    settings.EVM_START_BLOCK = deployed.block_number
    settings.EVM_CONFIRMATIONS = 2
    settings.LENDER_EVM_PRIVATE_KEY = ANVIL_DEFAULT_KEYS[0]
    settings.BITCOIN_RPC_URL = bitcoin_node.url
    settings.BITCOIN_NETWORK = NETWORK
    settings.BITCOIN_CONFIRMATIONS = 2
    settings.LENDER_BTC_PRIVATE_KEY = LENDER_BTC_SECRET
    settings.LENDER_BTC_KEY_FILE = ""
    settings.EVM_BLOCKS_PER_BITCOIN_BLOCK = 1
    settings.TX1_CONFIRMATION_ALLOWANCE_BLOCKS = 2
    settings.OFFER_SAFETY_MARGIN_BLOCKS = 2
    settings.LENDER_ACTIONS_REQUIRING_APPROVAL = []
    use_web3(w3)
    rpc = BitcoinRPC(bitcoin_node.url)
    set_client(rpc)
    signer_module.set_signer(None)
    cache.clear()
    faucet = str(bitcoin_node.rpc("getnewaddress"))
    bitcoin_node.rpc("generatetoaddress", 110, faucet)
    desk = Desk(w3=w3, node=bitcoin_node, rpc=rpc, deployed=deployed, faucet=faucet)

    def capture(task: Task, *args: Any, **kwargs: Any) -> None:
        desk.queue.append((task.name, args))

    original = Task.delay
    Task.delay = capture
    try:
        yield desk
    finally:
        Task.delay = original
        use_web3(None)
        set_client(None)
        signer_module.set_signer(None)
        cache.clear()


@pytest.fixture
def lender_actions(desk: Desk) -> LenderActions:
    return LenderActions(desk.deployed.contracts, ANVIL_DEFAULT_KEYS[0])
