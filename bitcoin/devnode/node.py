"""The devnode's chain state around the kernel: block store, UTXO set, tx index, mempool, wallet.

Every block goes through `Kernel.process` (libbitcoinkernel's `process_block`); the UTXO set and
the tx index follow the kernel's connect/disconnect events, with our own undo records. A
transaction enters the mempool when a candidate block holding it (and its mempool ancestors) on
the current tip fails *only* because its coinbase pays too much.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bitcoin.devnode.codec import (
    Block,
    DecodeError,
    Header,
    Tx,
    TxIn,
    TxOut,
    compact_size,
    dsha256,
    merkle_root,
    parse_block,
    push_data,
    push_int,
)
from bitcoin.devnode.kernel import REGTEST_GENESIS_HASH, ChainEvent, Kernel
from bitcoin.devnode.policy import (
    Conflict,
    Policy,
    PolicyRejected,
    check_feerate,
    check_package_replacement,
    check_replacement,
    check_standard,
    rate_of,
)
from bitcoin.devnode.wallet import Keystore

COIN = 100_000_000
MAX_MONEY = 21_000_000 * COIN
REGTEST_BITS = 0x207FFFFF
REGTEST_TARGET = 0x7FFFFF << (8 * (0x20 - 3))
HALVING_INTERVAL = 150
COINBASE_MATURITY = 100
MAX_BLOCK_WEIGHT = 4_000_000
WITNESS_COMMITMENT_HEADER = b"\xaa\x21\xa9\xed"
OP_TRUE = b"\x51"


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Rejected(Exception):
    """A transaction refused by the mempool: `reason` as testmempoolaccept prints it,
    `message` as sendrawtransaction does, and the RPC error code."""

    def __init__(
        self,
        reason: str,
        message: str | None = None,
        code: int = -26,
        *,
        reconsiderable: bool = False,
    ) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason
        self.code = code
        # a fee refusal that a package (CPFP, package RBF) may cure
        self.reconsiderable = reconsiderable

    @classmethod
    def from_policy(cls, refused: PolicyRejected) -> Rejected:
        return cls(refused.reason, refused.message, reconsiderable=refused.reconsiderable)


@dataclass(frozen=True)
class Coin:
    value: int
    script_pubkey: bytes
    height: int
    coinbase: bool


Outpoint = tuple[bytes, int]


@dataclass
class BlockRecord:
    block: Block
    height: int
    # Undo data, kept from the last time the block was connected: txid -> the coins it spent.
    spent: dict[bytes, list[Coin]] = field(default_factory=dict)

    def fee(self, tx: Tx) -> int | None:
        coins = self.spent.get(tx.txid)
        if coins is None:
            return None
        return sum(c.value for c in coins) - sum(o.value for o in tx.vout)

    @property
    def hash(self) -> bytes:
        return self.block.hash

    @property
    def header(self) -> Header:
        return self.block.header


@dataclass
class PackageOutcome:
    """submitpackage's verdict: per txid (fee, effective feerate sat/kvB, wtxids it was
    judged with) or an error message, and the txids the package replaced."""

    accepted: dict[bytes, tuple[int, int, list[bytes]]] = field(default_factory=dict)
    errors: dict[bytes, str] = field(default_factory=dict)
    replaced: list[bytes] = field(default_factory=list)


@dataclass
class MempoolEntry:
    tx: Tx
    fee: int
    time: int
    height: int
    parents: set[bytes]


def block_subsidy(height: int) -> int:
    halvings = height // HALVING_INTERVAL
    return 0 if halvings >= 64 else (50 * COIN) >> halvings


def mempool_rejection(state: str) -> Rejected:
    """Translate the kernel's block-level reject state into bitcoind's mempool answer."""
    # ConnectBlock appends the txid to CheckTxInputs' message; the mempool does not.
    state = re.sub(r" in transaction [0-9a-f]{64}$", "", state)
    reason, _, debug = state.partition(", ")
    if reason == "bad-txns-inputs-missingorspent":
        return Rejected("missing-inputs", "bad-txns-inputs-missingorspent", -25)
    if reason == "bad-txns-nonfinal":
        return Rejected("non-BIP68-final" if "BIP68" in debug else "non-final")
    if debug.startswith("Transaction check failed"):  # CheckTransaction: no debug in ATMP
        return Rejected(reason)
    for prefix in ("block-script-verify-flag-failed", "mandatory-script-verify-flag-failed"):
        if reason.startswith(prefix):
            reason = "mandatory-script-verify-flag-failed" + reason[len(prefix) :]
            return Rejected(reason, reason)
    return Rejected(reason, state)


class BlockLog:
    """Every block the kernel connected, in the order received: what a restart replays."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def read(self) -> list[bytes]:
        if self.path is None or not self.path.exists():
            return []
        data = self.path.read_bytes()
        blocks, pos = [], 0
        while pos + 4 <= len(data):
            (size,) = struct.unpack_from("<I", data, pos)
            if pos + 4 + size > len(data):
                break  # a torn last write
            blocks.append(data[pos + 4 : pos + 4 + size])
            pos += 4 + size
        return blocks

    def append(self, raw: bytes) -> None:
        if self.path is None:
            return
        with self.path.open("ab") as out:
            out.write(struct.pack("<I", len(raw)) + raw)


