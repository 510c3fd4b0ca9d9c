"""BIP-341 commitments: leaf and branch hashes, the key tweak, control blocks, outputs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cache
from typing import Final, Literal, TypeAlias

from coincurve import PublicKeyXOnly

from vaultero.encoding import p2tr_script_pubkey, parse_hex, taproot_address
from vaultero.errors import InvalidKeyError, VaulteroError
from vaultero.txcodec import var_bytes

LEAF_VERSION_TAPSCRIPT: Final[int] = 0xC0

# x = sha256 of the uncompressed encoding of G: provably nobody knows its discrete log.
BIP341_NUMS: Final[str] = "50929b74c1a04954b78b4b6035e97a5e078a5a0f28ec96d547bfee9ace803ac0"
# The seed's tools used this mistyped copy of the NUMS key. It is a valid point that nobody can
# prove unspendable: recognise and spend such outputs, never propose it for a new loan.
SEED_INTERNAL_KEY: Final[str] = "50929b74c1a04954b78b4b60c595c211f8b853e6e84bfa2be95712a7b0dd59e6"

OutputKind = Literal["escrow", "collateral"]


@cache
def _tag_prefix(tag: str) -> bytes:
    tag_hash = hashlib.sha256(tag.encode()).digest()
    return tag_hash + tag_hash


def tagged_hash(tag: str, data: bytes) -> bytes:
    return hashlib.sha256(_tag_prefix(tag) + data).digest()


def leaf_hash(script: bytes, leaf_version: int = LEAF_VERSION_TAPSCRIPT) -> bytes:
    return tagged_hash("TapLeaf", bytes([leaf_version]) + var_bytes(script))


def branch_hash(left: bytes, right: bytes) -> bytes:
    a, b = (left, right) if left < right else (right, left)
    return tagged_hash("TapBranch", a + b)


def parse_xonly_key(value: str | bytes, *, name: str) -> bytes:
    """32 bytes that are the x coordinate of a point on secp256k1."""
    raw = parse_hex(value, name=name, length=32)
    try:
        PublicKeyXOnly(raw)
    except ValueError:
        raise InvalidKeyError(f"{name} is not a valid x-only public key") from None
    return raw


def tweak_public_key(internal_key: bytes, merkle_root: bytes | None) -> tuple[bytes, int]:
    """The BIP-341 output key Q = P + int(TapTweak(P || root))·G, and the parity of Q."""
    tweak = tagged_hash("TapTweak", internal_key + (merkle_root or b""))
    point = PublicKeyXOnly(internal_key)
    try:
        point.tweak_add(tweak)
    except ValueError:  # pragma: no cover - probability ~2^-128
        raise InvalidKeyError("the taproot tweak produced an invalid key") from None
    return point.format(), int(point.parity)


# A script tree as in the BIP-341 wallet vectors: a leaf (script, leaf version) or a pair.
ScriptTree: TypeAlias = "tuple[bytes, int] | tuple[ScriptTree, ScriptTree]"


@dataclass(frozen=True)
class TreeCommitment:
    """Leaf hashes in tree order, each leaf's merkle path (bottom up), and the root."""

    leaves: tuple[tuple[bytes, int], ...]
    leaf_hashes: tuple[bytes, ...]
    paths: tuple[tuple[bytes, ...], ...]
    merkle_root: bytes


def commit_tree(tree: ScriptTree) -> TreeCommitment:
    """Merkle-commit a script tree (depth-first, leaves numbered left to right)."""

    def walk(
        node: ScriptTree,
    ) -> tuple[list[tuple[bytes, int]], list[bytes], list[list[bytes]], bytes]:
        first, second = node
        if isinstance(first, bytes) and isinstance(second, int):
            h = leaf_hash(first, second)
            return [(first, second)], [h], [[]], h
        if isinstance(first, bytes | int) or isinstance(second, bytes | int):
            raise VaulteroError("a script tree node is a (script, version) leaf or a pair")
        l_leaves, l_hashes, l_paths, l_root = walk(first)
        r_leaves, r_hashes, r_paths, r_root = walk(second)
        paths = [[*p, r_root] for p in l_paths] + [[*p, l_root] for p in r_paths]
        return l_leaves + r_leaves, l_hashes + r_hashes, paths, branch_hash(l_root, r_root)

    leaves, hashes, paths, root = walk(tree)
    return TreeCommitment(tuple(leaves), tuple(hashes), tuple(tuple(p) for p in paths), root)


def control_block(
    internal_key: bytes, parity: int, path: tuple[bytes, ...], leaf_version: int
) -> bytes:
    return bytes([leaf_version | parity]) + internal_key + b"".join(path)


@dataclass(frozen=True)
class TaprootOutput:
    """A script-path-only taproot output with our two-leaf tree `[leaf0, leaf1]`.

    `kind` and the loan terms say which of the two protocol outputs it is, so that spends can
    be built and checked from it alone. Derived fields are computed once, at construction.
    """

    kind: OutputKind
    internal_key: str
    borrower_key: str
    lender_key: str
    preimage_hash: str
    csv_blocks: int
    leaves: tuple[bytes, bytes]
    output_key: str = field(init=False)
    parity: int = field(init=False)
    merkle_root: bytes = field(init=False)
    leaf_hashes: tuple[bytes, bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        internal = bytes.fromhex(self.internal_key)
        h0, h1 = leaf_hash(self.leaves[0]), leaf_hash(self.leaves[1])
        root = branch_hash(h0, h1)
        output_key, parity = tweak_public_key(internal, root)
        object.__setattr__(self, "output_key", output_key.hex())
        object.__setattr__(self, "parity", parity)
        object.__setattr__(self, "merkle_root", root)
        object.__setattr__(self, "leaf_hashes", (h0, h1))

    @property
    def script_pubkey(self) -> bytes:
        return p2tr_script_pubkey(bytes.fromhex(self.output_key))

    def address(self, network: str) -> str:
        return taproot_address(bytes.fromhex(self.output_key), network)

    def leaf_hash(self, leaf_index: int) -> bytes:
        return self.leaf_hashes[_check_leaf_index(leaf_index)]

    def control_block(self, leaf_index: int) -> bytes:
        sibling = self.leaf_hashes[1 - _check_leaf_index(leaf_index)]
        return control_block(
            bytes.fromhex(self.internal_key), self.parity, (sibling,), LEAF_VERSION_TAPSCRIPT
        )


def _check_leaf_index(leaf_index: int) -> int:
    if leaf_index not in (0, 1):
        raise VaulteroError(f"leaf_index must be 0 or 1, got {leaf_index!r}")
    return leaf_index
