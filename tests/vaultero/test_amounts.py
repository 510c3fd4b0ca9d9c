"""Amounts and timelocks: integer arithmetic the desk and borrowers share."""

from __future__ import annotations

import pytest

from tests.vaultero.conftest import Loan
from vaultero import (
    InvalidAmountError,
    InvalidCsvError,
    build_collateral_lock,
    csv_blocks_from_evm,
    dust_limit,
    key_path_address,
    origination_fee_sats,
    required_deposit,
    sats_from_wei,
)
from vaultero.encoding import address_to_script_pubkey


def test_sats_from_wei_rounds_down() -> None:
    assert sats_from_wei(10**18) == 10**8
    assert sats_from_wei(5 * 10**15 + 9_999_999_999) == 500_000
    with pytest.raises(InvalidAmountError):
        sats_from_wei(1.0)  # type: ignore[arg-type]


def test_origination_fee_is_one_percent_rounded_down() -> None:
    assert origination_fee_sats(500_000) == 5_000
    assert origination_fee_sats(199) == 1


def test_csv_from_evm_blocks_with_seed_defaults() -> None:
    assert csv_blocks_from_evm(2000, 20) == 100
    assert csv_blocks_from_evm(543000, 20) == 27150
    with pytest.raises(InvalidCsvError):
        csv_blocks_from_evm(19, 20)
    with pytest.raises(InvalidCsvError):
        csv_blocks_from_evm(65536 * 20, 20)


def test_required_deposit_is_exactly_what_tx1_needs(loan: Loan) -> None:
    deposit = required_deposit(loan_sats=1_000_000, feerate_sat_vb=7, network="regtest")
    assert deposit.origination_fee_sats == 10_000
    assert deposit.miner_fee_sats == 7 * deposit.tx1_vsize
    t = build_collateral_lock(
        escrow=loan.escrow,
        outpoint=loan.outpoint,
        value=deposit.total_sats,
        collateral=loan.collateral,
        loan_sats=1_000_000,
        origination_fee_sats=10_000,
        feerate_sat_vb=7,
        network="regtest",
    )
    assert t.vsize == deposit.tx1_vsize
    assert t.outputs[1].value == 1_000_000
    with pytest.raises(ValueError, match="is below collateral"):
        build_collateral_lock(
            escrow=loan.escrow,
            outpoint=loan.outpoint,
            value=deposit.total_sats - 1,
            collateral=loan.collateral,
            loan_sats=1_000_000,
            origination_fee_sats=10_000,
            feerate_sat_vb=7,
            network="regtest",
        )


def test_dust_limits_match_bitcoin_core() -> None:
    def spk(address: str, network: str = "mainnet") -> bytes:
        return address_to_script_pubkey(address, network)

    assert dust_limit(spk("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4")) == 294
    generator_x = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
    assert dust_limit(spk(key_path_address(generator_x, "mainnet"))) == 330
    assert dust_limit(spk("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2")) == 546
    assert dust_limit(spk("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy")) == 540


def test_key_path_address_matches_bip341_wallet_vector_0() -> None:
    """Key-path-only output (no script tree) of BIP-341's wallet vectors, case 0."""
    key = "d6889cb081036e0faefa3a35157ad71086b123b2b144b649798b494c300a961d"
    assert key_path_address(key, "mainnet") == (
        "bc1p2wsldez5mud2yam29q22wgfh9439spgduvct83k3pm50fcxa5dps59h4z5"
    )
