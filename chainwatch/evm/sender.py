"""Send contract transactions from a local key: check the chain, simulate, sign, wait.

Every transaction is simulated (eth_estimateGas) before it is signed, so a call that would
revert raises `ContractRevert` with the contract's reason and nothing reaches the chain.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_account.types import TransactionDictType
from eth_typing import ChecksumAddress
from web3 import Web3
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.types import TxParams, TxReceipt, Wei

from chainwatch.evm.errors import (
    ChainIdMismatch,
    ContractRevert,
    InvalidInput,
    NodeRejected,
    decode_revert_data,
)

PRIVATE_KEY_PATTERN = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
# Headroom over the estimate: the state a transaction runs on may move between the two.
GAS_MARGIN_PERCENT = 20
RECEIPT_TIMEOUT_SECONDS = 120.0


def parse_private_key(private_key: str) -> LocalAccount:
    """A 32-byte hex key as an account; a typed error (never echoing the key) otherwise."""
    if not isinstance(private_key, str) or not PRIVATE_KEY_PATTERN.match(private_key.strip()):
        raise InvalidInput("the EVM private key must be 32 bytes of hex (64 hex digits)")
    try:
        account: LocalAccount = Account.from_key(private_key.strip())
    except ValueError as exc:
        raise InvalidInput("the EVM private key is not a valid secp256k1 key") from exc
    return account


def check_chain_id(w3: Web3, expected_chain_id: int) -> int:
    actual = int(w3.eth.chain_id)
    if actual != expected_chain_id:
        raise ChainIdMismatch(expected=expected_chain_id, actual=actual)
    return actual


def _revert_data(exc: ContractLogicError) -> str | None:
    data = exc.data
    if isinstance(data, str):
        return data
    if isinstance(data, dict):
        inner = data.get("data")
        return inner if isinstance(inner, str) else None
    return None


class TransactionSender:
    """Signs with one local key on one chain (checked once, before the first transaction)."""

    def __init__(
        self,
        w3: Web3,
        private_key: str,
        *,
        expected_chain_id: int,
        error_abis: Iterable[list[dict[str, Any]]] = (),
    ) -> None:
        self.w3 = w3
        self._account = parse_private_key(private_key)
        self.expected_chain_id = expected_chain_id
        self._error_abis = list(error_abis)
        self._chain_checked = False

    @property
    def address(self) -> ChecksumAddress:
        return self._account.address

    def ensure_chain(self) -> None:
        if not self._chain_checked:
            check_chain_id(self.w3, self.expected_chain_id)
            self._chain_checked = True

    def send(
        self, call: ContractFunction | ContractConstructor, *, value: int = 0, label: str = ""
    ) -> TxReceipt:
        """Simulate, sign, send and wait; raise ContractRevert if it would or did revert."""
        self.ensure_chain()
        name = label or _call_name(call)
        params: TxParams = {
            "from": self._account.address,
            "value": Wei(value),
            "chainId": self.expected_chain_id,
        }
        try:
            # "pending": the transaction runs in the next block, and deadlines count blocks.
            estimate = call.estimate_gas(params, block_identifier="pending")
        except ContractLogicError as exc:
            data = _revert_data(exc)
            raise ContractRevert(name, self._reason(data, exc), data) from exc
        except Web3RPCError as exc:
            raise NodeRejected(f"{name}: the node refused the transaction: {exc.message}") from exc
        params["gas"] = estimate * (100 + GAS_MARGIN_PERCENT) // 100
        params["nonce"] = self.w3.eth.get_transaction_count(self._account.address, "pending")
        transaction = call.build_transaction(params)
        signed = self._account.sign_transaction(cast(TransactionDictType, transaction))
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_SECONDS)
        if receipt["status"] != 1:
            raise ContractRevert(name, self._replay_reason(transaction, receipt))
        return receipt

    def _reason(self, data: str | None, exc: ContractLogicError) -> str:
        if data:
            return decode_revert_data(data, self._error_abis)
        return str(exc.message or "execution reverted")

    def _replay_reason(self, transaction: TxParams, receipt: TxReceipt) -> str:
        """Re-run a mined, failed transaction as a call to learn its reason."""
        kept = ("from", "to", "value", "data", "gas")
        replay = cast(TxParams, {k: v for k, v in transaction.items() if k in kept})
        try:
            self.w3.eth.call(replay, receipt["blockNumber"] - 1)
        except ContractLogicError as exc:
            return self._reason(_revert_data(exc), exc)
        return "reverted when mined (out of gas or state changed)"


def _call_name(call: ContractFunction | ContractConstructor) -> str:
    if isinstance(call, ContractFunction):
        return str(call.fn_name)
    return "constructor"
