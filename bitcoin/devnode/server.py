"""HTTP JSON-RPC in bitcoind's manner: basic auth, batches, JSON-RPC 1.0 and 2.0 replies."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import traceback
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bitcoin.devnode.node import RpcError
from bitcoin.devnode.rpc import Methods, dumps

log = logging.getLogger("bitcoin.devnode")


def _reply(request: Any, methods: Methods) -> tuple[dict[str, Any], int]:
    """One request object -> (reply, HTTP status bitcoind would use for it alone)."""
    if not isinstance(request, dict):
        invalid = {"code": -32600, "message": "Invalid Request object"}
        return {"result": None, "error": invalid, "id": None}, 400
    request_id = request.get("id")
    version_2 = request.get("jsonrpc") == "2.0"
    method = request.get("method")
    error: dict[str, Any] | None = None
    result: Any = None
    try:
        if not isinstance(method, str):
            raise RpcError(-32600, "Method must be a string")
        result = methods.call(method, request.get("params"))
    except RpcError as exc:
        error = {"code": exc.code, "message": exc.message}
    except Exception as exc:  # a bug of ours: answer like bitcoind's internal errors
        log.error("%s failed:\n%s", method, traceback.format_exc())
        error = {"code": -1, "message": f"internal error: {exc}"}
    if version_2:
        reply: dict[str, Any] = {"jsonrpc": "2.0"}
        if error is None:
            reply["result"] = result
        else:
            reply["error"] = error
        reply["id"] = request_id
        return reply, 200
    status = 200
    if error is not None:
        status = {-32600: 400, -32601: 404}.get(error["code"], 500)
    return {"result": result, "error": error, "id": request_id}, status


class RpcServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        methods: Methods,
        user: str,
        password: str,
        *,
        idle_timeout: float | None = 30.0,
    ) -> None:
        self.methods = methods
        # bitcoind's -rpcservertimeout: a keep-alive connection idle this long is closed
        self.idle_timeout = idle_timeout
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.expected_auth = f"Basic {token}"
        # StreamRequestHandler applies its class's `timeout` to the connection
        handler = type("_Handler", (_Handler,), {"timeout": idle_timeout})
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server: RpcServer
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: without TCP_NODELAY a keep-alive client
    # (python-bitcoinrpc) waits ~40 ms per call for the delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="jsonrpc"')
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(405, b"JSONRPC server handles only POST requests", "text/html")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        supplied = self.headers.get("Authorization") or ""
        if not hmac.compare_digest(supplied.encode(), self.server.expected_auth.encode()):
            self._send(401, b"", "text/html")
            return
        try:
            request = json.loads(body, parse_float=Decimal)
        except ValueError:
            error = {"code": -32700, "message": "Parse error"}
            self._send(500, json.dumps({"result": None, "error": error, "id": None}).encode())
            return
        if isinstance(request, list):
            replies = [_reply(item, self.server.methods)[0] for item in request]
            self._send(200, dumps(replies).encode())
            return
        reply, status = _reply(request, self.server.methods)
        self._send(status, dumps(reply).encode())
