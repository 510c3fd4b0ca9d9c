"""Mempool policy, the same assertions on the devnode and (when installed) bitcoind: min relay
fee, dust, full-RBF replacement rules, submitpackage and package RBF (the exit race).

bitcoind is started with -minrelaytxfee and -incrementalrelayfee pinned to 1 sat/vB (defaults
changed across versions), the values the devnode applies. The mempool floor of a full mempool
is devnode-only (`devsetmempoolminfee`): see test_devnode.py.
"""

from __future__ import annotations

from decimal import Decimal
from itertools import count

import pytest

from tests.devnode.conftest import RpcNode
from tests.devnode.taproot import TaprootOutput

pytestmark = pytest.mark.bitcoin_node

_secrets = count(5000, 11)


def funded(node: RpcNode, btc: str) -> tuple[TaprootOutput, dict[str, object], int]:
    output = TaprootOutput(next(_secrets), 3)
    txid, vout, sats = node.fund(output.address, Decimal(btc))
    spend = {
        "txid": txid,
        "vout": vout,
        "amount": sats,
        "destination_spk_hex": output.script_pubkey_hex,
        "leaf": 1,
    }
    return output, spend, sats


def test_min_relay_fee_and_dust(node: RpcNode) -> None:
    output, spend, sats = funded(node, "0.00002")
    free = output.spend(**spend, fee=0)  # type: ignore[arg-type]
    assert node.error("sendrawtransaction", free.to_hex()) == {
        "code": -26,
        "message": f"min relay fee not met, 0 < {free.get_vsize()}",
    }
    [verdict] = node("testmempoolaccept", [free.to_hex()])
    assert (verdict["allowed"], verdict["reject-reason"]) == (False, "min relay fee not met")

    dust = output.spend(**spend, fee=sats - 329)  # type: ignore[arg-type]
    assert node.error("sendrawtransaction", dust.to_hex()) == {"code": -26, "message": "dust"}
    at_threshold = output.spend(**spend, fee=sats - 330)  # type: ignore[arg-type]
    assert node("sendrawtransaction", at_threshold.to_hex()) == at_threshold.get_txid()
    node.mine(1)


def test_full_rbf_needs_a_higher_feerate_and_fee_paying_its_relay(node: RpcNode) -> None:
    output, spend, _sats = funded(node, "0.01")
    first = output.spend(**spend, fee=1_000)  # type: ignore[arg-type]
    node("sendrawtransaction", first.to_hex())
    vsize = first.get_vsize()

    lower = output.spend(**spend, fee=900)  # type: ignore[arg-type]
    error = node.error("sendrawtransaction", lower.to_hex())
    assert error["code"] == -26
    assert error["message"].startswith(
        f"insufficient fee, rejecting replacement {lower.get_txid()}"
    ), error
    # a higher feerate, but 1 sat short of paying its own relay at 1 sat/vB (rule 4)
    short = output.spend(**spend, fee=1_000 + vsize - 1)  # type: ignore[arg-type]
    error = node.error("sendrawtransaction", short.to_hex())
    assert error["message"].startswith(
        f"insufficient fee, rejecting replacement {short.get_txid()}, "
        "not enough additional fees to relay"
    ), error
    [verdict] = node("testmempoolaccept", [short.to_hex()])
    assert verdict["reject-reason"] == "insufficient fee"

    better = output.spend(**spend, fee=1_000 + vsize)  # type: ignore[arg-type]
    assert node("sendrawtransaction", better.to_hex()) == better.get_txid()
    assert node("getrawmempool") == [better.get_txid()]  # no signalling needed: full RBF
    node.mine(1)


def test_submitpackage_parent_and_child(node: RpcNode) -> None:
    output, spend, sats = funded(node, "0.01")
    parent = output.spend(**spend, fee=1_000)  # type: ignore[arg-type]
    child = output.spend(
        txid=parent.get_txid(),
        vout=0,
        amount=sats - 1_000,
        destination_spk_hex=output.script_pubkey_hex,
        fee=3_000,
        leaf=1,
    )
    topology = node.error("submitpackage", [child.to_hex(), parent.to_hex()])
    assert topology["message"].startswith("package topology disallowed")
    # alone, the child's parent is unknown
    assert node.error("sendrawtransaction", child.to_hex())["message"] == (
        "bad-txns-inputs-missingorspent"
    )

    answer = node("submitpackage", [parent.to_hex(), child.to_hex()])
    assert answer["package_msg"] == "success"
    assert answer["replaced-transactions"] == []
    results = answer["tx-results"]
    assert set(results) == {parent.get_wtxid(), child.get_wtxid()}
    assert results[parent.get_wtxid()]["txid"] == parent.get_txid()
    assert results[child.get_wtxid()]["fees"]["base"] == Decimal("0.00003000")
    assert results[child.get_wtxid()]["vsize"] == child.get_vsize()
    assert set(node("getrawmempool")) == {parent.get_txid(), child.get_txid()}
    node.mine(1)


def test_package_rbf_wins_back_a_replaced_parent(node: RpcNode) -> None:
    """The exit race: a rival at 2 sat/vB holds the input; our parent at the same feerate is
    refused as a replacement; the parent with a 20 sat/vB child replaces it as a package."""
    output, spend, sats = funded(node, "0.01")
    rival = output.spend(**spend, fee=2 * 140)  # type: ignore[arg-type]
    node("sendrawtransaction", rival.to_hex())
    parent_fee = 2 * 140 + 1
    parent = output.spend(**spend, fee=parent_fee)  # type: ignore[arg-type]
    error = node.error("sendrawtransaction", parent.to_hex())
    assert error["message"].startswith("insufficient fee, rejecting replacement"), error

    child_vsize = parent.get_vsize()  # the same shape: one script-path input, one output
    child_fee = 20 * (parent.get_vsize() + child_vsize) - parent_fee
    child = output.spend(
        txid=parent.get_txid(),
        vout=0,
        amount=sats - parent_fee,
        destination_spk_hex=output.script_pubkey_hex,
        fee=child_fee,
        leaf=1,
    )
    answer = node("submitpackage", [parent.to_hex(), child.to_hex()])
    assert answer["package_msg"] == "success", answer
    assert answer["replaced-transactions"] == [rival.get_txid()]
    assert set(node("getrawmempool")) == {parent.get_txid(), child.get_txid()}
    included = answer["tx-results"][parent.get_wtxid()]["fees"]["effective-includes"]
    assert set(included) == {parent.get_wtxid(), child.get_wtxid()}
    node.mine(1)
    assert node("getrawtransaction", parent.get_txid(), True)["confirmations"] == 1


def test_estimatesmartfee_answers_a_feerate_or_errors(node: RpcNode) -> None:
    answer = node("estimatesmartfee", 3)
    # bitcoind with few blocks answers errors and no feerate; the devnode a set feerate
    assert ("feerate" in answer) != ("errors" in answer), answer
    info = node("getmempoolinfo")
    assert info["minrelaytxfee"] == Decimal("0.00001000")
    assert info["mempoolminfee"] >= info["minrelaytxfee"]
