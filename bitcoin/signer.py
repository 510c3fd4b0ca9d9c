"""The lender's Bitcoin signer, behind a small interface.

`LenderSigner` is what the rest of the backend sees: the x-only public key, the lender's
key-path address script, and `sign(request)` for one input of a transaction. The local
implementation holds the key in memory (from LENDER_BTC_PRIVATE_KEY or LENDER_BTC_KEY_FILE);
a remote signer or an HSM implements the same protocol and is named by BITCOIN_LENDER_SIGNER.

Only `bitcoin.services.signing` calls `sign`, and only for a spend registered for a known loan
(`RegisteredSpend`). The key is never logged, returned, pickled or shown by repr.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import coincurve
from django.conf import settings
from django.utils.module_loading import import_string

from vaultero import Transaction, TxOut, tagged_hash, taproot_sighash

SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class SignerConfigError(Exception):
    """The lender's key is missing or malformed (the message never contains the key)."""


@dataclass(frozen=True)
class SigningRequest:
    """One input to sign: script path when `leaf_script` is set, else the key path (BIP-86)."""

    tx: Transaction
    input_index: int
    prevouts: tuple[TxOut, ...]
    leaf_script: bytes | None

    def sighash(self) -> bytes:
        """BIP-341, SIGHASH_DEFAULT, no annex (vaultero's one implementation)."""
        return taproot_sighash(
            self.tx, self.input_index, self.prevouts, leaf_script=self.leaf_script
        )


class LenderSigner(Protocol):
    def x_only_public_key(self) -> bytes: ...

    def key_path_script_pubkey(self) -> bytes: ...

    def sign(self, request: SigningRequest) -> bytes:
        """A 64-byte BIP-340 signature (SIGHASH_DEFAULT) for the request's input."""
        ...


def key_path_tweak(x_only_key: bytes) -> bytes:
    """BIP-86 tweak: taproot output with no script tree."""
    return tagged_hash("TapTweak", x_only_key)


class LocalKeySigner:
    """The lender's key in process memory, signing with libsecp256k1 (coincurve)."""

    __slots__ = ("__key",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise SignerConfigError("the lender's Bitcoin key must be 32 bytes")
        try:
            self.__key = coincurve.PrivateKey(secret)
        except ValueError:
            raise SignerConfigError(
                "the lender's Bitcoin key is not a valid secp256k1 key"
            ) from None

    @classmethod
    def from_settings(cls) -> LocalKeySigner:
        value = settings.LENDER_BTC_PRIVATE_KEY
        if not value and settings.LENDER_BTC_KEY_FILE:
            path = Path(settings.LENDER_BTC_KEY_FILE)
            try:
                value = path.read_text().strip()
            except OSError as exc:
                raise SignerConfigError(
                    f"cannot read LENDER_BTC_KEY_FILE {path}: {exc.strerror}"
                ) from None
        if not value:
            raise SignerConfigError(
                "no lender Bitcoin key: set LENDER_BTC_PRIVATE_KEY or LENDER_BTC_KEY_FILE"
            )
        value = value.strip().removeprefix("0x")
        if len(value) != 64:
            raise SignerConfigError("the lender's Bitcoin key must be 64 hex characters")
        try:
            secret = bytes.fromhex(value)
        except ValueError:
            raise SignerConfigError("the lender's Bitcoin key is not hex") from None
        return cls(secret)

    def __repr__(self) -> str:
        return f"<LocalKeySigner pubkey={self.x_only_public_key().hex()} key=<redacted>>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("the lender's signer cannot be pickled")

    def x_only_public_key(self) -> bytes:
        return coincurve.PublicKeyXOnly.from_secret(self.__key.secret).format()

    def key_path_script_pubkey(self) -> bytes:
        output_key = coincurve.PublicKeyXOnly.from_secret(self.__key.secret)
        output_key.tweak_add(key_path_tweak(output_key.format()))
        return b"\x51\x20" + output_key.format()

    def _key_path_private_key(self) -> coincurve.PrivateKey:
        internal = coincurve.PublicKey.from_secret(self.__key.secret).format(compressed=True)
        secret = self.__key.to_int()
        if internal[0] == 3:  # odd y: BIP-340 uses the negated key
            secret = SECP256K1_ORDER - secret
        tweak = key_path_tweak(internal[1:])
        return coincurve.PrivateKey.from_int(secret).add(tweak)

    def sign(self, request: SigningRequest) -> bytes:
        digest = request.sighash()
        key = self.__key if request.leaf_script is not None else self._key_path_private_key()
        return key.sign_schnorr(digest, bytes(32))


def lender_key_problems() -> list[str]:
    """Start-up check (btcloan.startup): TX_1 and the sweep sign with the in-process key when
    it is the configured signer (a remote signer or HSM holds its own)."""
    if settings.BITCOIN_LENDER_SIGNER != "bitcoin.signer.local_key_signer":
        return []
    try:
        LocalKeySigner.from_settings()
    except SignerConfigError as exc:
        return [str(exc)]
    return []


def local_key_signer() -> LocalKeySigner:
    """The default BITCOIN_LENDER_SIGNER factory: the key from the environment or key file."""
    return LocalKeySigner.from_settings()


@cache
def _signer_from(factory_path: str) -> LenderSigner:
    factory = import_string(factory_path)
    signer: LenderSigner = factory()
    return signer


_override: LenderSigner | None = None


def get_signer() -> LenderSigner:
    """The configured signer (BITCOIN_LENDER_SIGNER names its factory), built once."""
    if _override is not None:
        return _override
    return _signer_from(settings.BITCOIN_LENDER_SIGNER)


def set_signer(signer: LenderSigner | None) -> None:
    """Replace the signer (tests, an HSM client); None goes back to settings."""
    global _override
    _override = signer
    _signer_from.cache_clear()
