"""One RPC scenario, the same assertions, against the devnode and (when installed) bitcoind.

What the backend relies on: result shapes, confirmations, reject reasons and error codes.
"""

from __future__ import annotations

import re
from decimal import Decimal
from itertools import count

import pytest

from tests.devnode.conftest import RpcNode
from tests.devnode.taproot import TaprootOutput

pytestmark = pytest.mark.bitcoin_node

FEE = 1_000  # sats, ~7 sat/vB for these one-in one-out spends
BAD_SIGNATURE = re.compile(
    r"^(mandatory|mempool)-script-verify-flag-failed \(Invalid Schnorr signature\)"
)
_secrets = count(1000, 7)

HEADER_FIELDS = {
    "hash", "confirmations", "height", "version", "versionHex", "merkleroot", "time",
    "mediantime", "nonce", "bits", "difficulty", "chainwork", "nTx",
}  # fmt: skip
TX_FIELDS = {"txid", "hash", "version", "size", "vsize", "weight", "locktime", "vin", "vout"}
MEMPOOL_ENTRY_FIELDS = {
    "vsize",
    "weight",
    "time",
    "height",
    "descendantcount",
    "descendantsize",
    "ancestorcount",
    "ancestorsize",
    "wtxid",
    "fees",
    "depends",
    "spentby",
    "unbroadcast",
}  # fmt: skip  (no "bip125-replaceable": v31 dropped it, full RBF needs no signal)


def new_output(csv_blocks: int = 3) -> TaprootOutput:
    return TaprootOutput(next(_secrets), csv_blocks)


def test_chain_queries_after_101_blocks(node: RpcNode) -> None:
    info = node("getblockchaininfo")
    assert info["chain"] == "regtest"
    assert info["blocks"] == 101 == node("getblockcount")
    assert info["bestblockhash"] == node("getbestblockhash") == node("getblockhash", 101)
    assert {"headers", "difficulty", "mediantime", "chainwork", "initialblockdownload"} <= set(info)
    # The wallet's first coinbase is the only mature one (bitcoind's wallet rule).
    assert node("getbalance") == Decimal("50.00000000")

    tip = node("getblock", info["bestblockhash"])
    assert HEADER_FIELDS | {"size", "strippedsize", "weight", "tx", "previousblockhash"} <= set(tip)
    assert tip["height"] == 101
    assert tip["confirmations"] == 1
    assert "nextblockhash" not in tip
    header = node("getblockheader", node("getblockhash", 100))
    assert set(header) >= HEADER_FIELDS
    assert header["nextblockhash"] == tip["hash"]
    assert header["confirmations"] == 2

    detailed = node("getblock", tip["hash"], 2)
    coinbase = detailed["tx"][0]
    assert TX_FIELDS | {"hex"} <= set(coinbase)
    assert "coinbase" in coinbase["vin"][0]
    assert coinbase["vout"][0]["value"] == Decimal("50.00000000")
    assert coinbase["vout"][0]["scriptPubKey"]["type"] == "witness_v0_keyhash"
    raw = node("getblock", tip["hash"], 0)
    assert node("getblockheader", tip["hash"], False) == raw[:160]

    assert node.error("getblockhash", 102) == {"code": -8, "message": "Block height out of range"}
    assert node.error("getblock", "00" * 32) == {"code": -5, "message": "Block not found"}
    assert node.error("nosuchmethod")["code"] == -32601


