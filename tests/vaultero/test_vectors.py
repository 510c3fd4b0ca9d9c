"""Published vectors: BIP-340 signing/verification, BIP-341 wallet outputs, the seed's escrow
and collateral addresses (data/README.md names every file's source)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultero import (
    BIP341_NUMS,
    SEED_INTERNAL_KEY,
    collateral_output,
    escrow_output,
    schnorr_sign,
    schnorr_verify,
    xonly_public_key,
)
from vaultero.encoding import NETWORKS, address_to_script_pubkey, taproot_address
from vaultero.taproot import TaprootOutput, commit_tree, control_block, tweak_public_key

DATA = Path(__file__).parent / "data"
BIP340 = list(csv.DictReader((DATA / "bip340-test-vectors.csv").open()))
BIP341 = json.loads((DATA / "bip341-wallet-vectors-scriptpubkey.json").read_text())["scriptPubKey"]


@pytest.mark.parametrize("row", BIP340, ids=[r["index"] for r in BIP340])
def test_bip340_vectors(row: dict[str, str]) -> None:
    message = bytes.fromhex(row["message"])
    signature = bytes.fromhex(row["signature"])
    expected = row["verification result"] == "TRUE"
    assert schnorr_verify(message, row["public key"], signature) is expected
    if row["secret key"]:
        assert xonly_public_key(row["secret key"]) == row["public key"].lower()
        aux = bytes.fromhex(row["aux_rand"])
        assert schnorr_sign(message, row["secret key"], aux) == signature


def _tree(node: Any) -> Any:
    if isinstance(node, dict):
        return (bytes.fromhex(node["script"]), node["leafVersion"])
    return (_tree(node[0]), _tree(node[1]))


@pytest.mark.parametrize("vector", BIP341, ids=[str(i) for i in range(len(BIP341))])
def test_bip341_wallet_vectors(vector: dict[str, Any]) -> None:
    internal = bytes.fromhex(vector["given"]["internalPubkey"])
    tree = vector["given"]["scriptTree"]
    expected = vector["expected"]
    if tree is None:
        output_key, _ = tweak_public_key(internal, None)
        blocks: list[str] = []
    else:
        commitment = commit_tree(_tree(tree))
        assert [h.hex() for h in commitment.leaf_hashes] == vector["intermediary"]["leafHashes"]
        assert commitment.merkle_root.hex() == vector["intermediary"]["merkleRoot"]
        output_key, parity = tweak_public_key(internal, commitment.merkle_root)
        blocks = [
            control_block(internal, parity, path, version).hex()
            for (_, version), path in zip(commitment.leaves, commitment.paths, strict=True)
        ]
    assert output_key.hex() == vector["intermediary"]["tweakedPubkey"]
    assert (b"\x51\x20" + output_key).hex() == expected["scriptPubKey"]
    assert taproot_address(output_key, "mainnet") == expected["bip350Address"]
    assert blocks == expected.get("scriptPathControlBlocks", [])


def test_bip341_vector_with_our_two_leaf_shape_through_taproot_output() -> None:
    """Vector 4 is a one-branch, two-tapscript-leaf tree: exactly the shape of our outputs."""
    vector = BIP341[4]
    leaves = tuple(bytes.fromhex(leaf["script"]) for leaf in vector["given"]["scriptTree"])
    out = TaprootOutput("escrow", vector["given"]["internalPubkey"], "", "", "", 1, leaves)  # type: ignore[arg-type]
    assert out.output_key == vector["intermediary"]["tweakedPubkey"]
    assert out.script_pubkey.hex() == vector["expected"]["scriptPubKey"]
    assert out.address("mainnet") == vector["expected"]["bip350Address"]
    assert [out.control_block(i).hex() for i in (0, 1)] == vector["expected"][
        "scriptPathControlBlocks"
    ]
    assert [out.leaf_hash(i).hex() for i in (0, 1)] == vector["intermediary"]["leafHashes"]


def test_nums_key_is_the_hash_of_the_uncompressed_generator() -> None:
    g = bytes.fromhex(
        "04"
        "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
        "483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8"
    )
    assert hashlib.sha256(g).hexdigest() == BIP341_NUMS
    assert SEED_INTERNAL_KEY != BIP341_NUMS


SEED_BORROWER = "7592aab5d43618dda13fba71e3993cd7517a712d3da49664c06ee1bd3d1f70af"
SEED_LENDER = "e5740e63bad28081ed7cf654dd6c19029ca03382fc05ab5f5dda81f2c55b845b"


def test_seed_compatibility_vector() -> None:
    """Issue 4's vector: the seed's tools, regtest, internal key SEED_INTERNAL_KEY."""
    escrow = escrow_output(
        borrower_key=SEED_BORROWER,
        lender_key=SEED_LENDER,
        preimage_hash="a" * 64,
        csv_blocks=100,
        internal_key=SEED_INTERNAL_KEY,
    )
    collateral = collateral_output(
        borrower_key=SEED_BORROWER,
        lender_key=SEED_LENDER,
        preimage_hash="b" * 64,
        csv_blocks=27150,
        internal_key=SEED_INTERNAL_KEY,
    )
    assert escrow.address("regtest") == (
        "bcrt1pdj8zes7cr8nausad4lygdp3vgq7vue6w2shn0q6k208xppr6h84skm23rc"
    )
    assert collateral.address("regtest") == (
        "bcrt1pwzgc9jgxlv5xrw44atyg9ceu0f7frhryrc33q9j2e4q3q4zq4tqsdzekwy"
    )


def test_scripts_are_protocol_md_byte_for_byte() -> None:
    escrow = escrow_output(
        borrower_key=SEED_BORROWER, lender_key=SEED_LENDER, preimage_hash="a" * 64, csv_blocks=100
    )
    collateral = collateral_output(
        borrower_key=SEED_BORROWER,
        lender_key=SEED_LENDER,
        preimage_hash="b" * 64,
        csv_blocks=27150,
    )
    b, lk = SEED_BORROWER, SEED_LENDER
    # escrow: <100> CSV DROP <P_B> CHECKSIG | SHA256 <H_B> EQUALVERIFY <P_L> CHECKSIG <P_B>
    #         CHECKSIGADD 2 NUMEQUALVERIFY TRUE
    # collateral: <27150> CSV DROP <P_L> CHECKSIG | SHA256 <H_L> EQUALVERIFY <P_B> CHECKSIG
    assert escrow.leaves[0].hex() == f"0164b27520{b}ac"
    assert escrow.leaves[1].hex() == f"a820{'a' * 64}8820{lk}ac20{b}ba529d51"
    assert collateral.leaves[0].hex() == f"020e6ab27520{lk}ac"
    assert collateral.leaves[1].hex() == f"a820{'b' * 64}8820{b}ac"
    assert escrow.internal_key == BIP341_NUMS
    # control block: 0xc0 | parity, internal key, sibling leaf hash
    for out in (escrow, collateral):
        for i in (0, 1):
            block = out.control_block(i)
            assert block[0] == 0xC0 | out.parity
            assert block[1:33].hex() == out.internal_key
            assert block[33:] == out.leaf_hash(1 - i)


@pytest.mark.parametrize(
    ("blocks", "encoded"),
    [
        (1, "51"),
        (16, "60"),
        (17, "0111"),
        (127, "017f"),
        (128, "028000"),
        (255, "02ff00"),
        (32768, "03008000"),
        (65535, "03ffff00"),
    ],
)
def test_csv_is_a_minimal_script_number(blocks: int, encoded: str) -> None:
    out = escrow_output(
        borrower_key=SEED_BORROWER,
        lender_key=SEED_LENDER,
        preimage_hash="a" * 64,
        csv_blocks=blocks,
    )
    assert out.leaves[0].hex().startswith(encoded + "b275")
    assert taproot_address(bytes.fromhex(out.output_key), "regtest").startswith("bcrt1p")


@settings(max_examples=40, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), network=st.sampled_from(list(NETWORKS)))
def test_our_bech32m_encoder_agrees_with_bitcoin_utils_decoder(key: bytes, network: str) -> None:
    address = taproot_address(key, network)
    assert address_to_script_pubkey(address, network) == b"\x51\x20" + key
