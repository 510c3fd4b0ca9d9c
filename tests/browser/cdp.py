"""A small Chrome DevTools Protocol client: headless Chromium driven like a person would (open a
page, type into its form, submit, read what it renders), over the browser's own WebSocket."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Every host name but the loopback address fails to resolve: the page gets no network.
OFFLINE = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


class Browser:
    """One headless Chromium with one page; `evaluate` runs JavaScript in it."""

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--host-resolver-rules={OFFLINE}",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--window-size=1280,900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port = self._port(profile / "DevToolsActivePort")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            pages = [t for t in json.load(answer) if t["type"] == "page"]
        self._connection = connect(pages[0]["webSocketDebuggerUrl"], max_size=2**24)
        self.ws: ClientConnection = self._connection.__enter__()
        self._ids = itertools.count(1)
        self.failed_requests: list[str] = []
        self.requests: dict[str, str] = {}
        self.blocked_by_csp: set[str] = set()
        self.call("Page.enable")
        self.call("Network.enable")

    def _port(self, path: Path) -> int:
        deadline = time.monotonic() + 60
        while not (path.exists() and path.read_text().strip()):
            assert self.process.poll() is None, "chromium exited"
            assert time.monotonic() < deadline, "chromium opened no DevTools port"
            time.sleep(0.2)
        return int(path.read_text().split()[0])

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            self._note(message)
            if message.get("id") == ident:
                assert "error" not in message, message["error"]
                return dict(message.get("result", {}))

    def _note(self, message: dict[str, Any]) -> None:
        """Requests the page made; those its Content-Security-Policy refused never left."""
        params = message.get("params", {})
        if message.get("method") == "Network.requestWillBeSent":
            self.requests[params["requestId"]] = params["request"]["url"]
        elif message.get("method") == "Network.loadingFailed":
            if params.get("blockedReason") == "csp":
                self.blocked_by_csp.add(self.requests.get(params["requestId"], "?"))
            else:
                self.failed_requests.append(str(params.get("errorText")))

    def sent_to(self, origin: str) -> list[str]:
        """URLs requested outside `origin` that were not stopped by the page's policy."""
        return [
            url
            for url in self.requests.values()
            if not url.startswith((origin, "data:", "blob:")) and url not in self.blocked_by_csp
        ]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    def wait_for(self, condition: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"Boolean({condition})"):
            assert time.monotonic() < deadline, f"never true: {condition}"
            time.sleep(0.2)

    def close(self) -> None:
        self._connection.__exit__(None, None, None)
        self.process.terminate()
        self.process.wait(timeout=30)