def test_fund_a_taproot_address_and_spend_it(node: RpcNode) -> None:
    output = new_output()
    txid = node("sendtoaddress", output.address, Decimal("0.5"))
    assert txid in node("getrawmempool")
    assert txid in node("getrawmempool", True)
    entry = node("getmempoolentry", txid)
    assert set(entry) >= MEMPOOL_ENTRY_FIELDS
    assert entry["ancestorcount"] == 1
    assert entry["fees"]["base"] > 0
    unconfirmed = node("getrawtransaction", txid, True)
    assert "confirmations" not in unconfirmed
    assert "blockhash" not in unconfirmed
    vout = next(
        o["n"] for o in unconfirmed["vout"] if o["scriptPubKey"].get("address") == output.address
    )
    assert unconfirmed["vout"][vout]["scriptPubKey"]["type"] == "witness_v1_taproot"
    assert unconfirmed["vout"][vout]["scriptPubKey"]["hex"] == output.script_pubkey_hex
    assert node("gettxout", txid, vout)["confirmations"] == 0
    assert node("gettxout", txid, vout, False) is None

    [block_hash] = node.mine(1)
    assert txid not in node("getrawmempool")
    confirmed = node("getrawtransaction", txid, True)
    assert TX_FIELDS | {"hex", "blockhash", "confirmations", "time", "blocktime"} <= set(confirmed)
    assert confirmed["blockhash"] == block_hash
    assert confirmed["confirmations"] == 1
    coin = node("gettxout", txid, vout)
    assert coin["confirmations"] == 1
    assert coin["value"] == Decimal("0.50000000")
    assert coin["coinbase"] is False
    assert coin["bestblock"] == block_hash
    assert coin["scriptPubKey"]["address"] == output.address

    spend = output.spend(
        txid=txid,
        vout=vout,
        amount=50_000_000,
        destination_spk_hex=output.script_pubkey_hex,
        fee=FEE,
        leaf=1,
    )
    [verdict] = node("testmempoolaccept", [spend.to_hex()])
    assert verdict["allowed"] is True
    assert verdict["txid"] == spend.get_txid()
    assert verdict["fees"]["base"] == Decimal(FEE) / 100_000_000
    assert verdict["vsize"] == spend.get_vsize()
    assert node("getrawmempool") == []  # testmempoolaccept only tests

    assert node("sendrawtransaction", spend.to_hex()) == spend.get_txid()
    assert node("sendrawtransaction", spend.to_hex()) == spend.get_txid()  # already known: ok
    assert node("gettxout", txid, vout) is None  # spent in the mempool
    assert node("gettxout", txid, vout, False)["confirmations"] == 1  # not yet in the chain
    assert node("gettxout", spend.get_txid(), 0)["confirmations"] == 0
    decoded = node("decoderawtransaction", spend.to_hex())
    assert decoded["txid"] == spend.get_txid()
    assert len(decoded["vin"][0]["txinwitness"]) == 3

    node.mine(1)
    assert node("gettxout", txid, vout, False) is None
    assert node("gettxout", spend.get_txid(), 0)["confirmations"] == 1
    detailed = node("getrawtransaction", spend.get_txid(), 2)
    assert detailed["fee"] == Decimal(FEE) / 100_000_000
    prevout = detailed["vin"][0]["prevout"]
    assert (prevout["value"], prevout["generated"]) == (Decimal("0.50000000"), False)
    assert prevout["scriptPubKey"]["address"] == output.address
    assert node.error("sendrawtransaction", spend.to_hex())["code"] == -27
    node.mine(1)
    assert node("gettxout", spend.get_txid(), 0)["confirmations"] == 2


def test_bad_signature_is_rejected_with_the_reason(node: RpcNode) -> None:
    output = new_output()
    txid, vout, sats = node.fund(output.address, Decimal("0.2"))
    forged = output.spend(
        txid=txid,
        vout=vout,
        amount=sats,
        destination_spk_hex=output.script_pubkey_hex,
        fee=FEE,
        leaf=1,
        corrupt_signature=True,
    )
    [verdict] = node("testmempoolaccept", [forged.to_hex()])
    assert verdict["allowed"] is False
    assert BAD_SIGNATURE.match(verdict["reject-reason"]), verdict
    error = node.error("sendrawtransaction", forged.to_hex())
    assert error["code"] == -26
    assert BAD_SIGNATURE.match(error["message"]), error
    assert node("getrawmempool") == []
    assert node("gettxout", txid, vout)["confirmations"] == 1


def test_csv_spend_is_rejected_too_early_and_accepted_once_mature(node: RpcNode) -> None:
    output = new_output(csv_blocks=3)
    txid, vout, sats = node.fund(output.address, Decimal("0.3"))  # 1 confirmation
    spend = output.spend(
        txid=txid,
        vout=vout,
        amount=sats,
        destination_spk_hex=output.script_pubkey_hex,
        fee=FEE,
        leaf=0,
    )
    for _ in range(2):  # in the next block, 1 then 2 blocks after the funding: too early
        [verdict] = node("testmempoolaccept", [spend.to_hex()])
        assert (verdict["allowed"], verdict["reject-reason"]) == (False, "non-BIP68-final")
        assert node.error("sendrawtransaction", spend.to_hex()) == {
            "code": -26,
            "message": "non-BIP68-final",
        }
        node.mine(1)
    assert node("sendrawtransaction", spend.to_hex()) == spend.get_txid()
    [block_hash] = node.mine(1)
    assert node("getrawtransaction", spend.get_txid(), True)["blockhash"] == block_hash


