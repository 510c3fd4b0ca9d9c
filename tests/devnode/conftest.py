"""The conformance suite's nodes: the devnode always, `bitcoind -regtest` when one is installed.

Each node is a fresh process with its own datadir and a wallet (bitcoind's is created by
`localnodes.start_bitcoind`), driven through python-bitcoinrpc, the client the backend uses.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException

from btcloan.dev import localnodes


class RpcNode:
    def __init__(self, kind: str, process: localnodes.ManagedProcess) -> None:
        self.kind = kind
        self.process = process
        self.url = process.url
        self._proxy = AuthServiceProxy(process.url, timeout=120)

    def __call__(self, method: str, *params: Any) -> Any:
        try:
            return self._proxy.__getattr__(method)(*params)
        except (BrokenPipeError, ConnectionError, http.client.HTTPException):
            # the node closed the idle keep-alive connection (-rpcservertimeout): reconnect
            self._proxy = AuthServiceProxy(self.url, timeout=120)
            return self._proxy.__getattr__(method)(*params)

    def error(self, method: str, *params: Any) -> dict[str, Any]:
        """The JSON-RPC error a call must fail with."""
        with pytest.raises(JSONRPCException) as failure:
            self(method, *params)
        return dict(failure.value.error)

    def mine(self, count: int = 1) -> list[str]:
        return list(self("generatetoaddress", count, self("getnewaddress")))

    def fund(self, address: str, btc: Decimal) -> tuple[str, int, int]:
        """Pay `address` from the wallet and confirm it: (txid, vout, sats)."""
        txid = self("sendtoaddress", address, btc)
        self.mine(1)
        tx = self("getrawtransaction", txid, True)
        for out in tx["vout"]:
            if out["scriptPubKey"].get("address") == address:
                return txid, out["n"], int(out["value"] * 100_000_000)
        raise AssertionError(f"{txid} does not pay {address}")


def start_node(kind: str, datadir: Path) -> localnodes.ManagedProcess:
    if kind == "bitcoind":
        binary = localnodes.find_bitcoind()
        if binary is None:
            pytest.skip("bitcoind is not installed (PATH or $BITCOIND): devnode-only run")
        return localnodes.start_bitcoind(binary, datadir=datadir)
    return localnodes.start_devnode(datadir=datadir)


@pytest.fixture(scope="module", params=["devnode", "bitcoind"])
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RpcNode]:
    """A fresh regtest node with a funded wallet: 101 blocks mined to it."""
    process = start_node(request.param, tmp_path_factory.mktemp(request.param))
    try:
        rpc = RpcNode(request.param, process)  # with a wallet (localnodes creates one)
        rpc.mine(101)
        yield rpc
    finally:
        process.stop()
