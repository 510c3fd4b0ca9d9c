"""The four tapscript leaves of PROTOCOL.md, the two outputs built from them, and a parser
that recognises a leaf again from its bytes (for spends seen on chain or in a PSBT)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from bitcoinutils.script import Script

from vaultero.encoding import parse_hex
from vaultero.errors import InvalidCsvError
from vaultero.taproot import BIP341_NUMS, TaprootOutput, parse_xonly_key

MAX_CSV_BLOCKS: Final[int] = 0xFFFF

LeafName = Literal["escrow_exit", "collateral_lock", "collateral_release", "lender_sweep"]


def check_csv(csv_blocks: object) -> int:
    """A BIP-68 relative block count: 1..65535 (bit 22, time-based locks, is never set)."""
    if (
        not isinstance(csv_blocks, int)
        or isinstance(csv_blocks, bool)
        or not 1 <= csv_blocks <= MAX_CSV_BLOCKS
    ):
        raise InvalidCsvError(f"csv_blocks must be between 1 and 65535, got {csv_blocks!r}")
    return csv_blocks


def _to_bytes(tokens: list[str | int]) -> bytes:
    return bytes(Script(tokens).to_bytes())


def timelocked_leaf(csv_blocks: int, key: str) -> bytes:
    """`<csv> OP_CHECKSEQUENCEVERIFY OP_DROP <key> OP_CHECKSIG` (escrow exit, lender sweep)."""
    return _to_bytes([csv_blocks, "OP_CHECKSEQUENCEVERIFY", "OP_DROP", key, "OP_CHECKSIG"])


def collateral_lock_leaf(preimage_hash: str, lender_key: str, borrower_key: str) -> bytes:
    """Escrow leaf1: H_B's preimage and both signatures (lender checked first)."""
    return _to_bytes(
        [
            "OP_SHA256",
            preimage_hash,
            "OP_EQUALVERIFY",
            lender_key,
            "OP_CHECKSIG",
            borrower_key,
            "OP_CHECKSIGADD",
            "OP_2",
            "OP_NUMEQUALVERIFY",
            "OP_TRUE",
        ]
    )


def release_leaf(preimage_hash: str, borrower_key: str) -> bytes:
    """Collateral leaf1: H_L's preimage and the borrower's signature."""
    return _to_bytes(["OP_SHA256", preimage_hash, "OP_EQUALVERIFY", borrower_key, "OP_CHECKSIG"])


@dataclass(frozen=True)
class _Terms:
    internal_key: str
    borrower_key: str
    lender_key: str
    preimage_hash: str
    csv_blocks: int


def _terms(
    borrower_key: str, lender_key: str, preimage_hash: str, csv_blocks: int, internal_key: str
) -> _Terms:
    return _Terms(
        internal_key=parse_xonly_key(internal_key, name="internal_key").hex(),
        borrower_key=parse_xonly_key(borrower_key, name="borrower_key").hex(),
        lender_key=parse_xonly_key(lender_key, name="lender_key").hex(),
        preimage_hash=parse_hex(preimage_hash, name="preimage_hash", length=32).hex(),
        csv_blocks=check_csv(csv_blocks),
    )


def escrow_output(
    *,
    borrower_key: str,
    lender_key: str,
    preimage_hash: str,
    csv_blocks: int,
    internal_key: str = BIP341_NUMS,
) -> TaprootOutput:
    """`output_0`: leaf0 borrower exit after `t0_btc`, leaf1 collateral lock with `H_B`."""
    t = _terms(borrower_key, lender_key, preimage_hash, csv_blocks, internal_key)
    leaves = (
        timelocked_leaf(t.csv_blocks, t.borrower_key),
        collateral_lock_leaf(t.preimage_hash, t.lender_key, t.borrower_key),
    )
    return TaprootOutput(
        "escrow",
        t.internal_key,
        t.borrower_key,
        t.lender_key,
        t.preimage_hash,
        t.csv_blocks,
        leaves,
    )


def collateral_output(
    *,
    borrower_key: str,
    lender_key: str,
    preimage_hash: str,
    csv_blocks: int,
    internal_key: str = BIP341_NUMS,
) -> TaprootOutput:
    """`output_1`: leaf0 lender sweep after `t1_btc`, leaf1 release to the borrower with `H_L`."""
    t = _terms(borrower_key, lender_key, preimage_hash, csv_blocks, internal_key)
    leaves = (
        timelocked_leaf(t.csv_blocks, t.lender_key),
        release_leaf(t.preimage_hash, t.borrower_key),
    )
    return TaprootOutput(
        "collateral",
        t.internal_key,
        t.borrower_key,
        t.lender_key,
        t.preimage_hash,
        t.csv_blocks,
        leaves,
    )


