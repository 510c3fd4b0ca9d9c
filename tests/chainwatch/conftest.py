"""chainwatch fixtures: the real contracts on anvil, the indexer pointed at them, and a consumer
whose effects are rows in the test database (so a rolled-back delivery leaves nothing)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.db import connection
from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from btcloan.dev.contracts import DeployedContracts
from btcloan.dev.localnodes import ANVIL_DEFAULT_KEYS
from chainwatch.client import reset_web3, use_web3
from chainwatch.events import ChainEvent
from chainwatch.evm.driver import BorrowerActions, LenderActions
from chainwatch.indexer.consumer import register_event_consumer
from chainwatch.models import ReorgNotice

SINK_TABLE = "chainwatch_test_sink"  # a constant: the f-string SQL below is not injectable


class SimulatedCrash(BaseException):
    """A process dying at this point: not an Exception, so nothing on the way catches it."""


def create_sink() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {SINK_TABLE} (id serial PRIMARY KEY, kind text, "
            "event_id bigint, event_name text, delivery_key text, block_number bigint, "
            "log_index integer)"
        )


def drop_sink() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {SINK_TABLE}")


def sink_rows(kind: str | None = "event") -> list[tuple[Any, ...]]:
    """What the consumer recorded, in hand-off order: (event id, name, key, block, index), or
    with kind=None all rows as (kind, event id, name, key, block, index)."""
    columns = "event_id, event_name, delivery_key, block_number, log_index"
    with connection.cursor() as cursor:
        if kind is None:
            cursor.execute(f"SELECT kind, {columns} FROM {SINK_TABLE} ORDER BY id")  # noqa: S608
        else:
            query = f"SELECT {columns} FROM {SINK_TABLE} WHERE kind = %s ORDER BY id"  # noqa: S608
            cursor.execute(query, [kind])
        return list(cursor.fetchall())


def write_sink(
    kind: str, *, event_id: int | None, name: str, key: str, block: int, index: int
) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {SINK_TABLE} (kind, event_id, event_name, delivery_key, "  # noqa: S608
            "block_number, log_index) VALUES (%s, %s, %s, %s, %s, %s)",
            [kind, event_id, name, key, block, index],
        )


@dataclass
class SinkConsumer:
    """Records each hand-off as a row in the same transaction; fails or crashes on demand."""

    fail_keys: set[str] = field(default_factory=set)
    crash_on_event: int | None = None  # crash after writing this many events in this process
    seen: int = 0

    def handle_event(self, event: ChainEvent) -> None:
        if event.delivery_key in self.fail_keys:
            raise RuntimeError(f"cannot apply {event.event_name} yet")
        write_sink(
            "event",
            event_id=event.pk,
            name=event.event_name,
            key=event.delivery_key,
            block=event.block_number,
            index=event.log_index,
        )
        self.seen += 1
        if self.crash_on_event is not None and self.seen >= self.crash_on_event:
            raise SimulatedCrash("killed after the consumer's write, before the commit")

    def handle_reorg(self, notice: ReorgNotice) -> None:
        write_sink(
            "reorg",
            event_id=notice.pk,
            name="reorg",
            key=notice.delivery_key,
            block=notice.fork_block_number,
            index=notice.orphaned_events,
        )


class KillingConsumer(SinkConsumer):
    """For a real child process: SIGKILLs itself after its second write (uncommitted)."""

    def handle_event(self, event: ChainEvent) -> None:
        super().handle_event(event)
        if self.seen >= int(os.environ.get("CHAINWATCH_TEST_KILL_AFTER", "2")):
            os.kill(os.getpid(), 9)


killing_consumer = KillingConsumer()


@dataclass
class Chain:
    w3: Web3
    contracts: DeployedContracts
    settings: Any

    @property
    def lender(self) -> LenderActions:
        return LenderActions(self.contracts.contracts, ANVIL_DEFAULT_KEYS[0])

    def borrower(self, n: int) -> BorrowerActions:
        """Borrower n: a key of its own, funded on first use (anvil_setBalance)."""
        key = "0x" + keccak(text=f"chainwatch test borrower {n}").hex()
        address = Account.from_key(key).address
        if int(self.w3.eth.get_balance(address)) < 10**20:
            self.rpc("anvil_setBalance", [address, hex(10**21)])
        return BorrowerActions(self.contracts.contracts, key)

    def mine(self, blocks: int = 1) -> None:
        self.w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]

    def head(self) -> int:
        return int(self.w3.eth.block_number)

    def rpc(self, method: str, params: list[Any]) -> Any:
        response = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        assert "error" not in response, response
        return response["result"]


@pytest.fixture
def chain(w3: Web3, deployed_contracts: DeployedContracts, evm_settings: Any) -> Iterator[Chain]:
    """The indexer and the outbox on the session's contracts; chain state reverted after."""
    s = evm_settings
    s.LOAN_CONTRACT_ADDRESS = deployed_contracts.loan_address
    s.ETHERSWAP_CONTRACT_ADDRESS = deployed_contracts.etherswap_address
    s.EVM_START_BLOCK = int(w3.eth.block_number) + 1  # this test's blocks only
    s.EVM_CONFIRMATIONS = 0
    s.LENDER_EVM_PRIVATE_KEY = ANVIL_DEFAULT_KEYS[0]
    s.CHAINWATCH_CONSUMER = ""
    s.CHAINWATCH_RETRY_BASE_SECONDS = 0.0
    s.CHAINWATCH_MAX_ATTEMPTS = 3
    use_web3(w3)
    yield Chain(w3, deployed_contracts, s)
    use_web3(None)
    reset_web3()


@pytest.fixture
def sink(chain: Chain, db: None) -> Iterator[SinkConsumer]:
    create_sink()
    consumer = SinkConsumer()
    previous = register_event_consumer(consumer)  # in place of loans' own
    yield consumer
    register_event_consumer(previous)