def test_reorg_by_invalidateblock_returns_the_transaction_to_the_mempool(node: RpcNode) -> None:
    output = new_output()
    txid, vout, sats = node.fund(output.address, Decimal("0.4"))
    spend = output.spend(
        txid=txid,
        vout=vout,
        amount=sats,
        destination_spk_hex=output.script_pubkey_hex,
        fee=FEE,
        leaf=1,
    )
    spend_txid = node("sendrawtransaction", spend.to_hex())
    [first_block, second_block] = node.mine(2)
    assert node("getrawtransaction", spend_txid, True)["confirmations"] == 2
    height = node("getblockcount")

    node("invalidateblock", first_block)
    assert node("getblockcount") == height - 2
    assert node("getbestblockhash") != first_block
    assert node("getblockheader", first_block)["confirmations"] == -1
    assert node("getblockheader", second_block)["confirmations"] == -1
    assert spend_txid in node("getrawmempool")
    back = node("getrawtransaction", spend_txid, True)
    assert "blockhash" not in back
    assert "confirmations" not in back
    assert node("gettxout", spend_txid, 0)["confirmations"] == 0
    assert node("gettxout", txid, vout) is None
    assert node("gettxout", txid, vout, False)["confirmations"] == 1

    [new_block] = node.mine(1)
    assert new_block not in (first_block, second_block)
    again = node("getrawtransaction", spend_txid, True)
    assert again["blockhash"] == new_block
    assert again["confirmations"] == 1
    node.mine(2)
    assert node("getrawtransaction", spend_txid, True)["confirmations"] == 3
    assert node("gettxout", spend_txid, 0)["confirmations"] == 3


def test_errors_the_backend_relies_on(node: RpcNode) -> None:
    unknown = "ab" * 32
    assert node.error("getrawtransaction", unknown) == {
        "code": -5,
        "message": "No such mempool or blockchain transaction. "
        "Use gettransaction for wallet transactions.",
    }
    assert node.error("getmempoolentry", unknown) == {
        "code": -5,
        "message": "Transaction not in mempool",
    }
    assert node("gettxout", unknown, 0) is None
    assert node.error("sendrawtransaction", "00")["code"] == -22
    assert node.error("getblock", "xyz")["code"] == -8
    assert node.error("generatetoaddress", 1, "not-an-address") == {
        "code": -5,
        "message": "Error: Invalid address",
    }
    output = new_output()
    spend = output.spend(
        txid=unknown,
        vout=0,
        amount=100_000,
        destination_spk_hex=output.script_pubkey_hex,
        fee=FEE,
        leaf=1,
    )
    assert node.error("sendrawtransaction", spend.to_hex()) == {
        "code": -25,
        "message": "bad-txns-inputs-missingorspent",
    }
    [verdict] = node("testmempoolaccept", [spend.to_hex()])
    assert verdict["reject-reason"] == "missing-inputs"
    fee = node("estimatesmartfee", 6)
    # a young bitcoind has no estimate: "errors" and no "feerate" at all
    assert fee["feerate"] > 0 if "feerate" in fee else fee["errors"]


def test_immature_coinbase_spend_is_rejected(node: RpcNode) -> None:
    output = new_output()
    [block_hash] = node("generatetoaddress", 1, output.address)
    coinbase = node("getblock", block_hash, 2)["tx"][0]
    sats = int(coinbase["vout"][0]["value"] * 100_000_000)
    spend = output.spend(
        txid=coinbase["txid"],
        vout=0,
        amount=sats,
        destination_spk_hex=output.script_pubkey_hex,
        fee=FEE,
        leaf=1,
    )
    [verdict] = node("testmempoolaccept", [spend.to_hex()])
    assert verdict["reject-reason"] == "bad-txns-premature-spend-of-coinbase"
    assert node.error("sendrawtransaction", spend.to_hex()) == {
        "code": -26,
        "message": "bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth 1",
    }
