"""The BIP-341 signature hash (taproot, key path and script path, every hash type).

The one implementation in btcloan: vaultero's templates and the backend's signer both sign
`taproot_sighash`. `taproot_sigmsg` is the message before the tagged hash, exposed so that
tests can compare it with the BIP-341 wallet vectors' `sigMsg` byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

from vaultero.errors import VaulteroError
from vaultero.taproot import LEAF_VERSION_TAPSCRIPT, leaf_hash, tagged_hash
from vaultero.txcodec import Transaction, TxOut, var_bytes

SIGHASH_DEFAULT: Final[int] = 0x00
SIGHASH_ALL: Final[int] = 0x01
SIGHASH_NONE: Final[int] = 0x02
SIGHASH_SINGLE: Final[int] = 0x03
SIGHASH_ANYONECANPAY: Final[int] = 0x80
VALID_HASH_TYPES: Final[frozenset[int]] = frozenset({0x00, 0x01, 0x02, 0x03, 0x81, 0x82, 0x83})
# codesep_pos when no OP_CODESEPARATOR was executed (our leaves have none).
NO_CODESEPARATOR: Final[int] = 0xFFFFFFFF


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _all_inputs_part(tx: Transaction, prevouts: Sequence[TxOut]) -> bytes:
    """sha_prevouts, sha_amounts, sha_scriptpubkeys, sha_sequences (without ANYONECANPAY)."""
    return (
        _sha256(b"".join(txin.outpoint_bytes() for txin in tx.inputs))
        + _sha256(b"".join(p.value.to_bytes(8, "little") for p in prevouts))
        + _sha256(b"".join(var_bytes(p.script_pubkey) for p in prevouts))
        + _sha256(b"".join(txin.sequence.to_bytes(4, "little") for txin in tx.inputs))
    )


def _this_input_part(tx: Transaction, input_index: int, prevouts: Sequence[TxOut]) -> bytes:
    """The spent input itself (ANYONECANPAY): outpoint, amount, scriptPubKey, nSequence."""
    txin, prevout = tx.inputs[input_index], prevouts[input_index]
    return (
        txin.outpoint_bytes()
        + prevout.value.to_bytes(8, "little")
        + var_bytes(prevout.script_pubkey)
        + txin.sequence.to_bytes(4, "little")
    )


def _check(tx: Transaction, input_index: int, prevouts: Sequence[TxOut], hash_type: int) -> None:
    if hash_type not in VALID_HASH_TYPES:
        raise VaulteroError(f"hash_type {hash_type:#x} is not a BIP-341 hash type")
    if len(prevouts) != len(tx.inputs):
        raise VaulteroError("one spent output (prevout) per input is needed")
    if not 0 <= input_index < len(tx.inputs):
        raise VaulteroError(f"input_index {input_index} is out of range")
    if hash_type & 0x03 == SIGHASH_SINGLE and input_index >= len(tx.outputs):
        raise VaulteroError("SIGHASH_SINGLE without an output at the input's index")


def taproot_sigmsg(
    tx: Transaction,
    input_index: int,
    prevouts: Sequence[TxOut],
    *,
    hash_type: int = SIGHASH_DEFAULT,
    annex: bytes | None = None,
    leaf_script: bytes | None = None,
    leaf_version: int = LEAF_VERSION_TAPSCRIPT,
    codesep_pos: int = NO_CODESEPARATOR,
) -> bytes:
    """The epoch byte and SigMsg (BIP-341), with BIP-342's extension for a script path."""
    _check(tx, input_index, prevouts, hash_type)
    output_type = SIGHASH_ALL if hash_type == SIGHASH_DEFAULT else hash_type & 0x03
    anyone_can_pay = bool(hash_type & SIGHASH_ANYONECANPAY)
    msg = b"\x00" + bytes([hash_type])  # epoch 0
    msg += tx.version.to_bytes(4, "little") + tx.locktime.to_bytes(4, "little")
    if not anyone_can_pay:
        msg += _all_inputs_part(tx, prevouts)
    if output_type == SIGHASH_ALL:
        msg += _sha256(b"".join(out.serialize() for out in tx.outputs))
    ext_flag = 0 if leaf_script is None else 1
    msg += bytes([2 * ext_flag + (annex is not None)])
    if anyone_can_pay:
        msg += _this_input_part(tx, input_index, prevouts)
    else:
        msg += input_index.to_bytes(4, "little")
    if annex is not None:
        msg += _sha256(var_bytes(annex))
    if output_type == SIGHASH_SINGLE:
        msg += _sha256(tx.outputs[input_index].serialize())
    if leaf_script is not None:
        msg += leaf_hash(leaf_script, leaf_version) + b"\x00" + codesep_pos.to_bytes(4, "little")
    return msg


def taproot_sighash(
    tx: Transaction,
    input_index: int,
    prevouts: Sequence[TxOut],
    *,
    hash_type: int = SIGHASH_DEFAULT,
    annex: bytes | None = None,
    leaf_script: bytes | None = None,
    leaf_version: int = LEAF_VERSION_TAPSCRIPT,
    codesep_pos: int = NO_CODESEPARATOR,
) -> bytes:
    """The 32 bytes a BIP-340 signature of input `input_index` signs: key path when
    `leaf_script` is None, else the script path through that leaf."""
    msg = taproot_sigmsg(
        tx,
        input_index,
        prevouts,
        hash_type=hash_type,
        annex=annex,
        leaf_script=leaf_script,
        leaf_version=leaf_version,
        codesep_pos=codesep_pos,
    )
    return tagged_hash("TapSighash", msg)