class Node:
    def __init__(self, datadir: Path, *, policy: Policy | None = None) -> None:
        self.datadir = datadir
        datadir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.policy = policy or Policy()
        self.blocks: dict[bytes, BlockRecord] = {}
        self.active: list[bytes] = []
        self.utxo: dict[Outpoint, Coin] = {}
        self.txindex: dict[bytes, tuple[bytes, int]] = {}
        self.mempool: dict[bytes, MempoolEntry] = {}
        self.mempool_spends: dict[Outpoint, bytes] = {}
        self.mempool_wtxids: dict[bytes, bytes] = {}
        self.mempool_sequence = 0
        self.wallet = Keystore(datadir / "wallet.json")
        self.wallet_coins: set[Outpoint] = set()
        self.invalidated: set[bytes] = set()
        self._invalid_path = datadir / "invalidated.json"
        if self._invalid_path.exists():
            saved = json.loads(self._invalid_path.read_text())
            self.invalidated = {bytes.fromhex(h) for h in saved}
        self._log = BlockLog(datadir / "blocks.log")
        self._kernel_serial = 0
        self._nonce = int.from_bytes(os.urandom(4), "little")
        for stale in datadir.glob("kernel.*"):  # chainstates of a previous run: replayed anew
            shutil.rmtree(stale, ignore_errors=True)
        self.kernel = self._new_kernel()
        for raw in self._log.read():
            block = parse_block(raw)
            parent = self.blocks.get(block.header.prev_hash)
            if parent is not None and block.hash not in self.blocks:
                self.blocks[block.hash] = BlockRecord(block, parent.height + 1)
        self._replay()

    # --- kernel ------------------------------------------------------------------------
    def _new_kernel(self) -> Kernel:
        self._kernel_serial += 1
        kernel = Kernel(self.datadir / f"kernel.{self._kernel_serial}")
        self._apply(kernel.take_events())
        return kernel

    def _apply(self, events: Iterable[ChainEvent]) -> list[bytes]:
        """Follow the kernel's events; returns the hashes of disconnected blocks."""
        disconnected = []
        for event in events:
            if event.connected:
                self._connect(event)
            else:
                self._disconnect(event)
                disconnected.append(event.block_hash)
        return disconnected

    def _connect(self, event: ChainEvent) -> None:
        record = self.blocks.get(event.block_hash)
        if record is None:
            assert event.raw is not None, "the kernel connected a block we never saw"
            record = BlockRecord(parse_block(event.raw), event.height)
            self.blocks[record.hash] = record
        assert event.height == len(self.active), "connect out of order"
        record.spent = {}
        for position, tx in enumerate(record.block.txs):
            txid = tx.txid
            if not tx.is_coinbase:
                coins = []
                for txin in tx.vin:
                    coins.append(self.utxo.pop(txin.outpoint))
                    self.wallet_coins.discard(txin.outpoint)
                record.spent[txid] = coins
            for index, out in enumerate(tx.vout):
                if out.script_pubkey[:1] == b"\x6a" or len(out.script_pubkey) > 10_000:
                    continue  # provably unspendable: never in the UTXO set
                self.utxo[(txid, index)] = Coin(
                    out.value, out.script_pubkey, event.height, tx.is_coinbase
                )
                if out.script_pubkey in self.wallet.by_script:
                    self.wallet_coins.add((txid, index))
            self.txindex[txid] = (record.hash, position)
        self.active.append(record.hash)

    def _disconnect(self, event: ChainEvent) -> None:
        record = self.blocks[event.block_hash]
        assert self.active, "disconnect from an empty chain"
        assert self.active[-1] == record.hash, "disconnect out of order"
        for tx in reversed(record.block.txs):
            txid = tx.txid
            for index in range(len(tx.vout)):
                self.utxo.pop((txid, index), None)
                self.wallet_coins.discard((txid, index))
            if self.txindex.get(txid, (None,))[0] == record.hash:
                del self.txindex[txid]
        for tx in record.block.txs[1:]:
            for txin, coin in zip(tx.vin, record.spent[tx.txid], strict=True):
                self.utxo[txin.outpoint] = coin
                if coin.script_pubkey in self.wallet.by_script:
                    self.wallet_coins.add(txin.outpoint)
        self.active.pop()

    def _replay(self) -> None:
        """Feed every stored block, in the order received, except invalidated branches."""
        excluded: set[bytes] = set()
        for record in list(self.blocks.values()):
            if record.height == 0:
                continue
            if record.hash in self.invalidated or record.header.prev_hash in excluded:
                excluded.add(record.hash)
                continue
            events, _state = self.kernel.process(record.block.raw)
            self._apply(events)

    # --- chain queries -----------------------------------------------------------------
    @property
    def height(self) -> int:
        return len(self.active) - 1

    @property
    def tip(self) -> BlockRecord:
        return self.blocks[self.active[-1]]

    def in_active_chain(self, block_hash: bytes) -> bool:
        record = self.blocks.get(block_hash)
        return (
            record is not None
            and record.height < len(self.active)
            and self.active[record.height] == block_hash
        )

    def median_time_past(self, block_hash: bytes) -> int:
        times: list[int] = []
        record: BlockRecord | None = self.blocks[block_hash]
        while record is not None and len(times) < 11:
            times.append(record.header.time)
            record = self.blocks.get(record.header.prev_hash)
        return sorted(times)[len(times) // 2]

    def coin(self, outpoint: Outpoint, *, include_mempool: bool) -> tuple[Coin, bool] | None:
        """(coin, in mempool) of an unspent output."""
        if include_mempool:
            if outpoint in self.mempool_spends:
                return None
            entry = self.mempool.get(outpoint[0])
            if entry is not None and outpoint[1] < len(entry.tx.vout):
                out = entry.tx.vout[outpoint[1]]
                return Coin(out.value, out.script_pubkey, -1, False), True
        coin = self.utxo.get(outpoint)
        return (coin, False) if coin is not None else None

    # --- block building ----------------------------------------------------------------
    def _coinbase(self, height: int, payout: list[TxOut], txs: list[Tx]) -> Tx:
        self._nonce = (self._nonce + 1) & 0xFFFFFFFF
        script_sig = push_int(height) + push_data(struct.pack("<I", self._nonce))
        outputs = list(payout)
        reserved = b"\x00" * 32
        witness_root = merkle_root([b"\x00" * 32] + [tx.wtxid for tx in txs])
        commitment = dsha256(witness_root + reserved)
        outputs.append(TxOut(0, b"\x6a\x24" + WITNESS_COMMITMENT_HEADER + commitment))
        coinbase_in = TxIn(b"\x00" * 32, 0xFFFFFFFF, script_sig, 0xFFFFFFFF, (reserved,))
        return Tx(2, (coinbase_in,), tuple(outputs), 0)

    def build_block(self, payout: list[TxOut], txs: list[Tx]) -> Block:
        parent = self.tip
        height = parent.height + 1
        coinbase = self._coinbase(height, payout, txs)
        all_txs = [coinbase, *txs]
        header = Header(
            0x20000000,
            parent.hash,
            merkle_root([tx.txid for tx in all_txs]),
            # Regtest genesis time plus one second per block: never ahead of the real clock.
            max(parent.header.time + 1, self.median_time_past(parent.hash) + 1),
            REGTEST_BITS,
            0,
        )
        prefix = header.serialize()[:76]
        nonce = 0
        while int.from_bytes(dsha256(prefix + struct.pack("<I", nonce)), "little") > REGTEST_TARGET:
            nonce += 1
        header = Header(
            header.version, header.prev_hash, header.merkle_root, header.time, header.bits, nonce
        )
        body = b"".join(tx.serialize() for tx in all_txs)
        raw = header.serialize() + compact_size(len(all_txs)) + body
        return Block(header, tuple(all_txs), raw)

    def submit_block(self, block: Block) -> str | None:
        """Process a block on the tip; None if it became the tip, else the reject state."""
        parent = self.blocks[block.header.prev_hash]
        self.blocks[block.hash] = BlockRecord(block, parent.height + 1)
        events, state = self.kernel.process(block.raw)
        disconnected = self._apply(events)
        if self.active[-1] != block.hash:
            del self.blocks[block.hash]
            return state or "block not connected"
        self._log.append(block.raw)
        self._after_chain_change(disconnected)
        return None

    def mine(self, script_pubkey: bytes, txs: list[Tx] | None = None) -> bytes:
        """Mine one block paying `script_pubkey` (with the mempool unless `txs` is given)."""
        chosen = txs if txs is not None else self._block_template_txs()
        fees = 0
        for tx in chosen:
            entry = self.mempool.get(tx.txid)
            fees += entry.fee if entry is not None else 0
        payout = [TxOut(block_subsidy(self.height + 1) + fees, script_pubkey)]
        block = self.build_block(payout, chosen)
        state = self.submit_block(block)
        if state is not None:
            if txs is None and chosen:  # should not happen: the mempool is always re-checked
                self._refill_mempool([])
                return self.mine(script_pubkey, [])
            raise RpcError(-25, f"TestBlockValidity failed: {state.partition(', ')[0]}")
        return block.hash

    def _block_template_txs(self) -> list[Tx]:
        chosen, weight = [], 4000
        for entry in self.mempool.values():
            if weight + entry.tx.weight > MAX_BLOCK_WEIGHT - 4000:
                break
            chosen.append(entry.tx)
            weight += entry.tx.weight
        return chosen

    # --- mempool -----------------------------------------------------------------------
    def _ancestors(self, tx: Tx) -> list[Tx]:
        needed: set[bytes] = set()
        stack = [txin.prev_txid for txin in tx.vin if txin.prev_txid in self.mempool]
        while stack:
            txid = stack.pop()
            if txid in needed:
                continue
            needed.add(txid)
            stack.extend(self.mempool[txid].parents)
        return [entry.tx for txid, entry in self.mempool.items() if txid in needed]

    def _kernel_check(self, txs: list[Tx]) -> str | None:
        """None if `txs` (in order) are valid in the next block, else the kernel's state."""
        block = self.build_block([TxOut(MAX_MONEY, OP_TRUE)], txs)
        events, state = self.kernel.process(block.raw)
        assert not events, "a candidate block was connected"
        if state is not None and state.startswith("bad-cb-amount"):
            return None
        return state or "candidate block was not checked"

    def precheck(self, tx: Tx) -> Rejected | None:
        """What bitcoind's mempool refuses before validation; None if it would go on."""
        if tx.is_coinbase:
            return Rejected("coinbase")
        if tx.txid in self.mempool:
            if self.mempool[tx.txid].tx.wtxid == tx.wtxid:
                return Rejected("txn-already-in-mempool")
            return Rejected("txn-same-nonwitness-data-in-mempool")
        if any((tx.txid, i) in self.utxo for i in range(len(tx.vout))):
            return Rejected("txn-already-known")
        return None

    def _prevout_value(self, outpoint: Outpoint, package: dict[bytes, Tx]) -> int:
        txid, index = outpoint
        source = package.get(txid) or (self.mempool[txid].tx if txid in self.mempool else None)
        return source.vout[index].value if source is not None else self.utxo[outpoint].value

    def fee_of(self, tx: Tx, package: dict[bytes, Tx] | None = None) -> int:
        """The fee, from the chain, the mempool and the other members of a package."""
        total = sum(self._prevout_value(txin.outpoint, package or {}) for txin in tx.vin)
        return total - sum(out.value for out in tx.vout)

    def conflicts(self, txs: list[Tx]) -> list[bytes]:
        """The mempool transactions spending an output these spend (direct conflicts)."""
        found: list[bytes] = []
        for tx in txs:
            for txin in tx.vin:
                other = self.mempool_spends.get(txin.outpoint)
                if other is not None and other not in found:
                    found.append(other)
        return found

    def with_descendants(self, txids: list[bytes]) -> list[bytes]:
        out = list(txids)
        for txid in txids:
            out += [d for d in self.descendants(txid) if d not in out]
        return out

    def _conflict(self, txid: bytes) -> Conflict:
        entry = self.mempool[txid]
        return Conflict(txid[::-1].hex(), entry.fee, entry.tx.vsize)

    def _check_new_unconfirmed(self, tx: Tx, evicted: list[bytes]) -> None:
        """BIP-125 rule 2: a replacement spends no unconfirmed output its conflicts did not."""
        allowed = {txin.prev_txid for txid in evicted for txin in self.mempool[txid].tx.vin}
        for index, txin in enumerate(tx.vin):
            if txin.prev_txid in self.mempool and txin.prev_txid not in allowed:
                raise Rejected(
                    "replacement-adds-unconfirmed",
                    f"replacement-adds-unconfirmed, replacement {tx.txid[::-1].hex()} adds "
                    f"unconfirmed input, idx {index}",
                )

    def _check_policy(self, tx: Tx, fee: int, direct: list[bytes], evicted: list[bytes]) -> None:
        """Fee floor, min relay fee and, for a replacement, Core's RBF rules."""
        check_feerate(fee, tx.vsize, self.policy)
        if not direct:
            return
        self._check_new_unconfirmed(tx, evicted)
        check_replacement(
            txid_hex=tx.txid[::-1].hex(),
            fee=fee,
            vsize=tx.vsize,
            direct=[self._conflict(txid) for txid in direct],
            evicted_fees=sum(self.mempool[txid].fee for txid in evicted),
            evicted_count=len(evicted),
            policy=self.policy,
        )

    def check_transaction(self, tx: Tx, *, bypass_fees: bool = False) -> tuple[int, list[bytes]]:
        """Validate for the mempool without adding: (fee, mempool txids it would replace).
        Raises Rejected. `bypass_fees`: no feerate or replacement rules (a reorg's returns)."""
        refused = self.precheck(tx)
        if refused is not None:
            raise refused
        try:
            check_standard(tx, self.policy)
        except PolicyRejected as exc:
            raise Rejected.from_policy(exc) from None
        direct = self.conflicts([tx])
        evicted = self.with_descendants(direct)
        ancestors = self._ancestors(tx)
        if any(a.txid in evicted for a in ancestors):
            raise Rejected(
                "bad-txns-spends-conflicting-tx",
                f"bad-txns-spends-conflicting-tx, {tx.txid[::-1].hex()} spends conflicting "
                "transaction",
            )
        state = self._kernel_check([*ancestors, tx])
        if state is not None:
            raise mempool_rejection(state)
        fee = self.fee_of(tx)
        if not bypass_fees:
            try:
                self._check_policy(tx, fee, direct, evicted)
            except PolicyRejected as exc:
                raise Rejected.from_policy(exc) from None
        return fee, evicted

    def add_to_mempool(self, tx: Tx, fee: int) -> None:
        txid = tx.txid
        parents = {txin.prev_txid for txin in tx.vin if txin.prev_txid in self.mempool}
        self.mempool[txid] = MempoolEntry(tx, fee, int(time.time()), self.height, parents)
        self.mempool_wtxids[tx.wtxid] = txid
        self.mempool_sequence += 1
        for txin in tx.vin:
            self.mempool_spends[txin.outpoint] = txid

    def remove_from_mempool(self, txids: list[bytes]) -> None:
        for txid in txids:
            entry = self.mempool.pop(txid, None)
            if entry is None:
                continue
            self.mempool_wtxids.pop(entry.tx.wtxid, None)
            for txin in entry.tx.vin:
                if self.mempool_spends.get(txin.outpoint) == txid:
                    del self.mempool_spends[txin.outpoint]
        if txids:
            self.mempool_sequence += 1

    def accept(self, tx: Tx, *, bypass_fees: bool = False) -> int:
        fee, evicted = self.check_transaction(tx, bypass_fees=bypass_fees)
        self.remove_from_mempool(evicted)
        self.add_to_mempool(tx, fee)
        return fee

    # --- packages (submitpackage) ------------------------------------------------------
    def accept_package(self, txs: list[Tx]) -> PackageOutcome:
        """Core's AcceptPackage, simplified: each transaction alone first; those refused only
        for their fee (and the rest of the package after them) are then judged together,
        at the package feerate, with package RBF for a parent and its child."""
        outcome = PackageOutcome()
        pending: list[Tx] = []
        for tx in txs:
            entry = self.mempool.get(tx.txid)
            if entry is not None:
                outcome.accepted[tx.txid] = (entry.fee, rate_of(entry.fee, tx.vsize), [tx.wtxid])
            elif pending:  # a parent waits for the package: its child is judged with it
                pending.append(tx)
            else:
                self._accept_alone(tx, outcome, pending)
        if pending and outcome.errors:
            for tx in pending:  # Core stops at the first hard failure
                outcome.errors.setdefault(tx.txid, "package-not-validated")
        elif pending:
            try:
                self._accept_together(pending, outcome)
            except Rejected as refused:
                for tx in pending:
                    outcome.errors[tx.txid] = refused.message
        return outcome

    def _accept_alone(self, tx: Tx, outcome: PackageOutcome, pending: list[Tx]) -> None:
        try:
            fee, evicted = self.check_transaction(tx)
        except Rejected as refused:
            if refused.reconsiderable:
                pending.append(tx)
            else:
                outcome.errors[tx.txid] = refused.message
            return
        self.remove_from_mempool(evicted)
        outcome.replaced += evicted
        self.add_to_mempool(tx, fee)
        outcome.accepted[tx.txid] = (fee, rate_of(fee, tx.vsize), [tx.wtxid])

    def _package_prechecks(self, txs: list[Tx], evicted: list[bytes]) -> list[Tx]:
        """Standardness of each member and consensus of all: the members' mempool ancestors."""
        ancestors: list[Tx] = []
        for tx in txs:
            refused = self.precheck(tx)
            if refused is not None:
                raise refused
            try:
                check_standard(tx, self.policy)
            except PolicyRejected as exc:
                raise Rejected.from_policy(exc) from None
            ancestors += [a for a in self._ancestors(tx) if a not in ancestors]
        if any(a.txid in evicted for a in ancestors):
            raise Rejected("bad-txns-spends-conflicting-tx")
        state = self._kernel_check([*ancestors, *txs])
        if state is not None:
            raise mempool_rejection(state)
        return ancestors

    def _accept_together(self, txs: list[Tx], outcome: PackageOutcome) -> None:
        direct = self.conflicts(txs)
        evicted = self.with_descendants(direct)
        self._package_prechecks(txs, evicted)
        members = {tx.txid: tx for tx in txs}
        fees = [self.fee_of(tx, members) for tx in txs]
        total_fee, total_vsize = sum(fees), sum(tx.vsize for tx in txs)
        try:
            check_feerate(total_fee, total_vsize, self.policy, package=True)
            if direct:
                self._check_package_rbf(txs, fees, direct, evicted)
        except PolicyRejected as exc:
            raise Rejected.from_policy(exc) from None
        self.remove_from_mempool(evicted)
        outcome.replaced += evicted
        wtxids = [tx.wtxid for tx in txs]
        for tx, fee in zip(txs, fees, strict=True):
            self.add_to_mempool(tx, fee)
            outcome.accepted[tx.txid] = (fee, rate_of(total_fee, total_vsize), wtxids)

    def _check_package_rbf(
        self, txs: list[Tx], fees: list[int], direct: list[bytes], evicted: list[bytes]
    ) -> None:
        if len(txs) != 2:
            raise PolicyRejected("package RBF failed: package must be 1-parent-1-child")
        check_package_replacement(
            child_txid_hex=txs[-1].txid[::-1].hex(),
            parent_fee=fees[0],
            parent_vsize=txs[0].vsize,
            fee=sum(fees),
            vsize=sum(tx.vsize for tx in txs),
            direct=[self._conflict(txid) for txid in direct],
            evicted_fees=sum(self.mempool[txid].fee for txid in evicted),
            evicted_count=len(evicted),
            policy=self.policy,
        )

    def descendants(self, txid: bytes) -> list[bytes]:
        found: list[bytes] = []
        frontier = [txid]
        while frontier:
            current = frontier.pop()
            for other, entry in self.mempool.items():
                if current in entry.parents and other not in found:
                    found.append(other)
                    frontier.append(other)
        return found

    def _refill_mempool(self, first: list[Tx]) -> None:
        """Re-check the disconnected transactions, then the old mempool, against the new tip."""
        candidates = [*first, *(entry.tx for entry in self.mempool.values())]
        times = {txid: entry.time for txid, entry in self.mempool.items()}
        self.mempool.clear()
        self.mempool_spends.clear()
        self.mempool_wtxids.clear()
        seen: set[bytes] = set()
        unique = []
        for tx in candidates:
            if tx.txid not in seen and tx.txid not in self.txindex:
                seen.add(tx.txid)
                unique.append(tx)
        if not unique:
            return
        spends = [txin.outpoint for tx in unique for txin in tx.vin]
        if len(spends) == len(set(spends)) and self._kernel_check(unique) is None:
            for tx in unique:  # all valid together: one kernel call for the whole mempool
                self.add_to_mempool(tx, self.fee_of(tx))
        else:
            for tx in unique:
                if self.conflicts([tx]):
                    continue  # the first of two conflicting transactions stays
                try:
                    self.accept(tx, bypass_fees=True)  # as Core: no fee rules on the way back
                except Rejected:
                    continue
        for txid, entry in self.mempool.items():
            entry.time = times.get(txid, entry.time)

    def _after_chain_change(self, disconnected: list[bytes]) -> None:
        returning = [
            tx for block_hash in disconnected for tx in self.blocks[block_hash].block.txs[1:]
        ]
        self._refill_mempool(returning)

    # --- invalidateblock / reconsiderblock ---------------------------------------------
    def _save_invalidated(self) -> None:
        self._invalid_path.write_text(json.dumps(sorted(h.hex() for h in self.invalidated)))

    def _rebuild(self) -> None:
        old_active = list(self.active)
        self.kernel.close()
        self.active, self.utxo, self.txindex = [], {}, {}
        self.wallet_coins = set()
        self.kernel = self._new_kernel()
        self._replay()
        still_active = set(self.active)
        disconnected = [h for h in old_active if h not in still_active]
        self._after_chain_change(disconnected)

    def invalidate(self, block_hash: bytes) -> None:
        if block_hash not in self.blocks:
            raise RpcError(-5, "Block not found")
        if block_hash == REGTEST_GENESIS_HASH:
            raise RpcError(-1, "Can't invalidate the genesis block")
        self.invalidated.add(block_hash)
        self._save_invalidated()
        self._rebuild()

    def reconsider(self, block_hash: bytes) -> None:
        if block_hash not in self.blocks:
            raise RpcError(-5, "Block not found")
        cleared = {block_hash}
        for record in self.blocks.values():  # descendants, in the order received
            if record.header.prev_hash in cleared:
                cleared.add(record.hash)
        ancestor: BlockRecord | None = self.blocks[block_hash]
        while ancestor is not None:  # and ancestors
            cleared.add(ancestor.hash)
            ancestor = self.blocks.get(ancestor.header.prev_hash)
        if self.invalidated & cleared:
            self.invalidated -= cleared
            self._save_invalidated()
            self._rebuild()

    def close(self) -> None:
        self.kernel.close()


__all__ = ["DecodeError", "Node", "Rejected", "RpcError"]
