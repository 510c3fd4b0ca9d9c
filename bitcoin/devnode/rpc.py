"""bitcoind's JSON-RPC methods (the subset btcloan uses), with bitcoind's shapes and errors."""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from bitcoin.devnode.codec import (
    Block,
    DecodeError,
    Tx,
    TxIn,
    TxOut,
    bits_to_target,
    block_work,
    difficulty,
    hash_hex,
    parse_tx,
)
from bitcoin.devnode.kernel import REGTEST_GENESIS_HASH
from bitcoin.devnode.node import (
    COIN,
    COINBASE_MATURITY,
    MAX_MONEY,
    Coin,
    Node,
    Rejected,
    RpcError,
    block_subsidy,
)
from bitcoin.devnode.script import address_to_script, script_pubkey_json, to_asm
from bitcoin.devnode.wallet import sign_p2wpkh

DEFAULT_MAX_FEERATE = Decimal("0.10")  # BTC/kvB, as bitcoind's sendrawtransaction
VERSION = 280000
SUBVERSION = "/btcloan-devnode:0.1.0/"
DUST = 546


class Amount(int):
    """Satoshis that serialise as a BTC JSON number with 8 decimals, as bitcoind prints them."""


_AMOUNT_MARK = "\x00amt:"
_AMOUNT_RE = re.compile(r'"\\u0000amt:(-?\d+)"')


