"""Fixtures for the bitcoin app: a client on the session's node, a funded faucet, loan terms
built with vaultero, and a TCP relay that can be cut to emulate the node going down."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

import vaultero
from bitcoin import rpc as rpc_module
from bitcoin import signer as signer_module
from bitcoin.rpc import BitcoinRPC, sats_to_btc
from bitcoin.services import chain_scan
from btcloan.dev import localnodes

# A throwaway test key for the lender (never a real one).
LENDER_SECRET = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
NETWORK = "regtest"


@pytest.fixture(autouse=True)
def lender_key(settings: Any) -> Iterator[str]:
    settings.LENDER_BTC_PRIVATE_KEY = LENDER_SECRET
    settings.LENDER_BTC_KEY_FILE = ""
    signer_module.set_signer(None)
    yield vaultero.xonly_public_key(LENDER_SECRET)
    signer_module.set_signer(None)


@pytest.fixture(scope="session")
def faucet(bitcoin_node: Any) -> str:
    """A wallet address with mature coinbases (localnodes loads a wallet on bitcoind)."""
    address = str(bitcoin_node.rpc("getnewaddress"))
    bitcoin_node.rpc("generatetoaddress", 150, address)
    return address


@dataclass
class Chain:
    """The test's view of the node: mine, fund, scan."""

    node: Any
    rpc: BitcoinRPC
    faucet: str

    def call(self, method: str, *params: Any) -> Any:
        return self.node.rpc(method, *params)

    def mine(self, blocks: int = 1) -> list[str]:
        return list(self.call("generatetoaddress", blocks, self.faucet))

    def fund(self, address: str, sats: int) -> tuple[str, int]:
        """Pay `sats` to `address` from the faucet (as a borrower's wallet would): (txid, vout)."""
        txid = str(self.call("sendtoaddress", address, str(sats_to_btc(sats))))
        decoded = self.call("getrawtransaction", txid, True)
        for out in decoded["vout"]:
            if out["scriptPubKey"].get("address") == address:
                return txid, int(out["n"])
        raise AssertionError(f"{txid} does not pay {address}")

    def scan(self) -> Any:
        return chain_scan(rpc=self.rpc)

    def in_mempool(self, txid: str) -> bool:
        return txid in self.call("getrawmempool")


@pytest.fixture
def chain(
    bitcoin_node: Any, faucet: str, db: None, settings: Any, redis_client: Any
) -> Iterator[Chain]:
    """A client on the session node, injected as the app's client; the scanner starts at the
    current tip, so each test sees only its own blocks."""
    settings.BITCOIN_RPC_URL = bitcoin_node.url
    settings.BITCOIN_START_HEIGHT = -1
    settings.BITCOIN_CONFIRMATIONS = 3
    client = BitcoinRPC(bitcoin_node.url, timeout=60)
    rpc_module.set_client(client)
    chain_scan(rpc=client)  # the cursor starts at the current tip
    yield Chain(bitcoin_node, client, faucet)
    rpc_module.set_client(None)


@dataclass
class LoanTerms:
    """One loan's Bitcoin side, as `loans` would derive it."""

    ref: str
    borrower_secret: str
    borrower_key: str
    lender_key: str
    p_b: bytes
    p_l: bytes
    escrow: vaultero.TaprootOutput
    collateral: vaultero.TaprootOutput

    @property
    def escrow_address(self) -> str:
        return self.escrow.address(NETWORK)

    @property
    def collateral_address(self) -> str:
        return self.collateral.address(NETWORK)


def new_loan(lender_key: str, *, t0_btc: int = 50, t1_btc: int = 5) -> LoanTerms:
    borrower_secret = secrets.token_hex(32)
    borrower_key = vaultero.xonly_public_key(borrower_secret)
    p_b, p_l = secrets.token_bytes(32), secrets.token_bytes(32)
    common = {"borrower_key": borrower_key, "lender_key": lender_key}
    return LoanTerms(
        ref=f"loan-{secrets.token_hex(4)}",
        borrower_secret=borrower_secret,
        borrower_key=borrower_key,
        lender_key=lender_key,
        p_b=p_b,
        p_l=p_l,
        escrow=vaultero.escrow_output(
            preimage_hash=hashlib.sha256(p_b).hexdigest(), csv_blocks=t0_btc, **common
        ),
        collateral=vaultero.collateral_output(
            preimage_hash=hashlib.sha256(p_l).hexdigest(), csv_blocks=t1_btc, **common
        ),
    )


def btc(sats: int) -> Decimal:
    return sats_to_btc(sats)


class TcpRelay:
    """127.0.0.1:port → the node, which the test can cut and restore (the node 'goes down')."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = localnodes.free_port()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            with contextlib.suppress(OSError):  # wakes the accept() blocked in its thread
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def relay(bitcoin_node: Any) -> Iterator[TcpRelay]:
    port = int(bitcoin_node.url.rsplit(":", 1)[1])
    relay = TcpRelay(port)
    relay.up()
    yield relay
    relay.down()


def relay_url(node_url: str, port: int) -> str:
    return node_url.rsplit(":", 1)[0] + f":{port}"