# --- recognising a leaf -------------------------------------------------------------------
@dataclass(frozen=True)
class ParsedLeaf:
    """What a leaf script commits to. Fields a leaf does not contain are None."""

    name: LeafName
    borrower_key: str | None
    lender_key: str | None
    preimage_hash: str | None
    csv_blocks: int | None

    @property
    def leaf_index(self) -> int:
        return 0 if self.name in ("escrow_exit", "lender_sweep") else 1


def _tokens(script: bytes) -> list[int | bytes] | None:
    """Opcodes as ints and direct pushes (1..75 bytes) as bytes; None on anything else."""
    out: list[int | bytes] = []
    i = 0
    while i < len(script):
        op = script[i]
        i += 1
        if 1 <= op <= 75:
            if i + op > len(script):
                return None
            out.append(script[i : i + op])
            i += op
        elif op in (0x4C, 0x4D, 0x4E):
            return None
        else:
            out.append(op)
    return out


def _script_num(token: int | bytes) -> int | None:
    if isinstance(token, int):
        return token - 0x50 if 0x51 <= token <= 0x60 else None
    if not token or token[-1] & 0x80:
        return None  # empty or negative
    return int.from_bytes(token, "little")


def parse_leaf(script: bytes, *, escrow: bool | None = None) -> ParsedLeaf | None:
    """Recognise one of our four leaves, byte for byte (it is rebuilt and compared).

    The two timelocked leaves have the same shape: `escrow=False` names it `lender_sweep` (key
    read as the lender's), otherwise `escrow_exit` (key read as the borrower's).
    """
    tokens = _tokens(script)
    if tokens is None:
        return None
    parsed: ParsedLeaf | None = None
    match tokens:
        case [csv, 0xB2, 0x75, bytes() as key, 0xAC] if len(key) == 32:
            blocks = _script_num(csv)
            if blocks is None or not 1 <= blocks <= MAX_CSV_BLOCKS:
                return None
            if escrow is False:
                parsed = ParsedLeaf("lender_sweep", None, key.hex(), None, blocks)
            else:
                parsed = ParsedLeaf("escrow_exit", key.hex(), None, None, blocks)
            rebuilt = timelocked_leaf(blocks, key.hex())
        case [0xA8, bytes() as h, 0x88, bytes() as lk, 0xAC, bytes() as bk, 0xBA, 0x52, 0x9D, 0x51]:
            if not (len(h) == len(lk) == len(bk) == 32):
                return None
            parsed = ParsedLeaf("collateral_lock", bk.hex(), lk.hex(), h.hex(), None)
            rebuilt = collateral_lock_leaf(h.hex(), lk.hex(), bk.hex())
        case [0xA8, bytes() as h, 0x88, bytes() as bk, 0xAC]:
            if not (len(h) == len(bk) == 32):
                return None
            parsed = ParsedLeaf("collateral_release", bk.hex(), None, h.hex(), None)
            rebuilt = release_leaf(h.hex(), bk.hex())
        case _:
            return None
    return parsed if rebuilt == script else None


def output_from_leaves(internal_key: bytes, leaves: tuple[bytes, bytes]) -> TaprootOutput | None:
    """Rebuild the TaprootOutput whose tree is exactly `leaves`, or None if it is not ours."""
    first = parse_leaf(leaves[1])
    if first is None:
        return None
    if first.name == "collateral_lock":
        exit_leaf = parse_leaf(leaves[0], escrow=True)
        if (
            exit_leaf is None
            or exit_leaf.csv_blocks is None
            or first.preimage_hash is None
            or exit_leaf.borrower_key != first.borrower_key
        ):
            return None
        out = escrow_output(
            borrower_key=str(first.borrower_key),
            lender_key=str(first.lender_key),
            preimage_hash=first.preimage_hash,
            csv_blocks=exit_leaf.csv_blocks,
            internal_key=internal_key.hex(),
        )
    elif first.name == "collateral_release":
        sweep = parse_leaf(leaves[0], escrow=False)
        if sweep is None or sweep.csv_blocks is None or first.preimage_hash is None:
            return None
        out = collateral_output(
            borrower_key=str(first.borrower_key),
            lender_key=str(sweep.lender_key),
            preimage_hash=first.preimage_hash,
            csv_blocks=sweep.csv_blocks,
            internal_key=internal_key.hex(),
        )
    else:
        return None
    return out if out.leaves == leaves else None
