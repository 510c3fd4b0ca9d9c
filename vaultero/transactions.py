"""The four spends of PROTOCOL.md as frozen templates: unsigned transaction, spent output,
leaf, fee and the sighash every signer signs. Fees come from the real witnessed vsize."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

from vaultero.encoding import (
    address_to_script_pubkey,
    check_network,
    check_sats,
    dust_limit,
    parse_hex,
    taproot_address,
)
from vaultero.errors import (
    DustOutputError,
    FeeExceedsInputError,
    InsufficientFundsError,
    InvalidAmountError,
    VaulteroError,
)
from vaultero.scripts import LeafName, collateral_output, escrow_output
from vaultero.sighash import SIGHASH_DEFAULT, taproot_sighash
from vaultero.taproot import TaprootOutput, parse_xonly_key, tweak_public_key
from vaultero.txcodec import SEQUENCE_RBF, Transaction, TxIn, TxOut, compact_size

TX_VERSION: Final[int] = 2
TX_LOCKTIME: Final[int] = 0

LEAF_INDEX: Final[dict[str, int]] = {
    "escrow_exit": 0,
    "collateral_lock": 1,
    "collateral_release": 1,
    "lender_sweep": 0,
}
OUTPUT_KIND: Final[dict[str, str]] = {
    "escrow_exit": "escrow",
    "collateral_lock": "escrow",
    "collateral_release": "collateral",
    "lender_sweep": "collateral",
}
# Sizes of the witness items before the leaf script and control block (64-byte signatures,
# 32-byte preimages), in the order of PROTOCOL.md's table.
WITNESS_ITEM_SIZES: Final[dict[str, tuple[int, ...]]] = {
    "collateral_lock": (64, 64, 32),
    "escrow_exit": (64,),
    "collateral_release": (64, 32),
    "lender_sweep": (64,),
}


@dataclass(frozen=True)
class Outpoint:
    """A transaction output reference; `txid` in display byte order, as RPC prints it."""

    txid: str
    vout: int

    def __post_init__(self) -> None:
        txid = parse_hex(self.txid, name="txid", length=32).hex()
        object.__setattr__(self, "txid", txid)
        if txid == "00" * 32:
            raise VaulteroError("txid must not be all zeros (that is a coinbase input)")
        if isinstance(self.vout, bool) or not isinstance(self.vout, int):
            raise VaulteroError(f"vout must be an integer, got {self.vout!r}")
        if not 0 <= self.vout <= 0xFFFFFFFF:
            raise VaulteroError(f"vout must be between 0 and 4294967295, got {self.vout}")


@dataclass(frozen=True)
class SpendTemplate:
    """One input spending `output` through `leaf`, and its outputs. Everything derived (the
    unsigned serialization, sighash, witnessed vsize, fee) is computed at construction, so a
    template is always self-consistent."""

    leaf: LeafName
    output: TaprootOutput
    outpoint: Outpoint
    value: int
    sequence: int
    outputs: tuple[TxOut, ...]
    # TX_1 only: the collateral output that `outputs[1]` pays (so a PSBT can describe it).
    collateral: TaprootOutput | None = None
    unsigned_tx: bytes = field(init=False, repr=False)
    sighash: bytes = field(init=False, repr=False)
    vsize: int = field(init=False)
    fee: int = field(init=False)

    def __post_init__(self) -> None:
        if OUTPUT_KIND.get(self.leaf) != self.output.kind:
            raise VaulteroError(f"leaf {self.leaf!r} does not spend a {self.output.kind} output")
        check_sats(self.value, name="value")
        for out in self.outputs:
            check_sats(out.value, name="output value", allow_zero=True)
        if sum(out.value for out in self.outputs) > self.value:
            raise InvalidAmountError(f"outputs spend more than the input of {self.value} sats")
        if not isinstance(self.sequence, int) or not 0 <= self.sequence <= 0xFFFFFFFF:
            raise VaulteroError(
                f"sequence must be a 32-bit unsigned integer, got {self.sequence!r}"
            )
        if self.collateral is not None and (
            self.leaf != "collateral_lock"
            or len(self.outputs) != 2
            or self.outputs[1].script_pubkey != self.collateral.script_pubkey
        ):
            raise VaulteroError("collateral must be the output TX_1 pays at index 1")
        tx = self.transaction()
        object.__setattr__(self, "unsigned_tx", tx.serialize(with_witness=False))
        prevout = TxOut(self.value, self.output.script_pubkey)
        digest = taproot_sighash(
            tx, 0, (prevout,), hash_type=SIGHASH_DEFAULT, leaf_script=self.leaf_script
        )
        object.__setattr__(self, "sighash", digest)
        object.__setattr__(self, "vsize", witnessed_vsize(len(self.unsigned_tx), self.witness_size))
        object.__setattr__(self, "fee", self.value - sum(o.value for o in self.outputs))

    @property
    def leaf_index(self) -> int:
        return LEAF_INDEX[self.leaf]

    @property
    def leaf_script(self) -> bytes:
        return self.output.leaves[self.leaf_index]

    @property
    def control_block(self) -> bytes:
        return self.output.control_block(self.leaf_index)

    @property
    def spent_script_pubkey(self) -> bytes:
        return self.output.script_pubkey

    @property
    def txid(self) -> str:
        return hashlib.sha256(hashlib.sha256(self.unsigned_tx).digest()).digest()[::-1].hex()

    @property
    def witness_size(self) -> int:
        items = [*WITNESS_ITEM_SIZES[self.leaf], len(self.leaf_script), len(self.control_block)]
        return len(compact_size(len(items))) + sum(len(compact_size(n)) + n for n in items)

    def transaction(self) -> Transaction:
        """The unsigned transaction (no witness)."""
        txin = TxIn(self.outpoint.txid, self.outpoint.vout, sequence=self.sequence)
        return Transaction(TX_VERSION, (txin,), self.outputs, TX_LOCKTIME)

    def with_witness(self, stack: list[bytes]) -> str:
        """The transaction hex with `stack` as the input's witness, unchecked.

        `finalize` is the checked way; this is for callers assembling witnesses themselves."""
        return self.transaction().with_witness(0, tuple(stack)).to_hex()


def witnessed_vsize(unsigned_size: int, witness_size: int) -> int:
    """vsize = ceil(weight / 4), weight = 4 * base size + marker, flag and witness bytes."""
    weight = 4 * unsigned_size + 2 + witness_size
    return (weight + 3) // 4


def key_path_address(key: str, network: str) -> str:
    """The P2TR key-path address of an x-only key (BIP-86 style tweak, no script tree)."""
    output_key, _ = tweak_public_key(parse_xonly_key(key, name="key"), None)
    return taproot_address(output_key, network)


def check_feerate(feerate_sat_vb: object) -> int:
    if isinstance(feerate_sat_vb, bool) or not isinstance(feerate_sat_vb, int):
        raise InvalidAmountError(
            f"feerate_sat_vb must be an integer number of sat/vB, got {feerate_sat_vb!r}"
        )
    if feerate_sat_vb < 1:
        raise InvalidAmountError(f"feerate_sat_vb must be at least 1, got {feerate_sat_vb}")
    return feerate_sat_vb


def _check_not_dust(value: int, script_pubkey: bytes) -> None:
    limit = dust_limit(script_pubkey)
    if value < limit:
        raise DustOutputError(f"output of {value} sats is below the dust limit of {limit} sats")


def _sweep_all(
    *,
    leaf: LeafName,
    output: TaprootOutput,
    outpoint: Outpoint,
    value: int,
    destination: str,
    feerate_sat_vb: int,
    sequence: int,
    network: str,
) -> SpendTemplate:
    """One input, one output paying `value - fee` to `destination`."""
    net = check_network(network)
    check_sats(value, name="value")
    feerate = check_feerate(feerate_sat_vb)
    script_pubkey = address_to_script_pubkey(destination, net)
    # Size with a placeholder amount: an output's amount is 8 bytes whatever it is.
    sizing = SpendTemplate(leaf, output, outpoint, value, sequence, (TxOut(0, script_pubkey),))
    fee = feerate * sizing.vsize
    if fee >= value:
        raise FeeExceedsInputError(f"fee of {fee} sats exceeds the input of {value} sats")
    _check_not_dust(value - fee, script_pubkey)
    return SpendTemplate(
        leaf, output, outpoint, value, sequence, (TxOut(value - fee, script_pubkey),)
    )


def _require_kind(output: TaprootOutput, kind: str, name: str) -> None:
    if not isinstance(output, TaprootOutput) or output.kind != kind:
        raise VaulteroError(f"{name} must be a {kind} TaprootOutput")


def build_borrower_exit(
    *,
    escrow: TaprootOutput,
    outpoint: Outpoint,
    value: int,
    destination: str | None = None,
    feerate_sat_vb: int,
    network: str,
) -> SpendTemplate:
    """Escrow leaf0: everything less the fee back to the borrower, valid once `t0_btc` blocks
    have passed since the escrow confirmed. Default destination: the borrower key's P2TR."""
    _require_kind(escrow, "escrow", "escrow")
    return _sweep_all(
        leaf="escrow_exit",
        output=escrow,
        outpoint=outpoint,
        value=value,
        destination=destination or key_path_address(escrow.borrower_key, network),
        feerate_sat_vb=feerate_sat_vb,
        sequence=escrow.csv_blocks,
        network=network,
    )