def _mark(value: Any) -> Any:
    if isinstance(value, Amount):
        return f"{_AMOUNT_MARK}{int(value)}"
    if isinstance(value, dict):
        return {k: _mark(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mark(v) for v in value]
    return value


def _format_amount(match: re.Match[str]) -> str:
    sats = int(match.group(1))
    sign = "-" if sats < 0 else ""
    whole, frac = divmod(abs(sats), COIN)
    return f"{sign}{whole}.{frac:08d}"


def dumps(value: Any) -> str:
    return _AMOUNT_RE.sub(_format_amount, json.dumps(_mark(value)))


# --- parameter parsing, with bitcoind's messages ---------------------------------------------
def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _expect(value: Any, kind: str) -> None:
    if _type_name(value) != kind:
        raise RpcError(-3, f"JSON value of type {_type_name(value)} is not of expected type {kind}")


def parse_hash(value: Any, name: str) -> bytes:
    _expect(value, "string")
    if len(value) != 64:
        raise RpcError(-8, f"{name} must be of length 64 (not {len(value)}, for '{value}')")
    try:
        return bytes.fromhex(value)[::-1]
    except ValueError:
        raise RpcError(-8, f"{name} must be hexadecimal string (not '{value}')") from None


def parse_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        _expect(value, "number")
    if isinstance(value, Decimal):
        if value != value.to_integral_value():
            raise RpcError(-1, "JSON integer out of range")
        return int(value)
    return int(value)


def parse_bool(value: Any) -> bool:
    _expect(value, "bool")
    return bool(value)


def parse_amount(value: Any) -> int:
    """bitcoind's AmountFromValue: a number or numeric string, at most 8 decimals."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise RpcError(-3, "Amount is not a number or string")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise RpcError(-3, "Invalid amount") from None
    sats = amount * COIN
    if sats != sats.to_integral_value() or not amount.is_finite():
        raise RpcError(-3, "Invalid amount")
    if not 0 <= sats <= MAX_MONEY:
        raise RpcError(-3, "Amount out of range")
    return int(sats)


def parse_raw_tx(value: Any, message: str) -> Tx:
    _expect(value, "string")
    try:
        tx = parse_tx(bytes.fromhex(value))
    except (ValueError, DecodeError):
        raise RpcError(-22, message) from None
    if not tx.vin:
        raise RpcError(-22, message)
    return tx


# --- JSON shapes -----------------------------------------------------------------------------
def tx_json(
    tx: Tx,
    *,
    include_hex: bool = True,
    fee: int | None = None,
    prevouts: list[Coin] | None = None,
) -> dict[str, Any]:
    """bitcoind's TxToUniv; `prevouts` (undo data) adds vin[].prevout, as verbosity 3 does."""
    vin: list[dict[str, Any]] = []
    for n, txin in enumerate(tx.vin):
        item: dict[str, Any]
        if tx.is_coinbase:
            item = {"coinbase": txin.script_sig.hex()}
        else:
            item = {
                "txid": hash_hex(txin.prev_txid),
                "vout": txin.prev_vout,
                "scriptSig": {"asm": to_asm(txin.script_sig), "hex": txin.script_sig.hex()},
            }
        if txin.witness:
            item["txinwitness"] = [w.hex() for w in txin.witness]
        if prevouts is not None and not tx.is_coinbase:
            coin = prevouts[n]
            item["prevout"] = {
                "generated": coin.coinbase,
                "height": coin.height,
                "value": Amount(coin.value),
                "scriptPubKey": script_pubkey_json(coin.script_pubkey),
            }
        item["sequence"] = txin.sequence
        vin.append(item)
    out: dict[str, Any] = {
        "txid": hash_hex(tx.txid),
        "hash": hash_hex(tx.wtxid),
        "version": tx.version,
        "size": tx.size,
        "vsize": tx.vsize,
        "weight": tx.weight,
        "locktime": tx.locktime,
        "vin": vin,
        "vout": [
            {"value": Amount(o.value), "n": n, "scriptPubKey": script_pubkey_json(o.script_pubkey)}
            for n, o in enumerate(tx.vout)
        ],
    }
    if fee is not None:
        out["fee"] = Amount(fee)
    if include_hex:
        out["hex"] = tx.serialize().hex()
    return out


def _positional_kwargs(
    method: str, signature: inspect.Signature, params: list[Any]
) -> dict[str, Any]:
    if len(params) > len(signature.parameters):
        raise RpcError(-1, f"{method}: too many parameters")
    # null means "use the default", as in bitcoind
    return {
        name: value
        for name, value in zip(signature.parameters, params, strict=False)
        if value is not None
    }


def _named_kwargs(signature: inspect.Signature, params: dict[str, Any]) -> dict[str, Any]:
    if "verbose" in params and "verbosity" in signature.parameters:
        params = {("verbosity" if k == "verbose" else k): v for k, v in params.items()}
    unknown = [k for k in params if k not in signature.parameters]
    if unknown:
        raise RpcError(-8, f"Unknown named parameter {unknown[0]}")
    return {k: v for k, v in params.items() if v is not None}


class Methods:
    """One method per RPC; parameter names are bitcoind's, so named parameters work."""

    def __init__(self, node: Node, *, feerate_sat_vb: float) -> None:
        self.node = node
        self.feerate_sat_vb = feerate_sat_vb  # the faucet wallet's (bitcoind: -fallbackfee)
        self.wallet_txids: set[bytes] = set()
        self.table: dict[str, Callable[..., Any]] = {
            name: getattr(self, name)
            for name, member in vars(Methods).items()
            if inspect.isfunction(member) and not name.startswith("_") and name != "call"
        }

    def call(self, method: str, params: Any) -> Any:
        handler = self.table.get(method)
        if handler is None:
            raise RpcError(-32601, "Method not found")
        signature = inspect.signature(handler)
        if params is None or isinstance(params, list):
            kwargs = _positional_kwargs(method, signature, params or [])
        elif isinstance(params, dict):
            kwargs = _named_kwargs(signature, params)
        else:
            raise RpcError(-32600, "Params must be an array or object")
        for name, parameter in signature.parameters.items():
            if parameter.default is inspect.Parameter.empty and name not in kwargs:
                raise RpcError(-1, f"{method}: missing required parameter {name}")
        with self.node.lock:
            return handler(**kwargs)

    # --- helpers ---------------------------------------------------------------------------
    def _record(self, value: Any, name: str = "blockhash") -> Any:
        block_hash = parse_hash(value, name)
        record = self.node.blocks.get(block_hash)
        if record is None:
            raise RpcError(-5, "Block not found")
        return record

    def _header_json(self, record: Any) -> dict[str, Any]:
        node = self.node
        header = record.header
        active = node.in_active_chain(record.hash)
        out: dict[str, Any] = {
            "hash": hash_hex(record.hash),
            "confirmations": node.height - record.height + 1 if active else -1,
            "height": record.height,
            "version": header.version,
            "versionHex": f"{header.version & 0xFFFFFFFF:08x}",
            "merkleroot": hash_hex(header.merkle_root),
            "time": header.time,
            "mediantime": node.median_time_past(record.hash),
            "nonce": header.nonce,
            "bits": f"{header.bits:08x}",
            "target": f"{bits_to_target(header.bits):064x}",
            "difficulty": difficulty(header.bits),
            "chainwork": f"{block_work(header.bits) * (record.height + 1):064x}",
            "nTx": len(record.block.txs),
        }
        if record.height > 0:
            out["previousblockhash"] = hash_hex(header.prev_hash)
        if active and record.height < node.height:
            out["nextblockhash"] = hash_hex(node.active[record.height + 1])
        return out

    # --- chain -----------------------------------------------------------------------------
    def getblockchaininfo(self) -> dict[str, Any]:
        node = self.node
        tip = node.tip
        size = sum(len(r.block.raw) for r in node.blocks.values())
        return {
            "chain": "regtest",
            "blocks": node.height,
            "headers": node.height,
            "bestblockhash": hash_hex(tip.hash),
            "bits": f"{tip.header.bits:08x}",
            "target": f"{bits_to_target(tip.header.bits):064x}",
            "difficulty": difficulty(tip.header.bits),
            "time": tip.header.time,
            "mediantime": node.median_time_past(tip.hash),
            "verificationprogress": 1,
            "initialblockdownload": False,
            "chainwork": f"{block_work(tip.header.bits) * (node.height + 1):064x}",
            "size_on_disk": size,
            "pruned": False,
            "warnings": [],
        }

    def getblockcount(self) -> int:
        return self.node.height

    def getbestblockhash(self) -> str:
        return hash_hex(self.node.active[-1])

    def getblockhash(self, height: Any) -> str:
        index = parse_int(height)
        if not 0 <= index <= self.node.height:
            raise RpcError(-8, "Block height out of range")
        return hash_hex(self.node.active[index])

    def getblockheader(self, blockhash: Any, verbose: Any = True) -> Any:
        record = self._record(blockhash)
        if not parse_bool(verbose):
            return record.header.serialize().hex()
        return self._header_json(record)

    def getblock(self, blockhash: Any, verbosity: Any = 1) -> Any:
        record = self._record(blockhash)
        level = int(verbosity) if isinstance(verbosity, bool) else parse_int(verbosity)
        block: Block = record.block
        if level <= 0:
            return block.raw.hex()
        out = self._header_json(record)
        stripped = 80 + len(block.raw) - 80 - sum(tx.size for tx in block.txs)
        stripped += sum(len(tx.serialize(witness=False)) for tx in block.txs)
        out["strippedsize"] = stripped
        out["size"] = len(block.raw)
        out["weight"] = stripped * 3 + len(block.raw)
        if level == 1:
            out["tx"] = [hash_hex(tx.txid) for tx in block.txs]
        else:
            out["tx"] = [
                tx_json(
                    tx,
                    fee=record.fee(tx),
                    prevouts=record.spent.get(tx.txid) if level >= 3 else None,
                )
                for tx in block.txs
            ]
        return out

    def getrawtransaction(self, txid: Any, verbosity: Any = 0, blockhash: Any = None) -> Any:
        node = self.node
        wanted = parse_hash(txid, "parameter 1")
        level = int(verbosity) if isinstance(verbosity, bool) else parse_int(verbosity)
        if blockhash is not None:
            block_record = self._record(blockhash, "parameter 3")
            tx = self._tx_in_block(block_record, wanted)
        else:
            tx, block_record = self._find_tx(wanted)
        if level <= 0:
            return tx.serialize().hex()
        if block_record is not None and level >= 2:
            out = tx_json(tx, fee=block_record.fee(tx), prevouts=block_record.spent.get(wanted))
        else:
            out = tx_json(tx)
        if block_record is None:
            return out
        active = node.in_active_chain(block_record.hash)
        if blockhash is not None:
            out = {"in_active_chain": active, **out}
        out["blockhash"] = hash_hex(block_record.hash)
        out["confirmations"] = node.height - block_record.height + 1 if active else 0
        out["time"] = block_record.header.time
        out["blocktime"] = block_record.header.time
        return out

    def _tx_in_block(self, block_record: Any, wanted: bytes) -> Tx:
        tx = next((t for t in block_record.block.txs if t.txid == wanted), None)
        if tx is None:
            raise RpcError(
                -5,
                "No such transaction found in the provided block. "
                "Use gettransaction for wallet transactions.",
            )
        return tx

    def _find_tx(self, wanted: bytes) -> tuple[Tx, Any]:
        """(transaction, its block record or None when in the mempool), as bitcoind's
        -txindex finds it."""
        node = self.node
        if wanted == node.blocks[REGTEST_GENESIS_HASH].block.txs[0].txid:
            raise RpcError(
                -5,
                "The genesis block coinbase is not considered an ordinary transaction "
                "and cannot be retrieved",
            )
        entry = node.mempool.get(wanted)
        if entry is not None:
            return entry.tx, None
        if wanted in node.txindex:
            block_hash, position = node.txindex[wanted]
            block_record = node.blocks[block_hash]
            return block_record.block.txs[position], block_record
        raise RpcError(
            -5,
            "No such mempool or blockchain transaction. "
            "Use gettransaction for wallet transactions.",
        )

    def gettxout(self, txid: Any, n: Any, include_mempool: Any = True) -> Any:
        node = self.node
        outpoint = (parse_hash(txid, "txid"), parse_int(n))
        found = node.coin(outpoint, include_mempool=parse_bool(include_mempool))
        if found is None:
            return None
        coin, in_mempool = found
        return {
            "bestblock": hash_hex(node.active[-1]),
            "confirmations": 0 if in_mempool else node.height - coin.height + 1,
            "value": Amount(coin.value),
            "scriptPubKey": script_pubkey_json(coin.script_pubkey),
            "coinbase": coin.coinbase,
        }

    def decoderawtransaction(self, hexstring: Any, iswitness: Any = None) -> Any:
        return tx_json(parse_raw_tx(hexstring, "TX decode failed"), include_hex=False)

    # --- mempool ---------------------------------------------------------------------------
    def _feerate_limit(self, maxfeerate: Any) -> int:
        """sat/kvB; 0 disables the check."""
        return parse_amount(maxfeerate)

    def sendrawtransaction(
        self, hexstring: Any, maxfeerate: Any = DEFAULT_MAX_FEERATE, maxburnamount: Any = 0
    ) -> str:
        node = self.node
        tx = parse_raw_tx(hexstring, "TX decode failed. Make sure the tx has at least one input.")
        limit = self._feerate_limit(maxfeerate)
        burn_limit = parse_amount(maxburnamount)
        for out in tx.vout:
            unspendable = out.script_pubkey[:1] == b"\x6a" or len(out.script_pubkey) > 10_000
            if unspendable and out.value > burn_limit:
                raise RpcError(
                    -25, "Unspendable output exceeds maximum configured by user (maxburnamount)"
                )
        entry = node.mempool.get(tx.txid)
        if entry is not None and entry.tx.wtxid == tx.wtxid:
            return hash_hex(tx.txid)
        if any((tx.txid, i) in node.utxo for i in range(len(tx.vout))):
            raise RpcError(-27, "Transaction already in block chain")
        try:
            fee, evicted = node.check_transaction(tx)
        except Rejected as refused:
            raise RpcError(refused.code, refused.message) from None
        if limit and fee * 1000 > limit * tx.vsize:
            raise RpcError(
                -25, "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)"
            )
        node.remove_from_mempool(evicted)
        node.add_to_mempool(tx, fee)
        return hash_hex(tx.txid)

    def submitpackage(
        self, package: Any, maxfeerate: Any = DEFAULT_MAX_FEERATE, maxburnamount: Any = 0
    ) -> Any:
        """A child with its unconfirmed parents (Core v28+): each alone first, then those
        refused for their fee together at the package feerate, with package RBF."""
        _expect(package, "array")
        if not 1 <= len(package) <= 25:
            raise RpcError(-8, "Array must contain between 1 and 25 transactions.")
        self._feerate_limit(maxfeerate)
        parse_amount(maxburnamount)
        txs = [
            parse_raw_tx(raw, f"TX decode failed: {raw} Make sure the tx has at least one input.")
            for raw in package
        ]
        _check_child_with_parents(txs)
        outcome = self.node.accept_package(txs)
        results: dict[str, Any] = {}
        for tx in txs:
            item: dict[str, Any] = {"txid": hash_hex(tx.txid)}
            if tx.txid in outcome.errors:
                item["error"] = outcome.errors[tx.txid]
            else:
                fee, rate, includes = outcome.accepted[tx.txid]
                item["vsize"] = tx.vsize
                item["fees"] = {
                    "base": Amount(fee),
                    "effective-feerate": Amount(rate),
                    "effective-includes": [hash_hex(w) for w in includes],
                }
            results[hash_hex(tx.wtxid)] = item
        return {
            "package_msg": "transaction failed" if outcome.errors else "success",
            "tx-results": results,
            "replaced-transactions": [hash_hex(txid) for txid in outcome.replaced],
        }

    def testmempoolaccept(self, rawtxs: Any, maxfeerate: Any = DEFAULT_MAX_FEERATE) -> Any:
        node = self.node
        _expect(rawtxs, "array")
        if not 1 <= len(rawtxs) <= 25:
            raise RpcError(-8, "Array must contain between 1 and 25 transactions.")
        limit = self._feerate_limit(maxfeerate)
        txs = [
            parse_raw_tx(raw, f"TX decode failed: {raw} Make sure the tx has at least one input.")
            for raw in rawtxs
        ]
        saved = (dict(node.mempool), dict(node.mempool_spends), dict(node.mempool_wtxids))
        results = []
        try:
            for tx in txs:
                item: dict[str, Any] = {"txid": hash_hex(tx.txid), "wtxid": hash_hex(tx.wtxid)}
                try:
                    fee, evicted = node.check_transaction(tx)
                    if limit and fee * 1000 > limit * tx.vsize:
                        raise Rejected("max-fee-exceeded")
                except Rejected as refused:
                    item["allowed"] = False
                    item["reject-reason"] = refused.reason
                    item["reject-details"] = refused.message
                else:
                    node.remove_from_mempool(evicted)
                    node.add_to_mempool(tx, fee)  # later package members may spend it
                    item["allowed"] = True
                    item["vsize"] = tx.vsize
                    item["fees"] = {
                        "base": Amount(fee),
                        "effective-feerate": Amount(fee * 1000 // tx.vsize),
                        "effective-includes": [hash_hex(tx.wtxid)],
                    }
                results.append(item)
        finally:
            node.mempool, node.mempool_spends, node.mempool_wtxids = saved
        return results

    def _entry_json(self, txid: bytes) -> dict[str, Any]:
        node = self.node
        entry = node.mempool[txid]
        ancestors = node._ancestors(entry.tx)
        descendants = [node.mempool[d].tx for d in node.descendants(txid)]
        replaceable = any(
            txin.sequence < 0xFFFFFFFE for tx in [*ancestors, entry.tx] for txin in tx.vin
        )
        ancestor_fee = entry.fee + sum(node.mempool[a.txid].fee for a in ancestors)
        descendant_fee = entry.fee + sum(node.mempool[d.txid].fee for d in descendants)
        return {
            "vsize": entry.tx.vsize,
            "weight": entry.tx.weight,
            "time": entry.time,
            "height": entry.height,
            "descendantcount": len(descendants) + 1,
            "descendantsize": entry.tx.vsize + sum(d.vsize for d in descendants),
            "ancestorcount": len(ancestors) + 1,
            "ancestorsize": entry.tx.vsize + sum(a.vsize for a in ancestors),
            "wtxid": hash_hex(entry.tx.wtxid),
            "fees": {
                "base": Amount(entry.fee),
                "modified": Amount(entry.fee),
                "ancestor": Amount(ancestor_fee),
                "descendant": Amount(descendant_fee),
            },
            "depends": sorted(hash_hex(p) for p in entry.parents),
            "spentby": sorted(
                hash_hex(other) for other, e in node.mempool.items() if txid in e.parents
            ),
            "bip125-replaceable": replaceable,
            "unbroadcast": False,
        }

    def gettxspendingprevout(self, outputs: Any) -> list[dict[str, Any]]:
        _expect(outputs, "array")
        answers = []
        for item in outputs:
            _expect(item, "object")
            txid = parse_hash(item.get("txid"), "txid")
            vout = parse_int(item.get("vout"))
            answer: dict[str, Any] = {"txid": hash_hex(txid), "vout": vout}
            spender = self.node.mempool_spends.get((txid, vout))
            if spender is not None:
                answer["spendingtxid"] = hash_hex(spender)
            answers.append(answer)
        return answers

    def getrawmempool(self, verbose: Any = False, mempool_sequence: Any = False) -> Any:
        if parse_bool(verbose):
            if parse_bool(mempool_sequence):
                raise RpcError(-8, "Verbose results cannot contain mempool sequence values.")
            return {hash_hex(txid): self._entry_json(txid) for txid in self.node.mempool}
        txids = [hash_hex(txid) for txid in self.node.mempool]
        if parse_bool(mempool_sequence):
            return {"txids": txids, "mempool_sequence": self.node.mempool_sequence}
        return txids

    def getmempoolentry(self, txid: Any) -> Any:
        wanted = parse_hash(txid, "txid")
        if wanted not in self.node.mempool:
            raise RpcError(-5, "Transaction not in mempool")
        return self._entry_json(wanted)

    def getmempoolinfo(self) -> dict[str, Any]:
        entries = self.node.mempool.values()
        return {
            "loaded": True,
            "size": len(entries),
            "bytes": sum(e.tx.vsize for e in entries),
            "usage": sum(e.tx.size for e in entries),
            "total_fee": Amount(sum(e.fee for e in entries)),
            "maxmempool": 300_000_000,
            "mempoolminfee": Amount(self.node.policy.effective_min_fee()),
            "minrelaytxfee": Amount(self.node.policy.min_relay_feerate),
            "incrementalrelayfee": Amount(self.node.policy.incremental_relay_feerate),
            "unbroadcastcount": 0,
            "fullrbf": True,
        }

    def estimatesmartfee(self, conf_target: Any, estimate_mode: Any = "economical") -> Any:
        target = parse_int(conf_target)
        if not 1 <= target <= 1008:
            raise RpcError(-8, "Invalid conf_target, must be between 1 and 1008")
        policy = self.node.policy
        if policy.fee_estimate is None:  # a young node: too few blocks seen
            return {"errors": ["Insufficient data or no feerate found"], "blocks": 0}
        # as Core: never below what the mempool would take
        rate = max(policy.fee_estimate, policy.effective_min_fee())
        return {"feerate": Amount(rate), "blocks": max(2, target)}

    # --- devnode-only: what a busy network would do to the mempool and the estimator ---
    def devsetmempoolminfee(self, feerate: Any) -> dict[str, Any]:
        """Raise (or lower) the mempool floor, in BTC/kvB, as a full mempool does on bitcoind.
        Transactions already in the mempool stay."""
        self.node.policy.mempool_min_fee = parse_amount(feerate)
        return {"mempoolminfee": Amount(self.node.policy.effective_min_fee())}

    def devsetfeeestimate(self, feerate: Any = None) -> dict[str, Any]:
        """What estimatesmartfee answers, in BTC/kvB; null: "Insufficient data"."""
        self.node.policy.fee_estimate = None if feerate is None else parse_amount(feerate)
        return self.estimatesmartfee(6)

    # --- mining ----------------------------------------------------------------------------
    def _mine(self, count: int, script_pubkey: bytes) -> list[str]:
        return [hash_hex(self.node.mine(script_pubkey)) for _ in range(count)]

    def generatetoaddress(self, nblocks: Any, address: Any, maxtries: Any = 1_000_000) -> Any:
        count = parse_int(nblocks)
        _expect(address, "string")
        try:
            script_pubkey = address_to_script(address)
        except ValueError:
            raise RpcError(-5, "Error: Invalid address") from None
        return self._mine(count, script_pubkey)

    def generateblock(self, output: Any, transactions: Any, submit: Any = True) -> Any:
        node = self.node
        _expect(output, "string")
        script_pubkey = _output_script(output)
        _expect(transactions, "array")
        txs: list[Tx] = []
        for item in transactions:
            _expect(item, "string")
            if len(item) == 64 and re.fullmatch(r"[0-9a-fA-F]{64}", item):
                entry = node.mempool.get(bytes.fromhex(item)[::-1])
                if entry is None:
                    raise RpcError(-5, f"Transaction {item} not in mempool.")
                txs.append(entry.tx)
            else:
                try:
                    txs.append(parse_tx(bytes.fromhex(item)))
                except (ValueError, DecodeError):
                    raise RpcError(-22, f"Transaction decode failed for {item}") from None
        state = node._kernel_check(txs)
        if state is not None:
            raise RpcError(-25, f"TestBlockValidity failed: {state.partition(', ')[0]}")
        if not parse_bool(submit):
            fees = sum(node.mempool[t.txid].fee for t in txs if t.txid in node.mempool)
            block = node.build_block(
                [TxOut(block_subsidy(node.height + 1) + fees, script_pubkey)], txs
            )
            return {"hash": hash_hex(block.hash), "hex": block.raw.hex()}
        return {"hash": hash_hex(node.mine(script_pubkey, txs))}

    def invalidateblock(self, blockhash: Any) -> None:
        self.node.invalidate(parse_hash(blockhash, "blockhash"))

    def reconsiderblock(self, blockhash: Any) -> None:
        self.node.reconsider(parse_hash(blockhash, "blockhash"))

    # --- network (there is none) -----------------------------------------------------------
    def getnetworkinfo(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "subversion": SUBVERSION,
            "protocolversion": 70016,
            "localservices": "0000000000000c09",
            "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED"],
            "localrelay": True,
            "timeoffset": 0,
            "networkactive": False,
            "connections": 0,
            "connections_in": 0,
            "connections_out": 0,
            "networks": [],
            "relayfee": Amount(self.node.policy.min_relay_feerate),
            "incrementalfee": Amount(self.node.policy.incremental_relay_feerate),
            "localaddresses": [],
            "warnings": [],
        }

    def getconnectioncount(self) -> int:
        return 0

    def uptime(self) -> int:
        return int(time.monotonic() - _STARTED)

    # --- faucet wallet ---------------------------------------------------------------------
    def createwallet(
        self,
        wallet_name: Any,
        disable_private_keys: Any = False,
        blank: Any = False,
        passphrase: Any = "",
        avoid_reuse: Any = False,
        descriptors: Any = True,
        load_on_startup: Any = None,
        external_signer: Any = False,
    ) -> dict[str, Any]:
        """There is one faucet wallet; accepting this lets bitcoind-minded setup code run."""
        _expect(wallet_name, "string")
        return {"name": wallet_name, "warnings": []}

    def getnewaddress(self, label: Any = "", address_type: Any = "bech32") -> str:
        if address_type != "bech32":
            raise RpcError(-5, f"Unknown address type '{address_type}'")
        return self.node.wallet.new_key().address

    def _spendable(self) -> list[tuple[tuple[bytes, int], int, bytes]]:
        """(outpoint, value, script) of coins the wallet may spend now, largest first."""
        node = self.node
        coins = []
        for outpoint in node.wallet_coins:
            coin = node.utxo[outpoint]
            if outpoint in node.mempool_spends:
                continue
            if coin.coinbase and node.height - coin.height + 1 <= COINBASE_MATURITY:
                continue  # bitcoind's wallet waits one block more than consensus does
            coins.append((outpoint, coin.value, coin.script_pubkey))
        for txid in self.wallet_txids & node.mempool.keys():
            for index, out in enumerate(node.mempool[txid].tx.vout):
                outpoint = (txid, index)
                mine = out.script_pubkey in node.wallet.by_script
                if mine and outpoint not in node.mempool_spends:
                    coins.append((outpoint, out.value, out.script_pubkey))
        coins.sort(key=lambda c: (-c[1], c[0]))
        return coins

    def getbalance(
        self,
        dummy: Any = "*",
        minconf: Any = 0,
        include_watchonly: Any = True,
        avoid_reuse: Any = True,
    ) -> Amount:
        return Amount(sum(value for _, value, _ in self._spendable()))

    def sendtoaddress(
        self,
        address: Any,
        amount: Any,
        comment: Any = "",
        comment_to: Any = "",
        subtractfeefromamount: Any = False,
        replaceable: Any = True,
        conf_target: Any = 6,
        estimate_mode: Any = "unset",
        avoid_reuse: Any = True,
        fee_rate: Any = None,
        verbose: Any = False,
    ) -> Any:
        node = self.node
        _expect(address, "string")
        try:
            destination = address_to_script(address)
        except ValueError:
            raise RpcError(-5, f"Invalid Bitcoin address: {address}") from None
        value = parse_amount(amount)
        if value <= 0:
            raise RpcError(-3, "Invalid amount for send")
        # bitcoind's wallet: the fallback fee, never below what the mempool takes
        floor = self.node.policy.effective_min_fee() / 1000
        rate = max(self.feerate_sat_vb, floor)
        if fee_rate is not None:
            rate = float(Decimal(str(fee_rate)))
        subtract = parse_bool(subtractfeefromamount)
        change_key = node.wallet.new_key()
        chosen: list[tuple[tuple[bytes, int], int, bytes]] = []
        total = 0
        for coin in self._spendable():
            chosen.append(coin)
            total += coin[1]
            vsize = 11 + 68 * len(chosen) + 9 + len(destination) + 31
            fee = int(rate * vsize + 0.999)
            if total >= value + (0 if subtract else fee):
                break
        else:
            raise RpcError(-6, "Insufficient funds")
        pay = value - fee if subtract else value
        change = total - pay - fee
        if pay < DUST:
            raise RpcError(-6, "Transaction amount too small")
        outputs = [TxOut(pay, destination)]
        if change >= DUST:
            outputs.append(TxOut(change, change_key.script_pubkey))
        unsigned = Tx(
            2,
            tuple(TxIn(op[0], op[1], b"", 0xFFFFFFFD) for op, _, _ in chosen),
            tuple(outputs),
            node.height,
        )
        keys = [(node.wallet.by_script[script], val) for _, val, script in chosen]
        tx = sign_p2wpkh(unsigned, keys)
        try:
            node.accept(tx)
        except Rejected as refused:
            raise RpcError(-4, f"Transaction rejected: {refused.message}") from None
        self.wallet_txids.add(tx.txid)
        if parse_bool(verbose):
            return {"txid": hash_hex(tx.txid), "fee_reason": "Fallback fee"}
        return hash_hex(tx.txid)


_STARTED = time.monotonic()


def _check_child_with_parents(txs: list[Tx]) -> None:
    """Core's IsChildWithParentsTree: the last transaction spends every other one, and the
    parents do not spend each other."""
    parents = {tx.txid for tx in txs[:-1]}
    spent_by_child = {txin.prev_txid for txin in txs[-1].vin}
    spent_by_parents = {txin.prev_txid for tx in txs[:-1] for txin in tx.vin}
    if not parents <= spent_by_child or parents & spent_by_parents:
        raise RpcError(
            -25,
            "package topology disallowed. not child-with-parents or parents depend on each other.",
        )


def _output_script(output: str) -> bytes:
    """generateblock's `output`: an address, or an addr()/raw() descriptor."""
    text = output.split("#", 1)[0]
    try:
        if text.startswith("addr(") and text.endswith(")"):
            return address_to_script(text[5:-1])
        if text.startswith("raw(") and text.endswith(")"):
            return bytes.fromhex(text[4:-1])
        return address_to_script(text)
    except ValueError:
        raise RpcError(-5, "Error: Invalid address or descriptor") from None
