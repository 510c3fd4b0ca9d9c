"""The Bitcoin node's JSON-RPC, over python-bitcoinrpc.

One connection per thread, batch calls, a timeout on every call, and typed errors:
a keep-alive connection the node closed while idle (bitcoind drops them after
-rpcservertimeout, 30 s) is reopened and the call sent once more before the node is called
unavailable.
`NodeUnavailable` (retry later) is kept apart from `RPCError` (the node answered no), and a
refused transaction is a `TransactionRejected` carrying the node's reject reason. Amounts leave
this module as integer satoshis; nothing past it sees a `Decimal` BTC amount.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException
from django.conf import settings

logger = logging.getLogger(__name__)

SATS_PER_BTC = 100_000_000

# Bitcoin Core's RPC error codes (src/rpc/protocol.h) that we act on.
RPC_MISC_ERROR = -1
RPC_INVALID_ADDRESS_OR_KEY = -5  # "No such mempool or blockchain transaction"
RPC_DESERIALIZATION_ERROR = -22
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_CHAIN = -27
RPC_IN_WARMUP = -28
RPC_METHOD_NOT_FOUND = -32601

# The node's chain name (getblockchaininfo.chain) for each BITCOIN_NETWORK.
CHAIN_NAMES = {
    "mainnet": ("main",),
    "testnet": ("test", "testnet4"),
    "signet": ("signet",),
    "regtest": ("regtest",),
}

# Reject reasons that say "not yet", not "never": the same bytes may be accepted later.
# Lifted only by a new block: a relative or absolute timelock, coinbase maturity.
UNTIL_A_BLOCK_REJECT_REASONS = (
    "non-BIP68-final",
    "bad-txns-nonfinal",
    "non-final",
    "bad-txns-premature-spend-of-coinbase",
)
TEMPORARY_REJECT_REASONS = (
    *UNTIL_A_BLOCK_REJECT_REASONS,
    # an unconfirmed conflict may still leave the mempool; once it confirms the inputs are
    # gone and the rejection becomes final (missing inputs with known parents)
    "txn-mempool-conflict",
)
# Reject reasons about the fee: the same bytes will not do better by waiting; the fix is a
# package (CPFP through submitpackage) or a replacement paying more.
FEE_REJECT_REASONS = (
    "mempool min fee not met",
    "min relay fee not met",
    "insufficient fee",  # "insufficient fee, rejecting replacement <txid>; ..." (BIP-125 3/4)
    "too-large-cluster",  # v31 cluster mempool: the replacement or package would join a cluster
    "too-long-mempool-chain",
    "mempool full",
)
# A stale keep-alive: the node closed the idle connection before our request reached it.
DROPPED_CONNECTION = (
    BrokenPipeError,
    ConnectionResetError,  # includes http.client.RemoteDisconnected
    ConnectionAbortedError,
    http.client.CannotSendRequest,
    http.client.BadStatusLine,
)
# Reject reasons meaning the node already has this very transaction.
ALREADY_KNOWN_REASONS = ("txn-already-in-mempool", "txn-already-known", "already in block chain")


class BitcoinRPCError(Exception):
    """Any failure talking to the Bitcoin node."""


class NodeUnavailable(BitcoinRPCError):
    """The node could not be reached or is not ready (connection, timeout, warm-up): retry."""


class WrongNetwork(BitcoinRPCError):
    """The node is on another chain than BITCOIN_NETWORK."""


class RPCError(BitcoinRPCError):
    """The node answered with an error."""

    def __init__(self, method: str, code: int | None, message: str) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message


class NotFound(RPCError):
    """No such transaction, block or output."""


class TransactionRejected(RPCError):
    """The node refused a transaction; `reason` is its reject reason."""

    @property
    def reason(self) -> str:
        return self.message

    @property
    def temporary(self) -> bool:
        """True when the same transaction may be accepted later as it is (timelock, maturity,
        a conflict that may leave the mempool)."""
        return any(marker in self.message for marker in TEMPORARY_REJECT_REASONS)

    @property
    def fee_too_low(self) -> bool:
        """True when the node wants more fee: below its mempool floor or min relay feerate,
        or too little to replace what it holds. Waiting does not help; a package does."""
        return any(marker in self.message for marker in FEE_REJECT_REASONS)

    @property
    def already_known(self) -> bool:
        return self.code == RPC_VERIFY_ALREADY_IN_CHAIN or any(
            marker in self.message for marker in ALREADY_KNOWN_REASONS
        )


def btc_to_sats(amount: Decimal | int | str) -> int:
    """A BTC amount as the node prints it (parsed as Decimal) in integer satoshis."""
    if isinstance(amount, float):
        raise TypeError("BTC amounts must be Decimal, never float")
    sats = Decimal(amount) * SATS_PER_BTC
    if sats != sats.to_integral_value():
        raise ValueError(f"{amount} BTC is not a whole number of satoshis")
    return int(sats)


def sats_to_btc(sats: int) -> Decimal:
    return (Decimal(sats) / SATS_PER_BTC).quantize(Decimal("0.00000001"))


def _map_error(method: str, error: dict[str, Any]) -> RPCError:
    code = error.get("code")
    message = str(error.get("message", ""))
    if code == RPC_IN_WARMUP:
        raise NodeUnavailable(f"{method}: node warming up: {message}")
    if method in ("sendrawtransaction", "testmempoolaccept", "submitpackage") and code in (
        RPC_VERIFY_ERROR,
        RPC_VERIFY_REJECTED,
        RPC_VERIFY_ALREADY_IN_CHAIN,
        RPC_DESERIALIZATION_ERROR,
    ):
        return TransactionRejected(method, code, message)
    if code == RPC_INVALID_ADDRESS_OR_KEY:
        return NotFound(method, code, message)
    return RPCError(method, code, message)


class _BatchingProxy(AuthServiceProxy):
    """AuthServiceProxy whose batch returns each call's result or error instead of raising
    on the first error (one unknown txid must not sink a batch of a thousand)."""

    def batch_items(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[dict[str, Any]]:
        payload = [
            {"jsonrpc": "2.0", "method": method, "params": list(params), "id": index}
            for index, (method, params) in enumerate(calls)
        ]
        conn = self._AuthServiceProxy__conn
        url = self._AuthServiceProxy__url
        conn.request(
            "POST",
            url.path or "/",
            json.dumps(payload),
            {
                "Host": url.hostname,
                "User-Agent": "btcloan",
                "Authorization": self._AuthServiceProxy__auth_header,
                "Content-type": "application/json",
            },
        )
        responses = self._get_response()
        if not isinstance(responses, list):  # the node refused the whole batch
            raise JSONRPCException(responses.get("error") or {"code": None, "message": "batch"})
        by_id = {response.get("id"): response for response in responses}
        return [
            by_id.get(index, {"error": {"code": None, "message": "no answer"}})
            for index in range(len(calls))
        ]


@dataclass(frozen=True)
class BlockchainInfo:
    chain: str
    blocks: int
    best_block_hash: str
    initial_block_download: bool


class BitcoinRPC:
    """A bitcoind JSON-RPC client; thread-safe (one HTTP connection per thread)."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        # python-bitcoinrpc cannot build a proxy for a URL without credentials; the node
        # refuses an empty login with 401 like any wrong one.
        parts = urlsplit(url)
        if parts.username is None:
            url = parts._replace(netloc=f":@{parts.netloc}").geturl()
        self._url = url
        self.timeout = timeout
        self._local = threading.local()

    def __repr__(self) -> str:  # the URL carries credentials
        return f"<BitcoinRPC timeout={self.timeout}>"

    # --- transport --------------------------------------------------------------------------
    def _proxy(self) -> _BatchingProxy:
        proxy = getattr(self._local, "proxy", None)
        if proxy is None:
            proxy = _BatchingProxy(self._url, timeout=self.timeout)
            self._local.proxy = proxy
        return proxy

    def _drop_connection(self) -> None:
        proxy = getattr(self._local, "proxy", None)
        if proxy is not None:
            with contextlib.suppress(Exception):  # a broken connection: nothing to save
                proxy._AuthServiceProxy__conn.close()
        self._local.proxy = None

    def _send(self, method: str, request: Any) -> Any:
        """`request(proxy)` on this thread's connection; once more on a fresh connection when
        the kept-alive one turns out closed (safe: every call we make is a read or idempotent,
        and a stale connection never delivered the first request)."""
        try:
            return request(self._proxy())
        except DROPPED_CONNECTION as exc:
            logger.info("bitcoin rpc: %s: connection dropped (%s), reconnecting", method, exc)
            self._drop_connection()
        return request(self._proxy())

    def call(self, method: str, *params: Any) -> Any:
        """One call; raises NodeUnavailable, NotFound, TransactionRejected or RPCError."""
        try:
            return self._send(method, lambda proxy: getattr(proxy, method)(*params))
        except JSONRPCException as exc:
            if exc.code in (-342, -343):  # no/garbled HTTP answer: treat as transport
                self._drop_connection()
                raise NodeUnavailable(f"{method}: {exc.message}") from None
            raise _map_error(method, exc.error) from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # ValueError: a truncated JSON body from a dying node.
            self._drop_connection()
            raise NodeUnavailable(f"{method}: {type(exc).__name__}: {exc}") from None

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Many calls in one HTTP request. Each item is the result or an RPCError instance
        (not raised); NodeUnavailable is raised for the whole batch."""
        if not calls:
            return []
        try:
            responses = self._send("batch", lambda proxy: proxy.batch_items(calls))
        except JSONRPCException as exc:
            self._drop_connection()
            raise NodeUnavailable(f"batch: {exc.message}") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self._drop_connection()
            raise NodeUnavailable(f"batch: {type(exc).__name__}: {exc}") from None
        results: list[Any] = []
        for (method, _params), response in zip(calls, responses, strict=True):
            error = response.get("error")
            results.append(_map_error(method, error) if error else response.get("result"))
        return results

    # --- typed helpers ----------------------------------------------------------------------
    def blockchain_info(self) -> BlockchainInfo:
        info = self.call("getblockchaininfo")
        return BlockchainInfo(
            chain=info["chain"],
            blocks=int(info["blocks"]),
            best_block_hash=info["bestblockhash"],
            initial_block_download=bool(info.get("initialblockdownload", False)),
        )

    def check_network(self, network: str) -> BlockchainInfo:
        """Start-up check: the node's chain must be BITCOIN_NETWORK."""
        info = self.blockchain_info()
        if info.chain not in CHAIN_NAMES.get(network, ()):
            raise WrongNetwork(
                f"the Bitcoin node is on {info.chain!r}, but BITCOIN_NETWORK is {network!r}"
            )
        return info

    def block_count(self) -> int:
        return int(self.call("getblockcount"))

    def block_hash(self, height: int) -> str:
        return str(self.call("getblockhash", height))

    def block(self, block_hash: str) -> dict[str, Any]:
        """A block with its transactions decoded (verbosity 2, each with its `hex`)."""
        return dict(self.call("getblock", block_hash, 2))

    def raw_mempool(self) -> list[str]:
        return list(self.call("getrawmempool"))

    def raw_transaction(self, txid: str) -> dict[str, Any]:
        """A decoded transaction (with `blockhash`/`confirmations` once mined); NotFound."""
        return dict(self.call("getrawtransaction", txid, True))

    def tx_out(self, txid: str, vout: int, *, include_mempool: bool = True) -> TxOut | None:
        """The unspent output, or None when spent (or never existed)."""
        return TxOut.from_rpc(self.call("gettxout", txid, vout, include_mempool))

    def tx_outs(
        self, outpoints: Sequence[tuple[str, int]], *, per_request: int = 500
    ) -> list[TxOut | None]:
        """`tx_out` (mempool included) of many outpoints, `per_request` per HTTP request."""
        found: list[TxOut | None] = []
        for start in range(0, len(outpoints), per_request):
            chunk = outpoints[start : start + per_request]
            answers = self.batch([("gettxout", (txid, vout, True)) for txid, vout in chunk])
            for answer in answers:
                if isinstance(answer, RPCError):
                    raise answer
                found.append(TxOut.from_rpc(answer))
        return found

    def send_raw_transaction(self, raw_hex: str) -> str:
        return str(self.call("sendrawtransaction", raw_hex))

    def test_mempool_accept(self, raw_hex: str) -> tuple[bool, str]:
        """(allowed, reject reason)."""
        [answer] = self.call("testmempoolaccept", [raw_hex])
        return bool(answer.get("allowed")), str(answer.get("reject-reason", ""))

    def mempool_entry(self, txid: str) -> dict[str, Any]:
        return dict(self.call("getmempoolentry", txid))

    def submit_package(self, raw_hexes: Sequence[str]) -> dict[str, Any]:
        """submitpackage (Core v28+): a child with its unconfirmed parents, judged together
        when a parent alone pays too little (below the floor, or as a replacement)."""
        return dict(self.call("submitpackage", list(raw_hexes)))

    def spending_txid(self, txid: str, vout: int) -> str | None:
        """The mempool transaction spending this output (gettxspendingprevout), if any."""
        [answer] = self.call("gettxspendingprevout", [{"txid": txid, "vout": vout}])
        spender = answer.get("spendingtxid")
        return str(spender) if spender else None

    def mempool_min_feerate_sat_vb(self) -> Decimal:
        """getmempoolinfo.mempoolminfee (the floor of a full mempool) in sat/vB."""
        return Decimal(self.call("getmempoolinfo")["mempoolminfee"]) * SATS_PER_BTC / 1000

    def estimate_feerate_sat_vb(self, target_blocks: int) -> Decimal | None:
        """estimatesmartfee in sat/vB, or None when the node has no estimate."""
        answer = self.call("estimatesmartfee", target_blocks)
        rate = answer.get("feerate")
        if rate is None:
            return None
        return Decimal(rate) * SATS_PER_BTC / 1000


