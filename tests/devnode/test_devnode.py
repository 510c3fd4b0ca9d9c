"""What only the devnode has to prove: its HTTP protocol, restarts, mempool upkeep, encodings."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from bitcoinutils.keys import PrivateKey

from bitcoin.devnode.codec import Tx, parse_tx
from bitcoin.devnode.script import (
    address_to_script,
    classify,
    descriptor_checksum,
    script_pubkey_json,
    to_asm,
)
from btcloan.dev import localnodes
from tests.devnode.conftest import RpcNode
from tests.devnode.taproot import TaprootOutput


@pytest.fixture(scope="module")
def devnode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RpcNode]:
    process = localnodes.start_devnode(datadir=tmp_path_factory.mktemp("devnode"))
    try:
        rpc = RpcNode("devnode", process)
        rpc.mine(101)
        yield rpc
    finally:
        process.stop()


def post(url: str, body: Any, *, auth: str | None = None) -> tuple[int, str]:
    parts = urlsplit(url)
    if auth is None:
        auth = f"{parts.username}:{parts.password}"
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(auth.encode()).decode(),
    }
    request = urllib.request.Request(
        f"http://{parts.hostname}:{parts.port}/", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - http
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_http_json_rpc_like_bitcoind(devnode: RpcNode) -> None:
    call = {"method": "getblockcount", "params": [], "id": 7}
    assert post(devnode.url, call, auth="btcloan:wrong")[0] == 401

    status, text = post(devnode.url, call)
    assert (status, json.loads(text)) == (200, {"result": 101, "error": None, "id": 7})

    status, text = post(devnode.url, {"method": "getblockhash", "params": [999], "id": 1})
    assert status == 500
    assert json.loads(text)["error"] == {"code": -8, "message": "Block height out of range"}
    assert post(devnode.url, {"method": "nope", "params": [], "id": 1})[0] == 404

    v2 = {"jsonrpc": "2.0", "method": "getblockhash", "params": [999], "id": 2}
    status, text = post(devnode.url, v2)
    assert status == 200
    assert json.loads(text) == {
        "jsonrpc": "2.0",
        "error": {"code": -8, "message": "Block height out of range"},
        "id": 2,
    }

    batch = [
        {"method": "getblockhash", "params": {"height": 0}, "id": "a"},
        {"method": "getblockhash", "params": [-1], "id": "b"},
    ]
    status, text = post(devnode.url, batch)
    replies = json.loads(text)
    assert status == 200
    assert replies[0]["result"] == (
        "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
    )
    assert (replies[1]["id"], replies[1]["error"]["code"]) == ("b", -8)

    # Amounts are JSON numbers printed with 8 decimals, as bitcoind prints them.
    coinbase = devnode("getblock", devnode("getblockhash", 1), 2)["tx"][0]["txid"]
    _, text = post(devnode.url, {"method": "gettxout", "params": [coinbase, 0], "id": 3})
    assert '"value": 50.00000000' in text


def test_unconfirmed_chains_and_conflicts_mined_by_generateblock(devnode: RpcNode) -> None:
    output = TaprootOutput(424242, 5)
    parent = devnode("sendtoaddress", output.address, Decimal("1"))
    vout = next(
        o["n"]
        for o in devnode("getrawtransaction", parent, True)["vout"]
        if o["scriptPubKey"]["hex"] == output.script_pubkey_hex
    )
    spend = {
        "txid": parent,
        "vout": vout,
        "amount": 100_000_000,
        "destination_spk_hex": output.script_pubkey_hex,
        "leaf": 1,
    }
    child = output.spend(**spend, fee=1_000)
    assert devnode("sendrawtransaction", child.to_hex()) == child.get_txid()
    entry = devnode("getmempoolentry", child.get_txid())
    assert (entry["ancestorcount"], entry["depends"]) == (2, [parent])
    assert devnode("getmempoolentry", parent)["spentby"] == [child.get_txid()]

    rival = output.spend(**spend, fee=2_000)
    assert devnode("sendrawtransaction", rival.to_hex()) == rival.get_txid()  # full RBF
    assert devnode("getrawmempool") == [parent, rival.get_txid()]

    mined = devnode("generateblock", devnode("getnewaddress"), [parent, rival.to_hex()])
    assert devnode("getbestblockhash") == mined["hash"]
    assert devnode("getrawmempool") == []  # the child conflicted with the block: dropped
    assert devnode("gettxout", rival.get_txid(), 0)["confirmations"] == 1
    assert devnode("gettxout", child.get_txid(), 0) is None

    error = devnode.error("generateblock", devnode("getnewaddress"), [child.to_hex()])
    assert error["code"] == -25
    assert error["message"].startswith("TestBlockValidity failed: bad-txns-inputs-missingorspent")


def test_context_free_failures_and_concurrent_clients(devnode: RpcNode) -> None:
    output = TaprootOutput(777, 5)
    txid, vout, sats = devnode.fund(output.address, Decimal("0.1"))
    spend = output.spend(
        txid=txid,
        vout=vout,
        amount=sats,
        destination_spk_hex=output.script_pubkey_hex,
        fee=500,
        leaf=1,
    )
    tx = parse_tx(bytes.fromhex(spend.to_hex()))
    doubled = Tx(tx.version, (tx.vin[0], tx.vin[0]), tx.vout, tx.locktime)
    error = devnode.error("sendrawtransaction", doubled.serialize().hex())
    assert error == {"code": -26, "message": "bad-txns-inputs-duplicate"}

    failures: list[BaseException] = []

    def poll() -> None:
        client = RpcNode("devnode", devnode.process)
        try:
            for _ in range(15):
                tip = client("getbestblockhash")
                client("getblock", tip, 2)
                client("getrawmempool", True)
        except BaseException as exc:  # reported below
            failures.append(exc)

    pollers = [threading.Thread(target=poll) for _ in range(3)]
    for thread in pollers:
        thread.start()
    height = devnode("getblockcount")
    for _ in range(10):
        devnode("sendtoaddress", devnode("getnewaddress"), Decimal("0.01"))
        devnode.mine(1)
    for thread in pollers:
        thread.join()
    assert failures == []
    assert devnode("getblockcount") == height + 10


def test_reconsiderblock_restores_the_branch(devnode: RpcNode) -> None:
    tip_before = devnode("getbestblockhash")
    first, second = devnode.mine(2)
    devnode("invalidateblock", first)
    assert devnode("getbestblockhash") == tip_before
    devnode("reconsiderblock", first)
    assert devnode("getbestblockhash") == second


def test_restart_with_the_same_datadir_resumes(tmp_path: Path) -> None:
    node = localnodes.start_devnode(datadir=tmp_path)
    rpc = RpcNode("devnode", node)
    try:
        rpc.mine(101)
        txid = rpc("sendtoaddress", rpc("getnewaddress"), Decimal("2"))
        rpc.mine(1)
        [abandoned] = rpc.mine(1)
        rpc("invalidateblock", abandoned)
        tip, balance = rpc("getbestblockhash"), rpc("getbalance")
    finally:
        node.stop()
    node = localnodes.start_devnode(datadir=tmp_path)
    rpc = RpcNode("devnode", node)
    try:
        assert rpc("getblockcount") == 102
        assert rpc("getbestblockhash") == tip
        assert rpc("getrawtransaction", txid, True)["confirmations"] == 1
        assert rpc("getbalance") == balance
        assert rpc("getblockheader", abandoned)["confirmations"] == -1
        [replacement] = rpc.mine(1)
        assert replacement != abandoned
    finally:
        node.stop()


def test_bitcoin_node_fixture_uses_the_devnode_without_bitcoind(bitcoin_node: Any) -> None:
    if localnodes.find_bitcoind() is None:
        assert bitcoin_node.kind == "devnode"
    assert bitcoin_node.rpc("getblockchaininfo")["chain"] == "regtest"


def test_scripts_print_like_bitcoind() -> None:
    assert descriptor_checksum("raw(deadbeef)") == "89f8spxm"  # BIP-380's example
    output = TaprootOutput(99, 144)
    spk = bytes.fromhex(output.script_pubkey_hex)
    assert classify(spk) == ("witness_v1_taproot", output.address)
    assert address_to_script(output.address) == spk
    legacy = PrivateKey(secret_exponent=5).get_public_key().get_address()
    assert address_to_script(legacy.to_string()).hex() == legacy.to_script_pub_key().to_hex()
    assert classify(address_to_script(legacy.to_string()))[1] == legacy.to_string()
    assert to_asm(bytes.fromhex(output.leaves[0].to_hex())).startswith(
        "144 OP_CHECKSEQUENCEVERIFY OP_DROP"
    )
    assert script_pubkey_json(b"\x6a\x01\x01")["type"] == "nulldata"
    with pytest.raises(ValueError, match="checksum"):
        address_to_script(output.address[:-1] + ("q" if output.address[-1] != "q" else "p"))

    spend = output.spend(
        txid="11" * 32, vout=1, amount=5000, destination_spk_hex="51", fee=100, leaf=0
    )
    tx = parse_tx(bytes.fromhex(spend.to_hex()))
    assert tx.serialize().hex() == spend.to_hex()
    assert tx.txid[::-1].hex() == spend.get_txid()
    assert tx.vsize == spend.get_vsize()
    assert tx.vin[0].sequence == 144


def test_a_raised_mempool_floor_refuses_a_parent_a_package_carries(devnode: RpcNode) -> None:
    output = TaprootOutput(8080, 5)
    txid, vout, sats = devnode.fund(output.address, Decimal("0.01"))
    parent = output.spend(
        txid=txid,
        vout=vout,
        amount=sats,
        destination_spk_hex=output.script_pubkey_hex,
        fee=2 * 140,
        leaf=1,
    )
    child = output.spend(
        txid=parent.get_txid(),
        vout=0,
        amount=sats - 2 * 140,
        destination_spk_hex=output.script_pubkey_hex,
        fee=30 * 2 * parent.get_vsize(),
        leaf=1,
    )
    devnode("devsetmempoolminfee", Decimal("0.0001"))  # 10 sat/vB, a full mempool's floor
    try:
        assert devnode("getmempoolinfo")["mempoolminfee"] == Decimal("0.00010000")
        assert devnode("estimatesmartfee", 3)["feerate"] == Decimal("0.00020000")
        floor = -(-10_000 * parent.get_vsize() // 1000)
        assert devnode.error("sendrawtransaction", parent.to_hex()) == {
            "code": -26,
            "message": f"mempool min fee not met, {2 * 140} < {floor}",
        }
        assert devnode.error("sendrawtransaction", child.to_hex()) == {
            "code": -25,
            "message": "bad-txns-inputs-missingorspent",
        }
        weak = output.spend(
            txid=parent.get_txid(),
            vout=0,
            amount=sats - 2 * 140,
            destination_spk_hex=output.script_pubkey_hex,
            fee=parent.get_vsize(),  # the package stays under the floor
            leaf=1,
        )
        refused = devnode("submitpackage", [parent.to_hex(), weak.to_hex()])
        assert refused["package_msg"] == "transaction failed"
        error = refused["tx-results"][weak.get_wtxid()]["error"]
        assert error.startswith("mempool min fee not met"), error
        assert devnode("getrawmempool") == []

        answer = devnode("submitpackage", [parent.to_hex(), child.to_hex()])
        assert answer["package_msg"] == "success", answer
        rate = answer["tx-results"][parent.get_wtxid()]["fees"]["effective-feerate"]
        assert rate >= Decimal("0.0001")
        assert set(devnode("getrawmempool")) == {parent.get_txid(), child.get_txid()}
    finally:
        devnode("devsetmempoolminfee", 0)
    devnode.mine(1)
    assert devnode("getrawmempool") == []


def test_estimatesmartfee_insufficient_data_mode(devnode: RpcNode) -> None:
    devnode("devsetfeeestimate", None)
    try:
        assert devnode("estimatesmartfee", 6) == {
            "errors": ["Insufficient data or no feerate found"],
            "blocks": 0,
        }
    finally:
        devnode("devsetfeeestimate", Decimal("0.0002"))
    assert devnode("estimatesmartfee", 6)["feerate"] == Decimal("0.00020000")


def test_idle_keep_alive_connections_are_closed(tmp_path: Path) -> None:
    """As bitcoind's -rpcservertimeout: the idle connection is closed by the node. A bare
    keep-alive client then fails; BitcoinRPC reconnects and loses no request."""
    from bitcoinrpc.authproxy import AuthServiceProxy

    from bitcoin.rpc import BitcoinRPC

    node = localnodes.start_devnode(datadir=tmp_path, extra_args=["--rpcservertimeout", "0.3"])
    try:
        bare = AuthServiceProxy(node.url, timeout=10)
        client = BitcoinRPC(node.url, timeout=10)
        assert bare.getblockcount() == client.block_count() == 0
        time.sleep(0.8)
        with pytest.raises((BrokenPipeError, ConnectionError, http.client.HTTPException)):
            bare.getblockcount()
        for _ in range(3):  # each time the kept-alive connection has gone stale
            assert client.block_count() == 0
            assert client.batch([("getblockcount", [])]) == [0]
            time.sleep(0.5)
    finally:
        node.stop()
