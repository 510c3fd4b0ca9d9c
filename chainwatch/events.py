"""The typed hand-off of a confirmed event: what `chainwatch` gives its consumer.

A `ChainEvent` is frozen: the contract that emitted it (address and name), the event's name
and decoded arguments, and its place on the chain (block, transaction, log index). Arguments
are what the decoder stores: a uint as int, bytes as 0x-hex, an address or a string as str.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType

from chainwatch.models import EvmEvent

ArgValue = int | str | bool
# An EvmEvent's COLUMNS, as `values_list` reads them.
EventColumns = tuple[
    int, int, str, str, str, int, str, str, int, dict[str, ArgValue], Decimal | None, str
]


@dataclass(frozen=True)
class ChainEvent:
    id: int
    chain_id: int
    contract_address: str
    contract_name: str
    event_name: str
    block_number: int
    block_hash: str
    transaction_hash: str
    log_index: int
    args: Mapping[str, ArgValue]
    loan_id: int | None
    delivery_key: str

    @property
    def pk(self) -> int:
        return self.id

    @property
    def position(self) -> tuple[int, int]:
        """Where it is on the chain: (block, log index), the order of delivery."""
        return (self.block_number, self.log_index)

    def uint(self, name: str) -> int:
        """A numeric argument (uint256, or a bool as 0/1)."""
        return int(self.args[name])

    def text(self, name: str) -> str:
        """An address, string or 0x-hex bytes argument."""
        return str(self.args[name])

    @classmethod
    def of(cls, row: EvmEvent) -> ChainEvent:
        return cls.from_columns(tuple(getattr(row, column) for column in COLUMNS))

    @classmethod
    def from_columns(cls, values: EventColumns) -> ChainEvent:
        """From an EvmEvent's COLUMNS as `values_list` reads them (no model instance: the
        hand-off of a catch-up reads tens of thousands)."""
        pk, chain, address, contract, name, block, block_hash, tx, index, args, loan, key = values
        return cls(
            id=pk,
            chain_id=int(chain),
            contract_address=address,
            contract_name=contract,
            event_name=name,
            block_number=int(block),
            block_hash=block_hash,
            transaction_hash=tx,
            log_index=int(index),
            args=MappingProxyType(dict(args)),
            loan_id=None if loan is None else int(loan),
            delivery_key=key,
        )


# The EvmEvent columns a ChainEvent is made of, in `from_columns`' order.
COLUMNS = (
    "id", "chain_id", "contract_address", "contract_name", "event_name", "block_number",
    "block_hash", "transaction_hash", "log_index", "args", "loan_id", "delivery_key",
)  # fmt: skip
