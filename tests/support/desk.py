"""The desk on real nodes: anvil with the real contracts, the Bitcoin node (bitcoind or the
devnode), PostgreSQL and Redis. The backend is the lender; the caller is the borrower, with its
own keys, signing with vaultero as a borrower's wallet would.

Used by tests/integration (through thin pytest fixtures) and by bench/lifecycle_bench.py, so it
imports nothing from pytest. `desk_settings` names every Django setting the desk needs (the
tests apply it to pytest-django's `settings`, the bench exports it to its worker processes);
`Desk.pump` runs what beat and the workers would, in-process, in the order the tasks were sent,
once `capture_tasks` has redirected `Task.delay` into `Desk.queue`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery import current_app
from celery.app.task import Task
from web3 import Web3
from web3.types import RPCEndpoint

import vaultero
from bitcoin.facts import facts_deliver
from bitcoin.rpc import BitcoinRPC, sats_to_btc
from bitcoin.services import chain_scan
from btcloan.dev.contracts import DeployedContracts
from btcloan.dev.localnodes import ANVIL_DEFAULT_KEYS
from chainwatch.evm.deploy import TimelockParameters
from chainwatch.evm.driver import BorrowerActions
from chainwatch.evm.flavour import ContractFlavour, forget_flavours
from chainwatch.outbox.services import evm_transactions_pump
from chainwatch.services import chain_sync
from loans.models import AuditEntry, Loan
from loans.services.quote import escrow_quote
from loans.services.watchdog import watchdog_run

LENDER_BTC_SECRET = "6b" * 32  # a throwaway test key
NETWORK = "regtest"
# Ratio 1: the contract's t_0/t_1 are the CSV block counts, so scenarios stay short. t_0 = 100:
# with t_B = 8 (+ 2 confirmations) the offer window's 1e-6 risk bound needs 30 Bitcoin blocks
# left, so a borrower has ~65 blocks after the deposit confirms to pre-sign (docs/security.md;
# the live fault lane mines a block every 0.4 s while a slow worker builds TX_1).
TIMELOCKS = TimelockParameters(
    loan_duration=40, t_borrower=8, t_btc_escrow=100, t_lender=8, t_btc_collateral=60
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

    def release(self, loan: Loan, preimage_lender: bytes, *, feerate: int = 2) -> str:
        """The signed collateral release, built from the loan's terms as a wallet would."""
        template = vaultero.build_collateral_release(
            collateral=vaultero.collateral_output(
                borrower_key=self.btc_key,
                lender_key=loan.lender_btc_pubkey,
                preimage_hash=loan.preimage_hash_lender,
                csv_blocks=loan.collateral_csv_blocks,
                internal_key=vaultero.BIP341_NUMS,  # the collateral is always under NUMS
            ),
            outpoint=vaultero.Outpoint(loan.collateral_txid, 1),
            value=known(loan.collateral_value_sats),
            destination=self.payout_address,
            feerate_sat_vb=feerate,
            network=NETWORK,
        )
        return vaultero.finalize(
            template,
            borrower_sig=vaultero.sign_input(template, self.btc_secret),
            preimage=preimage_lender,
        )

    def exit(self, loan: Loan, *, feerate: int = 2) -> str:
        """The signed escrow exit (valid once t0_btc has passed since the deposit confirmed)."""
        template = vaultero.build_borrower_exit(
            escrow=vaultero.escrow_output(
                borrower_key=self.btc_key,
                lender_key=loan.lender_btc_pubkey,
                preimage_hash=self.preimage_hash,
                csv_blocks=loan.escrow_csv_blocks,
                internal_key=loan.escrow_internal_key,
            ),
            outpoint=vaultero.Outpoint(loan.escrow_txid, loan.escrow_vout),
            value=known(loan.escrow_value_sats),
            destination=self.payout_address,
            feerate_sat_vb=feerate,
            network=NETWORK,
        )
        return vaultero.finalize(
            template, borrower_sig=vaultero.sign_input(template, self.btc_secret)
        )


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

        outbox = list(BitcoinTransaction.objects.values_list("purpose", "status", "last_error"))
        raise AssertionError(
            f"not reached after {steps} steps; tasks run: {self.ran[-12:]}; audit: {trail}; "
            f"bitcoin transactions: {outbox}"
        )

    def loan(self, onchain_id: int) -> Loan:
        return Loan.objects.get(onchain_id=onchain_id, contract_address=self.deployed.loan_address)

    # --- the borrower ------------------------------------------------------------------
    def borrower(self, key_index: int = 1, *, evm_key: str | None = None) -> Borrower:
        """A borrower with anvil's dev key `key_index`, or with `evm_key` (a funded account)."""
        return Borrower(
            actions=BorrowerActions(
                self.deployed.contracts, evm_key or ANVIL_DEFAULT_KEYS[key_index]
            ),
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
        from loans.outputs import collateral_lock_template
        from loans.services.collateral import borrower_signature_submit

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


def desk_settings(
    *,
    evm_url: str,
    deployed: DeployedContracts,
    bitcoin_url: str,
    lender_btc_secret: str = LENDER_BTC_SECRET,
    evm_confirmations: int = 2,
    bitcoin_confirmations: int = 2,
) -> dict[str, Any]:
    """The Django settings of a desk on these nodes and contracts (names as in settings.py)."""
    return {
        "EVM_RPC_URL": evm_url,
        "EVM_CHAIN_ID": deployed.chain_id,
        "LOAN_CONTRACT_ADDRESS": deployed.loan_address,
        "ETHERSWAP_CONTRACT_ADDRESS": deployed.etherswap_address,
        "EVM_START_BLOCK": deployed.block_number,
        "EVM_CONFIRMATIONS": evm_confirmations,
        "LENDER_EVM_PRIVATE_KEY": ANVIL_DEFAULT_KEYS[0],
        "BITCOIN_RPC_URL": bitcoin_url,
        "BITCOIN_NETWORK": NETWORK,
        "BITCOIN_CONFIRMATIONS": bitcoin_confirmations,
        "LENDER_BTC_PRIVATE_KEY": lender_btc_secret,
        "LENDER_BTC_KEY_FILE": "",
        "EVM_BLOCKS_PER_BITCOIN_BLOCK": 1,
        "TX1_CONFIRMATION_ALLOWANCE_BLOCKS": 2,
        "OFFER_SAFETY_MARGIN_BLOCKS": 2,
        "LENDER_ACTIONS_REQUIRING_APPROVAL": [],
        # t_L is 8 blocks here: P_L goes out while at least 1 is left.
        "LOAN_REPAYMENT_ACCEPT_MARGIN": 1,
        # Retries by policy at the next pump, not after a real backoff.
        "EVM_OUTBOX_RETRY_BASE_SECONDS": 0,
        # Each `pump` plays a watchdog pass: steps still due are sent again at every pass, so
        # a task lost on purpose (faults) is redriven at once, as before incremental passes.
        "LOAN_WATCHDOG_REDRIVE_SECONDS": 0,
        # Pinned, so the start-up check against the deployed bytecode runs too.
        "LOAN_CONTRACT_FLAVOUR": deployed.flavour.value,
    }


@dataclass(frozen=True)
class DeskChains:
    deployed: DeployedContracts
    settings: dict[str, Any]
    rpc: BitcoinRPC
    faucet: str


@contextmanager
def desk_chains(
    w3: Web3,
    bitcoin_node: Any,
    settings: Any,
    flavour: ContractFlavour = ContractFlavour.BTCLOAN,
) -> Iterator[DeskChains]:
    """The contracts deployed for a desk (short timelocks, our lender key; `flavour` picks ours
    or the seed's loan contract), `settings` pointed at them and the nodes, the process's
    clients injected, and a funded faucet; undone after."""
    from django.core.cache import cache

    from bitcoin import signer as signer_module
    from bitcoin.rpc import set_client
    from btcloan.dev.contracts import deploy_for_tests
    from chainwatch.client import use_web3

    forget_flavours()
    deployed = deploy_for_tests(
        w3,
        parameters=TIMELOCKS,
        lender_btc_pubkey=vaultero.xonly_public_key(LENDER_BTC_SECRET),
        flavour=flavour,
    )
    overrides = desk_settings(
        evm_url=w3.provider.endpoint_uri,  # type: ignore[attr-defined]
        deployed=deployed,
        bitcoin_url=bitcoin_node.url,
    )
    for name, value in overrides.items():
        setattr(settings, name, value)
    use_web3(w3)
    rpc = BitcoinRPC(bitcoin_node.url)
    set_client(rpc)
    signer_module.set_signer(None)
    cache.clear()
    faucet = str(bitcoin_node.rpc("getnewaddress"))
    bitcoin_node.rpc("generatetoaddress", 110, faucet)
    try:
        yield DeskChains(deployed, overrides, rpc, faucet)
    finally:
        forget_flavours()
        use_web3(None)
        set_client(None)
        signer_module.set_signer(None)
        cache.clear()


@contextmanager
def capture_tasks(desk: Desk) -> Iterator[Desk]:
    """Every `Task.delay` (and so `delay_on_commit`), and every task sent due later
    (`apply_async` with a countdown: run at the next pump all the same), lands in `desk.queue`
    for `Desk.pump`."""

    def capture(task: Task, *args: Any, **kwargs: Any) -> None:
        desk.queue.append((task.name, args))

    def capture_async(
        task: Task, args: tuple[Any, ...] | None = None, kwargs: Any = None, **options: Any
    ) -> Any:
        if "countdown" not in options:  # a test's own call to a live worker
            return original_async(task, args, kwargs, **options)
        desk.queue.append((task.name, tuple(args or ())))
        return None

    original, original_async = Task.delay, Task.apply_async
    Task.delay = capture
    Task.apply_async = capture_async
    try:
        yield desk
    finally:
        Task.delay, Task.apply_async = original, original_async
