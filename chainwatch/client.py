"""The one web3 client of the EVM chain: built lazily, cached, replaceable in tests, and
checked against the configured chain id when it is built."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import requests
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from web3 import HTTPProvider, Web3
from web3.types import RPCEndpoint


class NodeUnavailable(Exception):
    """The EVM node did not answer (down, timing out, refusing): retry later."""


class RPCError(Exception):
    """The node answered a JSON-RPC call with an error object."""

    def __init__(self, method: str, error: Any) -> None:
        self.method = method
        self.error = error
        message = error.get("message", error) if isinstance(error, dict) else error
        super().__init__(f"{method}: {message}")


class ChainIdMismatch(ImproperlyConfigured):
    """The node serves another chain than EVM_CHAIN_ID: never index or sign against it."""

    def __init__(self, *, served: int, expected: int) -> None:
        self.served = served
        self.expected = expected
        super().__init__(f"EVM node serves chain id {served}, EVM_CHAIN_ID is {expected}")


# Network failures of the node, as web3 and requests raise them.
NODE_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)

_lock = threading.Lock()
_cache: dict[tuple[str, int, float], Web3] = {}
_override: Web3 | None = None


def get_web3(*, timeout: float | None = None) -> Web3:
    """The client for settings.EVM_RPC_URL; the first build checks the chain id. `timeout`
    (default EVM_RPC_TIMEOUT) gives a client with a shorter leash, e.g. for health probes."""
    if _override is not None:
        return _override
    timeout = float(settings.EVM_RPC_TIMEOUT if timeout is None else timeout)
    key = (settings.EVM_RPC_URL, int(settings.EVM_CHAIN_ID), timeout)
    with _lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    w3 = Web3(web3_provider(settings.EVM_RPC_URL, timeout=timeout))
    check_chain_id(w3, expected=key[1])
    with _lock:
        return _cache.setdefault(key, w3)


# Asked once per client: web3 otherwise asks eth_chainId before every contract call (twice per
# `getLoan`), a round trip each on a remote node. A node cannot change its chain id under a URL
# without the check at build time (and the sender's own) noticing a mismatch.
CACHED_FOREVER = {RPCEndpoint("eth_chainId"), RPCEndpoint("net_version")}


def web3_provider(url: str, *, timeout: float) -> HTTPProvider:
    return HTTPProvider(
        url,
        request_kwargs={"timeout": timeout},
        cache_allowed_requests=True,
        cacheable_requests=CACHED_FOREVER,
        # Nothing block-dependent is cached, so no block threshold (whose probe is one more
        # eth_chainId).
        request_cache_validation_threshold=None,
    )


def check_chain_id(w3: Web3, *, expected: int) -> None:
    try:
        served = int(w3.eth.chain_id)
    except NODE_ERRORS as exc:
        raise NodeUnavailable(f"EVM node unreachable: {type(exc).__name__}") from exc
    if served != expected:
        raise ChainIdMismatch(served=served, expected=expected)


def use_web3(w3: Web3 | None) -> None:
    """Tests: inject a client (or None to go back to the settings-built one)."""
    global _override
    _override = w3


def reset_web3() -> None:
    with _lock:
        _cache.clear()


def rpc_batch(w3: Web3, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
    """Many JSON-RPC calls in one HTTP request (no middleware). Each item is the call's result
    or an `RPCError` (returned, not raised: one bad call must not sink the others)."""
    if not calls:
        return []
    requests_ = [(RPCEndpoint(method), params) for method, params in calls]
    try:
        responses = w3.provider.make_batch_request(requests_)  # type: ignore[attr-defined]
    except NODE_ERRORS as exc:
        raise NodeUnavailable(f"batch: {type(exc).__name__}") from exc
    if not isinstance(responses, list):  # the node refused the batch as a whole
        raise RPCError("batch", responses.get("error", responses))
    if len(responses) != len(calls):
        raise RPCError("batch", f"{len(responses)} answers to {len(calls)} calls")
    return [
        RPCError(method, answer["error"]) if "error" in answer else answer.get("result")
        for (method, _), answer in zip(calls, responses, strict=True)
    ]


def rpc(w3: Web3, method: str, params: list[Any]) -> Any:
    """A raw JSON-RPC call: no formatting middleware (fast), for node extras too."""
    try:
        response = w3.provider.make_request(method, params)  # type: ignore[arg-type]
    except NODE_ERRORS as exc:
        raise NodeUnavailable(f"{method}: {type(exc).__name__}") from exc
    if "error" in response:
        raise RPCError(method, response["error"])
    return response.get("result")
