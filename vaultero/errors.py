"""Typed errors. Every bad input raises a `VaulteroError` subclass with an exact message."""

from __future__ import annotations


class VaulteroError(ValueError):
    """Base of every error vaultero raises on bad input or an impossible request."""


class InvalidHexError(VaulteroError):
    """A field that must be hex is not."""


class InvalidLengthError(VaulteroError):
    """A key, hash, preimage or signature has the wrong length."""


class InvalidKeyError(VaulteroError):
    """A key of the right length that is not a valid secp256k1 x-only key or secret."""


class InvalidCsvError(VaulteroError):
    """A relative timelock outside 1..65535 blocks."""


class UnknownNetworkError(VaulteroError):
    """A network name other than mainnet, testnet, signet, regtest."""


class InvalidAddressError(VaulteroError):
    """An address that does not decode, or belongs to another network."""


class InvalidAmountError(VaulteroError):
    """A negative, zero or non-integer amount or feerate."""


class DustOutputError(VaulteroError):
    """An output would be below its dust limit."""


class FeeExceedsInputError(VaulteroError):
    """The miner fee is not smaller than the value being spent."""


class InsufficientFundsError(VaulteroError):
    """The escrow cannot cover collateral, origination fee and miner fee."""


class MissingWitnessItemError(VaulteroError):
    """`finalize` was not given a signature or preimage the leaf needs."""


class InvalidSignatureError(VaulteroError):
    """A signature does not verify for the key and transaction it was given for."""


class WrongPreimageError(VaulteroError):
    """A preimage whose SHA-256 is not the hash the leaf commits to."""


class NotASignerError(VaulteroError):
    """A key that does not appear in the leaf being spent."""


class PsbtError(VaulteroError):
    """A PSBT that does not parse, or does not describe a vaultero spend."""


class TransactionDecodeError(VaulteroError):
    """Bytes that are not a valid serialized transaction."""
