"""PSBT (BIP-174 + BIP-371): round trips of our spends and BIP-371's own vectors."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.vaultero.conftest import Loan, consensus_accepts
from tests.vaultero.test_consensus import exit_tx, release_tx, sweep_tx, tx1
from vaultero import (
    InvalidSignatureError,
    Psbt,
    PsbtError,
    finalize,
    from_psbt,
    schnorr_sign,
    sign_input,
    to_psbt,
)
from vaultero.psbt import parse_tap_tree

VECTORS = json.loads((Path(__file__).parent / "data" / "bip371-psbt-vectors.json").read_text())


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["case"][:60])
def test_bip371_valid_vectors_parse_and_reserialize(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    psbt = Psbt.parse(raw)
    assert psbt.serialize() == raw
    assert Psbt.from_base64(base64.b64encode(raw).decode()) == psbt


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["case"][:60])
def test_bip371_invalid_vectors_are_rejected_naming_the_field(vector: dict[str, Any]) -> None:
    with pytest.raises(PsbtError, match=vector["field"]):
        Psbt.parse(bytes.fromhex(vector["hex"]))


def test_bip371_script_path_vector_fields_read_back() -> None:
    """The 'script path only output' vector: its tap tree is three depth-2/1 leaves."""
    psbt = Psbt.parse(bytes.fromhex(VECTORS["valid"][4]["hex"]))
    tree = dict(psbt.output_pairs[0])[b"\x06"]
    assert [(d, v) for d, v, _ in parse_tap_tree(tree)] == [(2, 0xC0), (2, 0xC0), (1, 0xC0)]


@pytest.mark.parametrize("build", [tx1, exit_tx, release_tx, sweep_tx])
def test_round_trip_rebuilds_the_same_template(loan: Loan, build: Any) -> None:
    template = build(loan)
    spend = from_psbt(to_psbt(template))
    assert spend.template == template
    assert spend.signatures == {}


def test_borrower_presigns_tx1_through_a_psbt_and_lender_completes(loan: Loan) -> None:
    template = tx1(loan)
    # the backend hands the borrower a PSBT describing the escrow input and collateral output
    unsigned = to_psbt(template)
    handed = Psbt.from_base64(unsigned)
    assert dict(handed.input_pairs[0])[b"\x17"].hex() == loan.escrow.internal_key
    assert dict(handed.output_pairs[1])[b"\x05"].hex() == loan.collateral.internal_key
    assert from_psbt(unsigned).template.collateral == loan.collateral
    # the borrower signs offline and returns it
    borrower_view = from_psbt(unsigned).template
    sig_b = sign_input(borrower_view, loan.borrower_secret)
    returned = to_psbt(borrower_view, signatures={loan.borrower_key: sig_b})
    # the lender reads the verified signature and finalizes
    received = from_psbt(returned)
    assert received.signatures == {loan.borrower_key: sig_b}
    signed = finalize(
        received.template,
        borrower_sig=received.signatures[loan.borrower_key],
        lender_sig=sign_input(received.template, loan.lender_secret),
        preimage=loan.preimage_borrower,
    )
    assert consensus_accepts(template, signed)


def test_a_bad_signature_in_a_psbt_is_refused(loan: Loan) -> None:
    template = tx1(loan)
    forged = schnorr_sign(release_tx(loan).sighash, loan.borrower_secret)
    with pytest.raises(InvalidSignatureError):
        to_psbt(template, signatures={loan.borrower_key: forged})
    # smuggle it in past to_psbt: from_psbt still checks it
    good = to_psbt(
        template, signatures={loan.borrower_key: sign_input(template, loan.borrower_secret)}
    )
    psbt = Psbt.from_base64(good)
    pairs = tuple((k, forged if k[0] == 0x14 else v) for k, v in psbt.input_pairs[0])
    tampered = Psbt(psbt.unsigned_tx, psbt.global_pairs, (pairs,), psbt.output_pairs)
    with pytest.raises(InvalidSignatureError, match="does not verify"):
        from_psbt(tampered.to_base64())


def test_psbt_whose_leaves_do_not_make_the_utxo_address_is_refused(loan: Loan) -> None:
    psbt = Psbt.from_base64(to_psbt(tx1(loan)))
    pairs = tuple(
        (k, v[:8] + v[8:9] + b"\x51\x20" + b"\x22" * 32 if k == b"\x01" else v)
        for k, v in psbt.input_pairs[0]
    )
    other = Psbt(psbt.unsigned_tx, psbt.global_pairs, (pairs,), psbt.output_pairs)
    with pytest.raises(PsbtError, match="do not make the spent output's address"):
        from_psbt(other.to_base64())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"psbx\xff\x00").decode(), "missing magic"),
        (base64.b64encode(b"psbt\xff\x00").decode(), "no unsigned transaction"),
    ],
)
def test_malformed_psbts(text: str, message: str) -> None:
    with pytest.raises(PsbtError, match=message):
        from_psbt(text)


def test_foreign_psbt_is_not_a_vaultero_spend() -> None:
    with pytest.raises(PsbtError, match="does not carry both leaves"):
        from_psbt(base64.b64encode(bytes.fromhex(VECTORS["valid"][3]["hex"])).decode())