def build_collateral_release(
    *,
    collateral: TaprootOutput,
    outpoint: Outpoint,
    value: int,
    destination: str | None = None,
    feerate_sat_vb: int,
    network: str,
) -> SpendTemplate:
    """Collateral leaf1: the borrower takes the collateral back with `P_L` once repaid."""
    _require_kind(collateral, "collateral", "collateral")
    return _sweep_all(
        leaf="collateral_release",
        output=collateral,
        outpoint=outpoint,
        value=value,
        destination=destination or key_path_address(collateral.borrower_key, network),
        feerate_sat_vb=feerate_sat_vb,
        sequence=SEQUENCE_RBF,
        network=network,
    )


def build_lender_sweep(
    *,
    collateral: TaprootOutput,
    outpoint: Outpoint,
    value: int,
    destination: str | None = None,
    feerate_sat_vb: int,
    network: str,
) -> SpendTemplate:
    """Collateral leaf0: the lender takes the collateral once `t1_btc` blocks have passed."""
    _require_kind(collateral, "collateral", "collateral")
    return _sweep_all(
        leaf="lender_sweep",
        output=collateral,
        outpoint=outpoint,
        value=value,
        destination=destination or key_path_address(collateral.lender_key, network),
        feerate_sat_vb=feerate_sat_vb,
        sequence=collateral.csv_blocks,
        network=network,
    )


