"""vaultero's transaction codec and BIP-341 sighash: the BIP-341 wallet vectors (key path, all
hash types), bitcoin-utils' serializer and digest, and libbitcoinkernel's verdict on key-path
and script-path signatures over random transactions (data/README.md names the vectors' source)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import coincurve
import pbk
import pytest
from bitcoinutils.script import Script
from bitcoinutils.transactions import Transaction as BuTransaction
from bitcoinutils.transactions import TxInput, TxOutput
from hypothesis import given, settings
from hypothesis import strategies as st
from pbk.script import PrecomputedTransactionData

from vaultero import (
    Transaction,
    TransactionDecodeError,
    TxIn,
    TxOut,
    VaulteroError,
    decode_transaction,
    tagged_hash,
    taproot_sighash,
    taproot_sigmsg,
)
from vaultero.taproot import tweak_public_key

DATA = Path(__file__).parent / "data"
KEYPATH = json.loads((DATA / "bip341-wallet-vectors-keypath.json").read_text())["keyPathSpending"][
    0
]
UNSIGNED = decode_transaction(bytes.fromhex(KEYPATH["given"]["rawUnsignedTx"]))
PREVOUTS = tuple(
    TxOut(u["amountSats"], bytes.fromhex(u["scriptPubKey"])) for u in KEYPATH["given"]["utxosSpent"]
)
CASES = KEYPATH["inputSpending"]


@pytest.mark.parametrize("case", CASES, ids=[str(c["given"]["txinIndex"]) for c in CASES])
def test_bip341_keypath_sighash_vectors(case: dict[str, Any]) -> None:
    given, inter = case["given"], case["intermediary"]
    kwargs = {"hash_type": given["hashType"]}
    msg = taproot_sigmsg(UNSIGNED, given["txinIndex"], PREVOUTS, **kwargs)
    assert msg.hex() == inter["sigMsg"]
    digest = taproot_sighash(UNSIGNED, given["txinIndex"], PREVOUTS, **kwargs)
    assert digest.hex() == inter["sigHash"]


@pytest.mark.parametrize("case", CASES, ids=[str(c["given"]["txinIndex"]) for c in CASES])
def test_bip341_keypath_witness_vectors(case: dict[str, Any]) -> None:
    """The tweak and the signature (aux_rand all zeros) the vectors expect, from our sighash."""
    given, inter = case["given"], case["intermediary"]
    internal = bytes.fromhex(inter["internalPubkey"])
    root = bytes.fromhex(given["merkleRoot"]) if given["merkleRoot"] else b""
    assert tagged_hash("TapTweak", internal + root).hex() == inter["tweak"]
    output_key, _ = tweak_public_key(internal, root or None)
    assert PREVOUTS[given["txinIndex"]].script_pubkey == b"\x51\x20" + output_key
    digest = taproot_sighash(UNSIGNED, given["txinIndex"], PREVOUTS, hash_type=given["hashType"])
    key = coincurve.PrivateKey(bytes.fromhex(inter["tweakedPrivkey"]))
    signature = key.sign_schnorr(digest, bytes(32))
    suffix = bytes([given["hashType"]]) if given["hashType"] else b""
    assert [(signature + suffix).hex()] == case["expected"]["witness"]


def test_codec_round_trips_the_vectors_transactions() -> None:
    raw = bytes.fromhex(KEYPATH["given"]["rawUnsignedTx"])
    assert UNSIGNED.serialize() == raw
    assert (len(UNSIGNED.inputs), len(UNSIGNED.outputs)) == (9, 2)
    signed_raw = bytes.fromhex(KEYPATH["auxiliary"]["fullySignedTx"])
    signed = decode_transaction(signed_raw)
    assert signed.serialize() == signed_raw
    assert Transaction.from_hex(signed_raw.hex()) == signed
    assert signed.inputs[0].witness[0].hex() == CASES[0]["expected"]["witness"][0]
    assert signed.serialize(with_witness=False) != raw  # input 2 has a scriptSig there
    bare = [TxIn(i.prev_txid, i.prev_vout, b"", i.sequence) for i in signed.inputs]
    assert Transaction(signed.version, tuple(bare), signed.outputs, signed.locktime).txid == (
        UNSIGNED.txid
    )


@pytest.mark.parametrize(
    ("raw_hex", "reason"),
    [
        (KEYPATH["given"]["rawUnsignedTx"] + "00", "trailing bytes"),
        (KEYPATH["given"]["rawUnsignedTx"][:-2], "ends too early"),
        # 9 inputs written as a three-byte compact size: Bitcoin Core refuses it too.
        ("02000000fd0900" + KEYPATH["given"]["rawUnsignedTx"][10:], "non-canonical"),
        # The segwit marker with no witness at all.
        (
            "02000000"
            + "0001"
            + "01"
            + "11" * 32
            + "00000000"
            + "00ffffffff"
            + "00"
            + "00"
            + "00000000",
            "superfluous witness",
        ),
        ("02000000" + "00" + "00" + "00000000", "no inputs"),
    ],
    ids=["trailing", "truncated", "non-canonical", "superfluous-witness", "no-inputs"],
)
def test_decoding_is_strict(raw_hex: str, reason: str) -> None:
    with pytest.raises(TransactionDecodeError, match=reason):
        decode_transaction(bytes.fromhex(raw_hex))


def test_from_hex_refuses_non_hex() -> None:
    with pytest.raises(TransactionDecodeError, match="not hex"):
        Transaction.from_hex("zz")


def test_sighash_refuses_what_bip341_does_not_define() -> None:
    with pytest.raises(VaulteroError, match="not a BIP-341 hash type"):
        taproot_sighash(UNSIGNED, 0, PREVOUTS, hash_type=0x04)
    with pytest.raises(VaulteroError, match="one spent output"):
        taproot_sighash(UNSIGNED, 0, PREVOUTS[:-1])
    with pytest.raises(VaulteroError, match="SIGHASH_SINGLE"):
        taproot_sighash(UNSIGNED, 8, PREVOUTS, hash_type=0x03)


# --- random transactions: bitcoin-utils and libbitcoinkernel as independent judges --------
SECRET = bytes.fromhex("4b" * 32)
KEY = coincurve.PrivateKey(SECRET)
INTERNAL = KEY.public_key_xonly.format()
LEAF = b"\x20" + INTERNAL + b"\xac"  # <key> OP_CHECKSIG
LEAF_ROOT = tagged_hash("TapLeaf", b"\xc0" + bytes([len(LEAF)]) + LEAF)
SPK_KEY_PATH = b"\x51\x20" + tweak_public_key(INTERNAL, None)[0]
SCRIPT_OUTPUT_KEY, SCRIPT_PARITY = tweak_public_key(INTERNAL, LEAF_ROOT)
SPK_SCRIPT_PATH = b"\x51\x20" + SCRIPT_OUTPUT_KEY

# Never all zeros: that is a coinbase input, which bitcoin-utils serializes differently.
txids = st.binary(min_size=32, max_size=32).filter(any).map(lambda b: b.hex())
inputs = st.builds(
    TxIn,
    prev_txid=txids,
    prev_vout=st.integers(0, 5),
    sequence=st.sampled_from([0xFFFFFFFD, 0xFFFFFFFF, 10, 0]),
)
outputs = st.builds(
    TxOut,
    value=st.integers(0, 21_000_000 * 10**8),
    script_pubkey=st.sampled_from([SPK_KEY_PATH, bytes.fromhex("0014" + "ab" * 20), b"\x6a"]),
)
transactions = st.builds(
    Transaction,
    version=st.sampled_from([1, 2]),
    inputs=st.lists(inputs, min_size=1, max_size=4).map(tuple),
    outputs=st.lists(outputs, min_size=1, max_size=4).map(tuple),
    locktime=st.integers(0, 0xFFFFFFFF),
)
hash_types = st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x81, 0x82, 0x83])


def _bitcoin_utils(tx: Transaction) -> BuTransaction:
    ins = [
        TxInput(i.prev_txid, i.prev_vout, sequence=i.sequence.to_bytes(4, "little"))
        for i in tx.inputs
    ]
    outs = [TxOutput(o.value, Script.from_raw(o.script_pubkey.hex())) for o in tx.outputs]
    return BuTransaction(
        ins,
        outs,
        locktime=tx.locktime.to_bytes(4, "little"),
        version=tx.version.to_bytes(4, "little"),
        has_segwit=True,
    )


def _kernel_accepts(tx: Transaction, index: int, prevouts: tuple[TxOut, ...]) -> bool:
    kernel_tx = pbk.Transaction(tx.serialize())
    spent = [pbk.TransactionOutput(pbk.ScriptPubkey(p.script_pubkey), p.value) for p in prevouts]
    precomputed = PrecomputedTransactionData(kernel_tx, spent)
    script = pbk.ScriptPubkey(prevouts[index].script_pubkey)
    return bool(
        script.verify(
            prevouts[index].value, kernel_tx, precomputed, index, pbk.ScriptVerificationFlags.ALL
        )
    )


@settings(max_examples=40, deadline=None)
@given(tx=transactions, data=st.data())
def test_codec_and_sighash_agree_with_bitcoin_utils(tx: Transaction, data: st.DataObject) -> None:
    theirs = _bitcoin_utils(tx)
    assert tx.serialize(with_witness=False).hex() == theirs.to_bytes(False).hex()
    assert tx.txid == theirs.get_txid()
    assert decode_transaction(tx.serialize()) == tx
    index = data.draw(st.integers(0, len(tx.inputs) - 1))
    prevouts = tuple(TxOut(1000 + n, SPK_SCRIPT_PATH) for n in range(len(tx.inputs)))
    hash_type = data.draw(hash_types)
    if hash_type & 3 == 3 and index >= len(tx.outputs):
        return
    leaf = data.draw(st.sampled_from([None, LEAF]))
    ours = taproot_sighash(tx, index, prevouts, hash_type=hash_type, leaf_script=leaf)
    digest = theirs.get_transaction_taproot_digest(
        index,
        [Script.from_raw(p.script_pubkey.hex()) for p in prevouts],
        [p.value for p in prevouts],
        ext_flag=0 if leaf is None else 1,
        script=Script.from_raw(LEAF.hex()),
        sighash=hash_type,
    )
    assert ours == bytes(digest)


@settings(max_examples=25, deadline=None)
@given(tx=transactions, data=st.data())
def test_kernel_accepts_signatures_over_our_sighash(tx: Transaction, data: st.DataObject) -> None:
    """Key path (BIP-86 tweak) and script path signatures over `taproot_sighash`, every hash
    type, verify in Bitcoin Core's interpreter; a signature for another input does not."""
    index = data.draw(st.integers(0, len(tx.inputs) - 1))
    hash_type = data.draw(hash_types)
    if hash_type & 3 == 3 and index >= len(tx.outputs):
        return
    script_path = data.draw(st.booleans())
    spk = SPK_SCRIPT_PATH if script_path else SPK_KEY_PATH
    prevouts = tuple(TxOut(5000 + n, spk) for n in range(len(tx.inputs)))
    leaf = LEAF if script_path else None
    digest = taproot_sighash(tx, index, prevouts, hash_type=hash_type, leaf_script=leaf)
    suffix = bytes([hash_type]) if hash_type else b""
    if script_path:
        control = bytes([0xC0 | SCRIPT_PARITY]) + INTERNAL
        signature = KEY.sign_schnorr(digest, bytes(32)) + suffix
        witness: tuple[bytes, ...] = (signature, LEAF, control)
    else:
        signature = _key_path_key().sign_schnorr(digest, bytes(32)) + suffix
        witness = (signature,)
    signed = tx.with_witness(index, witness)
    assert _kernel_accepts(signed, index, prevouts)
    tampered = (bytes([signature[0] ^ 1]) + signature[1:], *witness[1:])
    assert not _kernel_accepts(tx.with_witness(index, tampered), index, prevouts)


def _key_path_key() -> coincurve.PrivateKey:
    """The BIP-86 tweaked secret (negated first when the internal key's y is odd)."""
    order = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    secret = KEY.to_int()
    if KEY.public_key.format()[0] == 3:
        secret = order - secret
    return coincurve.PrivateKey.from_int(secret).add(tagged_hash("TapTweak", INTERNAL))