@dataclass(frozen=True)
class TxOut:
    value_sats: int
    confirmations: int
    script_pubkey_hex: str
    best_block: str

    @classmethod
    def from_rpc(cls, answer: dict[str, Any] | None) -> TxOut | None:
        if answer is None:
            return None
        return cls(
            value_sats=btc_to_sats(answer["value"]),
            confirmations=int(answer.get("confirmations", 0)),
            script_pubkey_hex=answer["scriptPubKey"]["hex"],
            best_block=answer.get("bestblock", ""),
        )


# --- the injected client -------------------------------------------------------------------
_override: BitcoinRPC | None = None


@cache
def _client_for(url: str, timeout: float, network: str) -> BitcoinRPC:
    client = BitcoinRPC(url, timeout=timeout)
    client.check_network(network)
    logger.info("bitcoin rpc: connected, network %s", network)
    return client


def get_client(*, timeout: float | None = None) -> BitcoinRPC:
    """The process's Bitcoin RPC client, built lazily; the network is checked on first use.
    `timeout` (default BITCOIN_RPC_TIMEOUT) gives a client with a shorter leash, e.g. for
    health probes."""
    if _override is not None:
        return _override
    timeout = float(settings.BITCOIN_RPC_TIMEOUT if timeout is None else timeout)
    return _client_for(settings.BITCOIN_RPC_URL, timeout, settings.BITCOIN_NETWORK)


def set_client(client: BitcoinRPC | None) -> None:
    """Replace the client (tests, a different node); None goes back to settings."""
    global _override
    _override = client
    _client_for.cache_clear()