def build_collateral_lock(
    *,
    escrow: TaprootOutput,
    outpoint: Outpoint,
    value: int,
    lender_fee_address: str | None = None,
    collateral: TaprootOutput,
    loan_sats: int,
    origination_fee_sats: int,
    feerate_sat_vb: int,
    network: str,
) -> SpendTemplate:
    """TX_1: escrow leaf1 → [0] origination fee to the lender, [1] collateral to `output_1`.

    Remainder policy: the miner fee is `feerate * vsize` exactly, the fee output is exactly the
    origination fee, and everything else of the escrow goes to the collateral output, so an
    over-funded escrow comes back to the borrower on release (or to the lender on default).
    The escrow must cover `loan_sats` + origination fee + miner fee."""
    _require_kind(escrow, "escrow", "escrow")
    _require_kind(collateral, "collateral", "collateral")
    if (collateral.borrower_key, collateral.lender_key) != (escrow.borrower_key, escrow.lender_key):
        raise VaulteroError("escrow and collateral outputs are for different keys")
    net = check_network(network)
    check_sats(value, name="value")
    check_sats(loan_sats, name="loan_sats")
    check_sats(origination_fee_sats, name="origination_fee_sats")
    feerate = check_feerate(feerate_sat_vb)
    fee_script = address_to_script_pubkey(
        lender_fee_address or key_path_address(escrow.lender_key, net), net
    )
    _check_not_dust(origination_fee_sats, fee_script)
    placeholder = (TxOut(origination_fee_sats, fee_script), TxOut(0, collateral.script_pubkey))
    sizing = SpendTemplate("collateral_lock", escrow, outpoint, value, SEQUENCE_RBF, placeholder)
    miner_fee = feerate * sizing.vsize
    if miner_fee >= value:
        raise FeeExceedsInputError(f"fee of {miner_fee} sats exceeds the input of {value} sats")
    needed = loan_sats + origination_fee_sats + miner_fee
    if value < needed:
        raise InsufficientFundsError(
            f"escrow of {value} sats is below collateral {loan_sats} + origination fee "
            f"{origination_fee_sats} + miner fee {miner_fee} = {needed} sats"
        )
    collateral_value = value - origination_fee_sats - miner_fee
    outputs = (
        TxOut(origination_fee_sats, fee_script),
        TxOut(collateral_value, collateral.script_pubkey),
    )
    return SpendTemplate(
        "collateral_lock", escrow, outpoint, value, SEQUENCE_RBF, outputs, collateral
    )


def collateral_lock_vsize(*, lender_fee_script_pubkey: bytes) -> int:
    """TX_1's witnessed vsize; it depends on no key, hash or timelock, only the fee output."""
    dummy_key = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
    terms = {"borrower_key": dummy_key, "lender_key": dummy_key, "preimage_hash": "00" * 32}
    escrow = escrow_output(csv_blocks=1, **terms)
    collateral = collateral_output(csv_blocks=1, **terms)
    template = SpendTemplate(
        "collateral_lock",
        escrow,
        Outpoint("11" * 32, 0),
        1,
        SEQUENCE_RBF,
        (TxOut(0, lender_fee_script_pubkey), TxOut(0, collateral.script_pubkey)),
    )
    return template.vsize
