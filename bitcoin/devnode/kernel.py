"""One libbitcoinkernel chainstate (through py-bitcoinkernel), its events and its log.

Each `Kernel` owns a fresh directory. The devnode never reopens one: on start and on
`invalidateblock` it replays its own block log into a new `Kernel`.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import pbk

REGTEST_GENESIS_HASH = bytes.fromhex(
    "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
)[::-1]

_CONNECT_FAILED = re.compile(r"ConnectBlock [0-9a-f]{64} failed, (.*)$")
_ACCEPT_FAILED = re.compile(r"AcceptBlock FAILED \((.*)\)$")


@dataclass(frozen=True)
class ChainEvent:
    connected: bool  # False: disconnected
    block_hash: bytes
    height: int
    raw: bytes | None  # the block, when the kernel is the only one to know it (genesis)


class _LogSink:
    """The kernel's log is process-wide: one connection, read by whoever holds the node lock."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        pbk.logging_set_options(pbk.LoggingOptions(log_timestamps=False))
        self.connection = pbk.LoggingConnection(self._on_line)

    def _on_line(self, line: str) -> None:
        with self.lock:
            self.lines.append(line.rstrip("\n"))
            if "[error]" in line:
                self.errors.append(line.rstrip("\n"))
                del self.errors[:-200]

    def drain(self) -> list[str]:
        with self.lock:
            lines, self.lines = self.lines, []
        return lines


_SINK: _LogSink | None = None


def log_sink() -> _LogSink:
    global _SINK
    if _SINK is None:
        _SINK = _LogSink()
    return _SINK


def failure_reason(lines: list[str]) -> str | None:
    """The validation state (`reason, debug`) the kernel logged for a rejected block."""
    for line in lines:
        for pattern in (_CONNECT_FAILED, _ACCEPT_FAILED):
            match = pattern.search(line)
            if match:
                return match.group(1).strip()
    return None


class Kernel:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        self.sink = log_sink()
        self.events: list[ChainEvent] = []
        self._callbacks = pbk.ValidationInterfaceCallbacks(
            block_connected=self._on_connected,
            block_disconnected=self._on_disconnected,
        )
        self._context = pbk.make_context(pbk.ChainType.REGTEST, self._callbacks)
        options = pbk.ChainstateManagerOptions(
            self._context, str(directory), str(directory / "blocks")
        )
        # Scripts are checked inline, so the first failing input decides the reject reason.
        options.set_worker_threads_num(0)
        options.update_block_tree_db_in_memory(True)
        options.update_chainstate_db_in_memory(True)
        self.chainman: pbk.ChainstateManager | None = pbk.ChainstateManager(options)
        self.sink.drain()

    def _on_connected(self, _user: object, block: pbk.Block, entry: pbk.BlockTreeEntry) -> None:
        height = entry.height
        block_hash = bytes(block.block_hash)
        raw = bytes(block) if height == 0 else None
        self.events.append(ChainEvent(True, block_hash, height, raw))

    def _on_disconnected(self, _user: object, block: pbk.Block, entry: pbk.BlockTreeEntry) -> None:
        self.events.append(ChainEvent(False, bytes(block.block_hash), entry.height, None))

    def process(self, raw: bytes) -> tuple[list[ChainEvent], str | None]:
        """Submit a block: the chain events it caused, and the kernel's reject state if any."""
        assert self.chainman is not None
        self.sink.drain()
        try:
            block = pbk.Block(raw)
        except RuntimeError:
            return [], "block decode failed"
        with contextlib.suppress(pbk.ProcessBlockException):  # the reason is in the log
            self.chainman.process_block(block)
        events, self.events = self.events, []
        return events, failure_reason(self.sink.drain())

    def take_events(self) -> list[ChainEvent]:
        events, self.events = self.events, []
        return events

    def close(self) -> None:
        self.chainman = None  # destroys the chainstate manager (its __del__)
        shutil.rmtree(self.directory, ignore_errors=True)
