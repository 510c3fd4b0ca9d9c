"""vaultero throughput: escrow addresses/s, signatures/s, verifications/s, and our
(libsecp256k1) BIP-340 verification against bitcoin-utils' pure-Python Schnorr, same run.

Run: .venv/bin/python bench/vaultero_bench.py   (a few seconds)"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bitcoinutils import schnorr as pure_schnorr

from vaultero import (
    Outpoint,
    build_collateral_lock,
    collateral_output,
    escrow_output,
    origination_fee_sats,
    sign_input,
    verify_input,
    xonly_public_key,
)

BORROWER, LENDER = "1f" * 32, "2e" * 32


def rate(fn: Callable[[int], object], seconds: float) -> tuple[float, int]:
    """Calls per second of fn(i), run for about `seconds`."""
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            fn(n)
            n += 1
    return n / elapsed, n


def bench_line(name: str, value: float, unit: str) -> None:
    """A machine-readable figure for bench/run_all.py, beside the human output."""
    print("BENCH " + json.dumps({"name": name, "value": round(value, 3), "unit": unit}))


def main() -> None:
    b_key, l_key = xonly_public_key(BORROWER), xonly_public_key(LENDER)

    def address(i: int) -> str:
        h = hashlib.sha256(i.to_bytes(8, "little")).hexdigest()
        out = escrow_output(borrower_key=b_key, lender_key=l_key, preimage_hash=h, csv_blocks=100)
        return out.address("regtest")

    escrow = escrow_output(
        borrower_key=b_key, lender_key=l_key, preimage_hash="aa" * 32, csv_blocks=100
    )
    collateral = collateral_output(
        borrower_key=b_key, lender_key=l_key, preimage_hash="bb" * 32, csv_blocks=27150
    )
    tx = build_collateral_lock(
        escrow=escrow,
        outpoint=Outpoint("ab" * 32, 0),
        value=1_020_000,
        collateral=collateral,
        loan_sats=1_000_000,
        origination_fee_sats=origination_fee_sats(1_000_000),
        feerate_sat_vb=3,
        network="regtest",
    )
    signature = sign_input(tx, BORROWER)
    pub = bytes.fromhex(b_key)
    assert pure_schnorr.schnorr_verify(tx.sighash, pub, signature)

    addresses, _ = rate(address, 1.0)
    signatures, _ = rate(lambda _i: sign_input(tx, BORROWER), 1.0)
    ours, _ = rate(lambda _i: verify_input(tx, b_key, signature), 1.0)
    baseline, _ = rate(lambda _i: pure_schnorr.schnorr_verify(tx.sighash, pub, signature), 1.5)

    print(f"escrow addresses/s          {addresses:12,.0f}")
    print(f"signatures/s (sign_input)   {signatures:12,.0f}")
    print(f"verifications/s (ours)      {ours:12,.0f}")
    print(f"verifications/s (bitcoin-utils pure-Python schnorr) {baseline:10,.0f}")
    print(f"verification speed-up, ours / bitcoin-utils: {ours / baseline:,.0f}x")
    bench_line("vaultero: escrow addresses", addresses, "/s")
    bench_line("vaultero: BIP-340 signatures (sign_input)", signatures, "/s")
    bench_line("vaultero: verifications (libsecp256k1)", ours, "/s")
    bench_line("vaultero: verifications, baseline (bitcoin-utils pure Python)", baseline, "/s")


if __name__ == "__main__":
    main()
