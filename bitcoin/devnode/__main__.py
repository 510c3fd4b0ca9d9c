"""python -m bitcoin.devnode --rpcport N --rpcuser U --rpcpassword P [--datadir D]"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from bitcoin.devnode.node import Node
from bitcoin.devnode.rpc import Methods
from bitcoin.devnode.server import RpcServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bitcoin.devnode",
        description="A regtest node speaking bitcoind's JSON-RPC; consensus is libbitcoinkernel's.",
    )
    parser.add_argument("--rpcport", type=int, default=18443)
    parser.add_argument("--rpcbind", default="127.0.0.1")
    parser.add_argument("--rpcuser", required=True)
    parser.add_argument("--rpcpassword", required=True)
    parser.add_argument("--datadir", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument(
        "--feerate",
        type=float,
        default=20.0,
        help="sat/vB answered by estimatesmartfee and used by the faucet wallet",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log = logging.getLogger("bitcoin.devnode")
    datadir = args.datadir or Path(tempfile.mkdtemp(prefix="btcloan-devnode-"))
    node = Node(datadir.resolve(), feerate_sat_vb=args.feerate)
    methods = Methods(node, feerate_sat_vb=args.feerate)
    server = RpcServer((args.rpcbind, args.rpcport), methods, args.rpcuser, args.rpcpassword)
    log.info(
        "devnode ready: regtest height %d, datadir %s, RPC on %s:%d",
        node.height,
        datadir,
        args.rpcbind,
        args.rpcport,
    )

    def stop(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        with node.lock:
            node.close()
        log.info("devnode stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
