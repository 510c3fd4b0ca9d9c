"""BIP-340 signatures over the BIP-341 script-path sighash (SIGHASH_DEFAULT), through
libsecp256k1 (coincurve), and assembly of the witness in PROTOCOL.md's order."""

from __future__ import annotations

import hashlib
import os

from coincurve import PrivateKey, PublicKeyXOnly

from vaultero.encoding import parse_hex
from vaultero.errors import (
    InvalidKeyError,
    InvalidSignatureError,
    MissingWitnessItemError,
    NotASignerError,
    VaulteroError,
    WrongPreimageError,
)
from vaultero.transactions import SpendTemplate

SIGNATURE_SIZE = 64


def private_key(value: str | bytes) -> PrivateKey:
    raw = parse_hex(value, name="private_key", length=32)
    try:
        return PrivateKey(raw)
    except ValueError:
        raise InvalidKeyError("private_key is not a valid secp256k1 secret") from None


def xonly_public_key(private_key_hex: str | bytes) -> str:
    """The x-only public key (64 hex) of a private key."""
    return PublicKeyXOnly.from_secret(private_key(private_key_hex).secret).format().hex()


def schnorr_sign(
    message: bytes, private_key_hex: str | bytes, aux_rand: bytes | None = None
) -> bytes:
    """BIP-340 sign a 32-byte message; `aux_rand` defaults to 32 fresh random bytes."""
    if len(message) != 32:
        raise VaulteroError(f"message must be 32 bytes, got {len(message)}")
    aux = os.urandom(32) if aux_rand is None else parse_hex(aux_rand, name="aux_rand", length=32)
    return bytes(private_key(private_key_hex).sign_schnorr(message, aux))


def schnorr_verify(message: bytes, public_key_hex: str | bytes, signature: bytes) -> bool:
    """BIP-340 verify. False for any signature or key that cannot be valid."""
    key = parse_hex(public_key_hex, name="public_key", length=32)
    if len(signature) != SIGNATURE_SIZE:
        return False
    try:
        point = PublicKeyXOnly(key)
    except ValueError:
        return False
    return bool(point.verify(signature, message))


def _leaf_signers(tx: SpendTemplate) -> dict[str, str]:
    """Role → x-only key of each signature the spent leaf checks."""
    out = tx.output
    if tx.leaf == "collateral_lock":
        return {"borrower": out.borrower_key, "lender": out.lender_key}
    if tx.leaf in ("escrow_exit", "collateral_release"):
        return {"borrower": out.borrower_key}
    return {"lender": out.lender_key}


def sign_input(tx: SpendTemplate, private_key_hex: str | bytes) -> bytes:
    """A 64-byte BIP-340 signature of `tx`'s script-path sighash by a key the leaf checks."""
    public = xonly_public_key(private_key_hex)
    if public not in _leaf_signers(tx).values():
        raise NotASignerError(f"key {public} does not sign the {tx.leaf} leaf")
    return schnorr_sign(tx.sighash, private_key_hex)


def verify_input(tx: SpendTemplate, public_key_hex: str | bytes, signature: bytes | str) -> bool:
    """Whether `signature` is `public_key_hex`'s valid signature of `tx`'s sighash."""
    sig = parse_hex(signature, name="signature")
    return schnorr_verify(tx.sighash, public_key_hex, sig)


def _signature(tx: SpendTemplate, role: str, value: bytes | str | None) -> bytes:
    if value is None:
        raise MissingWitnessItemError(f"{tx.leaf} needs the {role}'s signature ({role}_sig)")
    sig = parse_hex(value, name=f"{role}_sig", length=SIGNATURE_SIZE)
    if not schnorr_verify(tx.sighash, _leaf_signers(tx)[role], sig):
        raise InvalidSignatureError(f"{role}_sig does not verify for this {tx.leaf} transaction")
    return sig


def _preimage(tx: SpendTemplate, value: bytes | str | None) -> bytes:
    if value is None:
        raise MissingWitnessItemError(f"{tx.leaf} needs the preimage of {tx.output.preimage_hash}")
    preimage = parse_hex(value, name="preimage", length=32)
    if hashlib.sha256(preimage).hexdigest() != tx.output.preimage_hash:
        raise WrongPreimageError(f"preimage does not hash to {tx.output.preimage_hash}")
    return preimage


def witness_stack(
    tx: SpendTemplate,
    *,
    borrower_sig: bytes | str | None = None,
    lender_sig: bytes | str | None = None,
    preimage: bytes | str | None = None,
) -> list[bytes]:
    """The checked witness, first item first, as PROTOCOL.md's table orders it."""
    unexpected = {
        "borrower_sig": borrower_sig is not None and "borrower" not in _leaf_signers(tx),
        "lender_sig": lender_sig is not None and "lender" not in _leaf_signers(tx),
        "preimage": preimage is not None and tx.leaf in ("escrow_exit", "lender_sweep"),
    }
    for name, bad in unexpected.items():
        if bad:
            raise VaulteroError(f"{tx.leaf} takes no {name}")
    tail = [tx.leaf_script, tx.control_block]
    if tx.leaf == "collateral_lock":
        items = [
            _signature(tx, "borrower", borrower_sig),
            _signature(tx, "lender", lender_sig),
            _preimage(tx, preimage),
        ]
    elif tx.leaf == "collateral_release":
        items = [_signature(tx, "borrower", borrower_sig), _preimage(tx, preimage)]
    elif tx.leaf == "escrow_exit":
        items = [_signature(tx, "borrower", borrower_sig)]
    else:
        items = [_signature(tx, "lender", lender_sig)]
    return items + tail


def finalize(
    tx: SpendTemplate,
    *,
    borrower_sig: bytes | str | None = None,
    lender_sig: bytes | str | None = None,
    preimage: bytes | str | None = None,
) -> str:
    """The signed transaction hex. Every signature is verified and the preimage checked first:
    a missing item raises MissingWitnessItemError, a bad one InvalidSignatureError or
    WrongPreimageError, so nothing unspendable leaves here."""
    stack = witness_stack(tx, borrower_sig=borrower_sig, lender_sig=lender_sig, preimage=preimage)
    return tx.with_witness(stack)
