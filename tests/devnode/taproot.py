"""Taproot script-path outputs and spends for the conformance suite, built with bitcoin-utils
(transactions, BIP-341 digests) and coincurve (BIP-340 signatures), independent of the devnode."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import coincurve
from bitcoinutils.keys import PrivateKey, PublicKey
from bitcoinutils.script import Script
from bitcoinutils.setup import setup
from bitcoinutils.transactions import Transaction, TxInput, TxOutput, TxWitnessInput
from bitcoinutils.utils import ControlBlock

setup("regtest")


@dataclass(frozen=True)
class TaprootOutput:
    """A two-leaf tree: leaf0 `<csv> CSV DROP <key> CHECKSIG`, leaf1 `<key> CHECKSIG`."""

    secret: int
    csv_blocks: int

    @cached_property
    def _private(self) -> PrivateKey:
        return PrivateKey(secret_exponent=self.secret)

    @cached_property
    def _xonly(self) -> str:
        return self._private.get_public_key().to_x_only_hex()

    @cached_property
    def leaves(self) -> list[Script]:
        csv_leaf = Script(
            [self.csv_blocks, "OP_CHECKSEQUENCEVERIFY", "OP_DROP", self._xonly, "OP_CHECKSIG"]
        )
        return [csv_leaf, Script([self._xonly, "OP_CHECKSIG"])]

    @cached_property
    def _internal(self) -> PublicKey:
        # An internal key of a different secret: only the script paths are used here.
        return PrivateKey(secret_exponent=self.secret + 1).get_public_key()

    @cached_property
    def address(self) -> str:
        return str(self._internal.get_taproot_address(self.leaves).to_string())

    @cached_property
    def script_pubkey_hex(self) -> str:
        return str(self._internal.get_taproot_address(self.leaves).to_script_pub_key().to_hex())

    def spend(
        self,
        *,
        txid: str,
        vout: int,
        amount: int,
        destination_spk_hex: str,
        fee: int,
        leaf: int,
        corrupt_signature: bool = False,
    ) -> Transaction:
        """Spend through `leaf` (0: CSV path with nSequence = csv_blocks; 1: plain key path)."""
        sequence = self.csv_blocks if leaf == 0 else 0xFFFFFFFD
        txin = TxInput(txid, vout, sequence=sequence.to_bytes(4, "little"))
        txout = TxOutput(amount - fee, Script.from_raw(destination_spk_hex))
        tx = Transaction([txin], [txout], has_segwit=True, version=(2).to_bytes(4, "little"))
        address = self._internal.get_taproot_address(self.leaves)
        digest = tx.get_transaction_taproot_digest(
            0,
            [address.to_script_pub_key()],
            [amount],
            1,
            script=self.leaves[leaf],
        )
        key = coincurve.PrivateKey(self.secret.to_bytes(32, "big"))
        signature = bytearray(key.sign_schnorr(digest))
        if corrupt_signature:
            signature[10] ^= 0x01
        control = ControlBlock(self._internal, self.leaves, leaf, is_odd=address.is_odd())
        tx.witnesses.append(
            TxWitnessInput([signature.hex(), self.leaves[leaf].to_hex(), control.to_hex()])
        )
        return tx
