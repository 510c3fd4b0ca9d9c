"""The typed hand-off of a confirmed event: what `chainwatch` gives its consumer.

A `ChainEvent` is frozen: the contract that emitted it (address and name), the event's name
and decoded arguments, and its place on the chain (block, transaction, log index). Arguments
are what the decoder stores: a uint as int, bytes as 0x-hex, an address or a string as str.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from chainwatch.models import EvmEvent

ArgValue = int | str | bool


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
        return cls(
            id=row.pk,
            chain_id=int(row.chain_id),
            contract_address=row.contract_address,
            contract_name=row.contract_name,
            event_name=row.event_name,
            block_number=int(row.block_number),
            block_hash=row.block_hash,
            transaction_hash=row.transaction_hash,
            log_index=int(row.log_index),
            args=MappingProxyType(dict(row.args)),
            loan_id=None if row.loan_id is None else int(row.loan_id),
            delivery_key=row.delivery_key,
        )
