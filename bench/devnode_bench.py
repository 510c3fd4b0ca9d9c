"""Devnode throughput: blocks/s mined and transactions/s accepted, over JSON-RPC.

Baselines measured in the same run: the bare kernel's `process_block` rate for the same kind of
blocks (in-process, no RPC, no bookkeeping), and the RPC round-trip floor (getblockcount/s over
python-bitcoinrpc's keep-alive connection, the backend's client).

    .venv/bin/python bench/devnode_bench.py [--blocks 500] [--txs 500]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bitcoinrpc.authproxy import AuthServiceProxy  # noqa: E402

from bitcoin.devnode.codec import Tx, TxIn, TxOut  # noqa: E402
from bitcoin.devnode.node import Node  # noqa: E402
from bitcoin.devnode.wallet import key_from_secret, sign_p2wpkh  # noqa: E402
from btcloan.dev import localnodes  # noqa: E402


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def kernel_baseline(blocks: int, workdir: Path) -> float:
    """Blocks/s of the kernel alone: pre-built blocks, straight into process_block."""
    node = Node(workdir / "baseline")
    script = key_from_secret(7).script_pubkey
    raws = []
    for _ in range(blocks):  # build on a throwaway chain, then replay into a fresh kernel
        node.mine(script)
        raws.append(node.tip.block.raw)
    node.close()
    from bitcoin.devnode.kernel import Kernel

    kernel = Kernel(workdir / "baseline-kernel")
    start = time.perf_counter()
    for raw in raws:
        kernel.process(raw)
    elapsed = time.perf_counter() - start
    kernel.close()
    return rate(blocks, elapsed)


def bench_line(name: str, value: float, unit: str) -> None:
    """A machine-readable figure for bench/run_all.py, beside the human output."""
    print("BENCH " + json.dumps({"name": name, "value": round(value, 3), "unit": unit}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=500)
    parser.add_argument("--txs", type=int, default=500)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="devnode-bench-"))
    process = localnodes.start_devnode(datadir=workdir / "node")
    rpc = localnodes.json_rpc
    url = process.url
    try:
        rounds = 300
        start = time.perf_counter()
        for _ in range(rounds):
            rpc(url, "getblockcount", timeout=30)
        rpc_floor = rate(rounds, time.perf_counter() - start)
        proxy = AuthServiceProxy(url, timeout=60)  # the backend's client, keep-alive
        start = time.perf_counter()
        for _ in range(rounds):
            proxy.getblockcount()
        keepalive = rate(rounds, time.perf_counter() - start)

        key = key_from_secret(1234)
        address = key.address
        start = time.perf_counter()
        rpc(url, "generatetoaddress", [args.blocks, address], timeout=300)
        batch_rate = rate(args.blocks, time.perf_counter() - start)

        single = 100
        start = time.perf_counter()
        for _ in range(single):
            proxy.generatetoaddress(1, address)
        single_rate = rate(single, time.perf_counter() - start)

        # Spendable coinbases of `key`: heights 1 .. (tip - 100).
        tip = rpc(url, "getblockcount")
        spendable = min(args.txs, tip - 100)
        txs = []
        for height in range(1, spendable + 1):
            block = rpc(url, "getblock", [rpc(url, "getblockhash", [height]), 2], timeout=30)
            coinbase = block["tx"][0]
            value = round(coinbase["vout"][0]["value"] * 100_000_000)
            unsigned = Tx(
                2,
                (TxIn(bytes.fromhex(coinbase["txid"])[::-1], 0, b"", 0xFFFFFFFD),),
                (TxOut(value - 2_000, key.script_pubkey),),
                0,
            )
            txs.append(sign_p2wpkh(unsigned, [(key, value)]).serialize().hex())
        start = time.perf_counter()
        for raw in txs:
            proxy.sendrawtransaction(raw)
        accept_rate = rate(len(txs), time.perf_counter() - start)
        start = time.perf_counter()
        rpc(url, "generatetoaddress", [1, address], timeout=300)
        full_block = time.perf_counter() - start
        assert rpc(url, "getrawmempool") == [], "the mempool should have been mined"
    finally:
        process.stop()

    baseline = kernel_baseline(args.blocks, workdir)
    print("devnode benchmark (regtest, libbitcoinkernel consensus)")
    print(
        f"  RPC round trips (getblockcount)        {rpc_floor:10.0f} /s  (urllib, new connection)"
    )
    print(f"  RPC round trips, python-bitcoinrpc     {keepalive:10.0f} /s  (keep-alive: floor)")
    print(f"  kernel process_block alone (baseline)  {baseline:10.0f} blocks/s")
    print(
        f"  generatetoaddress {args.blocks} in one call          {batch_rate:10.0f} blocks/s"
        f"  ({batch_rate / baseline:.2f} x kernel alone)"
    )
    print(
        f"  generatetoaddress 1 per call             {single_rate:10.0f} blocks/s"
        f"  ({single_rate / keepalive:.2f} x RPC floor)"
    )
    print(
        f"  sendrawtransaction ({len(txs)} P2WPKH spends)   {accept_rate:10.0f} tx/s"
        f"  ({accept_rate / keepalive:.2f} x RPC floor)"
    )
    print(f"  mining the block of {len(txs)} transactions     {full_block * 1000:10.1f} ms")
    bench_line("devnode: RPC round trips, keep-alive (floor)", keepalive, "/s")
    bench_line("devnode: kernel process_block alone (baseline)", baseline, "blocks/s")
    bench_line(f"devnode: generatetoaddress {args.blocks} in one call", batch_rate, "blocks/s")
    bench_line("devnode: generatetoaddress 1 per call", single_rate, "blocks/s")
    bench_line("devnode: sendrawtransaction (P2WPKH spends)", accept_rate, "tx/s")
    bench_line(f"devnode: mining a block of {len(txs)} transactions", full_block * 1000, "ms")


if __name__ == "__main__":
    main()
