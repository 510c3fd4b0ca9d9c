"""The faucet wallet: P2WPKH keys derived from a seed kept in the datadir, BIP-143 signing."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import coincurve

from bitcoin.devnode.codec import Tx, TxIn, TxOut, dsha256
from bitcoin.devnode.script import segwit_address

SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def hash160(data: bytes) -> bytes:
    sha = hashlib.sha256(data).digest()
    try:
        return hashlib.new("ripemd160", sha).digest()
    except ValueError:  # OpenSSL 3 builds without legacy digests
        from bitcoinutils.ripemd160 import ripemd160

        return bytes(ripemd160(sha))


@dataclass(frozen=True)
class WalletKey:
    private: coincurve.PrivateKey
    pubkey: bytes  # compressed

    @property
    def script_pubkey(self) -> bytes:
        return b"\x00\x14" + hash160(self.pubkey)

    @property
    def address(self) -> str:
        return segwit_address(0, hash160(self.pubkey))


def key_from_secret(secret: int) -> WalletKey:
    private = coincurve.PrivateKey(secret.to_bytes(32, "big"))
    return WalletKey(private, private.public_key.format(compressed=True))


class Keystore:
    """Keys k_i = H(seed, i); the seed and the number handed out persist in wallet.json."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.seed = os.urandom(32)
        self.count = 0
        if path is not None and path.exists():
            saved = json.loads(path.read_text())
            self.seed = bytes.fromhex(saved["seed"])
            self.count = int(saved["count"])
        self.by_script: dict[bytes, WalletKey] = {}
        for index in range(self.count):
            self._derive(index)

    def _derive(self, index: int) -> WalletKey:
        digest = hashlib.sha256(self.seed + struct.pack("<I", index)).digest()
        key = key_from_secret(int.from_bytes(digest, "big") % (SECP256K1_ORDER - 1) + 1)
        self.by_script[key.script_pubkey] = key
        return key

    def new_key(self) -> WalletKey:
        key = self._derive(self.count)
        self.count += 1
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"seed": self.seed.hex(), "count": self.count}))
            tmp.replace(self.path)
        return key


def sign_p2wpkh(tx: Tx, spent: list[tuple[WalletKey, int]], *, sighash_type: int = 1) -> Tx:
    """Sign every input of `tx` (each spends a P2WPKH output of `spent[i]` = (key, amount))."""
    hash_prevouts = dsha256(
        b"".join(txin.prev_txid + struct.pack("<I", txin.prev_vout) for txin in tx.vin)
    )
    hash_sequence = dsha256(b"".join(struct.pack("<I", txin.sequence) for txin in tx.vin))
    hash_outputs = dsha256(
        b"".join(
            struct.pack("<q", out.value) + bytes([len(out.script_pubkey)]) + out.script_pubkey
            for out in tx.vout
        )
    )
    signed: list[TxIn] = []
    for txin, (key, amount) in zip(tx.vin, spent, strict=True):
        script_code = b"\x19\x76\xa9\x14" + hash160(key.pubkey) + b"\x88\xac"
        preimage = (
            struct.pack("<i", tx.version)
            + hash_prevouts
            + hash_sequence
            + txin.prev_txid
            + struct.pack("<I", txin.prev_vout)
            + script_code
            + struct.pack("<q", amount)
            + struct.pack("<I", txin.sequence)
            + hash_outputs
            + struct.pack("<II", tx.locktime, sighash_type)
        )
        signature = key.private.sign(dsha256(preimage), hasher=None)
        signed.append(
            TxIn(
                txin.prev_txid,
                txin.prev_vout,
                b"",
                txin.sequence,
                (signature + bytes([sighash_type]), key.pubkey),
            )
        )
    return Tx(tx.version, tuple(signed), tx.vout, tx.locktime)


def p2wpkh_input_vsize() -> int:
    """An upper bound of one P2WPKH input's vsize (72-byte signature)."""
    return 68


__all__ = ["Keystore", "TxOut", "WalletKey", "key_from_secret", "sign_p2wpkh"]
