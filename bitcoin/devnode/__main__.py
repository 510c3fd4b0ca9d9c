"""python -m bitcoin.devnode --rpcport N --rpcuser U --rpcpassword P [--datadir D]"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
from decimal import Decimal
from pathlib import Path
from types import FrameType

from bitcoin.devnode.node import Node
from bitcoin.devnode.policy import Policy
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
    parser.add_argument(
        "--no-fee-estimate",
        action="store_true",
        help='estimatesmartfee answers "Insufficient data" (a young node) until devsetfeeestimate',
    )
    parser.add_argument("--minrelaytxfee", type=Decimal, default=Decimal("0.00001"), help="BTC/kvB")
    parser.add_argument(
        "--mempoolminfee",
        type=Decimal,
        default=Decimal(0),
        help="BTC/kvB: the floor of a full mempool (also devsetmempoolminfee)",
    )
    parser.add_argument(
        "--rpcservertimeout",
        type=float,
        default=30.0,
        help="seconds an idle keep-alive connection is kept open (bitcoind: 30)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log = logging.getLogger("bitcoin.devnode")
    datadir = args.datadir or Path(tempfile.mkdtemp(prefix="btcloan-devnode-"))
    policy = Policy(
        min_relay_feerate=_sats(args.minrelaytxfee),
        incremental_relay_feerate=_sats(args.minrelaytxfee),
        mempool_min_fee=_sats(args.mempoolminfee),
        fee_estimate=None if args.no_fee_estimate else round(Decimal(str(args.feerate)) * 1000),
    )
    node = Node(datadir.resolve(), policy=policy)
    methods = Methods(node, feerate_sat_vb=args.feerate)
    server = RpcServer(
        (args.rpcbind, args.rpcport),
        methods,
        args.rpcuser,
        args.rpcpassword,
        idle_timeout=args.rpcservertimeout,
    )
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


def _sats(btc: Decimal) -> int:
    return int(btc * 100_000_000)


if __name__ == "__main__":
    sys.exit(main())
