"""Encryption of secrets at rest (the lender preimages P_L), with key rotation."""

from __future__ import annotations

import base64
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class SecretDecryptionError(Exception):
    """A stored secret cannot be decrypted with any configured key."""


def _derived_key(secret_key: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"btcloan-secrets-v1")
    return base64.urlsafe_b64encode(hkdf.derive(secret_key.encode()))


@cache
def _cipher(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    try:
        fernets = [Fernet(key) for key in keys] or [Fernet(_derived_key(secret_key))]
    except ValueError:
        raise ImproperlyConfigured(
            "BTCLOAN_ENCRYPTION_KEYS must be Fernet keys (32 url-safe base64-encoded bytes)"
        ) from None
    return MultiFernet(fernets)


def cipher() -> MultiFernet:
    return _cipher(tuple(settings.BTCLOAN_ENCRYPTION_KEYS), settings.SECRET_KEY)


def encrypt_secret(plaintext: bytes) -> bytes:
    return cipher().encrypt(plaintext)


def decrypt_secret(token: bytes | memoryview) -> bytes:
    try:
        return cipher().decrypt(bytes(token))
    except InvalidToken:
        raise SecretDecryptionError("no configured key decrypts this secret") from None
