"""Bad input raises VaulteroError subclasses with exact messages, never an assert."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from tests.vaultero.conftest import STRANGER_SECRET, Loan
from tests.vaultero.test_consensus import release_tx, tx1
from vaultero import (
    DustOutputError,
    FeeExceedsInputError,
    InsufficientFundsError,
    InvalidAddressError,
    InvalidAmountError,
    InvalidCsvError,
    InvalidHexError,
    InvalidKeyError,
    InvalidLengthError,
    InvalidSignatureError,
    MissingWitnessItemError,
    NotASignerError,
    Outpoint,
    TxOut,
    UnknownNetworkError,
    VaulteroError,
    WrongPreimageError,
    build_borrower_exit,
    build_collateral_lock,
    escrow_output,
    finalize,
    sign_input,
)

KEY = "7592aab5d43618dda13fba71e3993cd7517a712d3da49664c06ee1bd3d1f70af"


def _escrow(**overrides: Any) -> Any:
    terms: dict[str, Any] = {
        "borrower_key": KEY,
        "lender_key": KEY,
        "preimage_hash": "a" * 64,
        "csv_blocks": 100,
    }
    terms.update(overrides)
    return escrow_output(**terms)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (
            {"borrower_key": KEY[:-2]},
            InvalidLengthError,
            "borrower_key must be 32 bytes (64 hex characters), got 31 bytes",
        ),
        (
            {"lender_key": KEY + "00"},
            InvalidLengthError,
            "lender_key must be 32 bytes (64 hex characters), got 33 bytes",
        ),
        (
            {"preimage_hash": "ab" * 20},
            InvalidLengthError,
            "preimage_hash must be 32 bytes (64 hex characters), got 20 bytes",
        ),
        ({"borrower_key": "zz" * 32}, InvalidHexError, "borrower_key is not hex"),
        ({"preimage_hash": "g" * 64}, InvalidHexError, "preimage_hash is not hex"),
        (
            {"internal_key": "f" * 64},
            InvalidKeyError,
            "internal_key is not a valid x-only public key",
        ),
        ({"csv_blocks": 0}, InvalidCsvError, "csv_blocks must be between 1 and 65535, got 0"),
        (
            {"csv_blocks": 65536},
            InvalidCsvError,
            "csv_blocks must be between 1 and 65535, got 65536",
        ),
        (
            {"csv_blocks": 100.0},
            InvalidCsvError,
            "csv_blocks must be between 1 and 65535, got 100.0",
        ),
    ],
)
def test_output_input_errors(overrides: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        _escrow(**overrides)
    assert issubclass(error, VaulteroError)


def test_unknown_network() -> None:
    with pytest.raises(
        UnknownNetworkError,
        match=re.escape(
            "unknown network 'bitcoin': expected one of mainnet, testnet, signet, regtest"
        ),
    ):
        _escrow().address("bitcoin")


def test_dust_output(loan: Loan) -> None:
    with pytest.raises(
        DustOutputError, match=r"^output of 53 sats is below the dust limit of 330 sats$"
    ):
        build_borrower_exit(
            escrow=loan.escrow,
            outpoint=loan.outpoint,
            value=329,
            feerate_sat_vb=2,
            network="regtest",
        )


def test_fee_larger_than_the_input(loan: Loan) -> None:
    with pytest.raises(
        FeeExceedsInputError, match=r"^fee of 1380 sats exceeds the input of 1000 sats$"
    ):
        build_borrower_exit(
            escrow=loan.escrow,
            outpoint=loan.outpoint,
            value=1000,
            feerate_sat_vb=10,
            network="regtest",
        )


def test_escrow_short_of_collateral_and_fees(loan: Loan) -> None:
    with pytest.raises(
        InsufficientFundsError,
        match=re.escape(
            "escrow of 1010000 sats is below collateral 1000000 + origination fee 10000 + "
            "miner fee 666 = 1010666 sats"
        ),
    ):
        build_collateral_lock(
            escrow=loan.escrow,
            outpoint=loan.outpoint,
            value=1_010_000,
            collateral=loan.collateral,
            loan_sats=1_000_000,
            origination_fee_sats=10_000,
            feerate_sat_vb=3,
            network="regtest",
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"value": 1.5}, InvalidAmountError, "value must be an integer number of sats, got 1.5"),
        ({"value": -5}, InvalidAmountError, "value must be positive, got -5"),
        (
            {"feerate_sat_vb": 2.5},
            InvalidAmountError,
            "feerate_sat_vb must be an integer number of sat/vB, got 2.5",
        ),
        (
            {"network": "main"},
            UnknownNetworkError,
            "unknown network 'main': expected one of mainnet, testnet, signet, regtest",
        ),
        (
            {"destination": "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"},
            InvalidAddressError,
            "address 'bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4' is not a regtest address",
        ),
        (
            {"destination": "bcrt1qnotanaddress"},
            InvalidAddressError,
            "address 'bcrt1qnotanaddress' is not a valid regtest segwit address",
        ),
    ],
)
def test_builder_input_errors(
    loan: Loan, kwargs: dict[str, Any], error: type, message: str
) -> None:
    args: dict[str, Any] = {
        "escrow": loan.escrow,
        "outpoint": loan.outpoint,
        "value": 50_000,
        "feerate_sat_vb": 2,
        "network": "regtest",
    }
    args.update(kwargs)
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        build_borrower_exit(**args)


def test_outpoint_errors() -> None:
    with pytest.raises(InvalidLengthError):
        Outpoint("ab" * 31, 0)
    with pytest.raises(VaulteroError, match="vout must be between 0 and 4294967295, got -1"):
        Outpoint("ab" * 32, -1)


def test_finalize_refuses_missing_and_bad_items(loan: Loan) -> None:
    t = tx1(loan)
    sig_b = sign_input(t, loan.borrower_secret)
    sig_l = sign_input(t, loan.lender_secret)
    with pytest.raises(
        MissingWitnessItemError,
        match=r"^collateral_lock needs the lender's signature \(lender_sig\)$",
    ):
        finalize(t, borrower_sig=sig_b, preimage=loan.preimage_borrower)
    with pytest.raises(MissingWitnessItemError, match=r"^collateral_lock needs the preimage of "):
        finalize(t, borrower_sig=sig_b, lender_sig=sig_l)
    with pytest.raises(InvalidSignatureError, match=r"^borrower_sig does not verify"):
        finalize(t, borrower_sig=sig_l, lender_sig=sig_b, preimage=loan.preimage_borrower)
    with pytest.raises(WrongPreimageError):
        finalize(t, borrower_sig=sig_b, lender_sig=sig_l, preimage=loan.preimage_lender)
    with pytest.raises(InvalidLengthError, match=r"^lender_sig must be 64 bytes"):
        finalize(t, borrower_sig=sig_b, lender_sig=sig_l + b"\x00", preimage=loan.preimage_borrower)
    r = release_tx(loan)
    with pytest.raises(VaulteroError, match=r"^collateral_release takes no lender_sig$"):
        finalize(
            r,
            borrower_sig=sign_input(r, loan.borrower_secret),
            lender_sig=sig_l,
            preimage=loan.preimage_lender,
        )


def test_sign_input_refuses_a_key_not_in_the_leaf(loan: Loan) -> None:
    with pytest.raises(NotASignerError, match="does not sign the collateral_release leaf"):
        sign_input(release_tx(loan), loan.lender_secret)
    with pytest.raises(NotASignerError):
        sign_input(tx1(loan), STRANGER_SECRET)
    with pytest.raises(InvalidKeyError, match=r"^private_key is not a valid secp256k1 secret$"):
        sign_input(tx1(loan), "00" * 32)


def test_template_refuses_outputs_above_the_input(loan: Loan) -> None:
    t = release_tx(loan)
    with pytest.raises(InvalidAmountError, match=r"^outputs spend more than the input of"):
        replace(t, outputs=(TxOut(t.value + 1, t.outputs[0].script_pubkey),))
