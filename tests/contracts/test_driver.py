"""The driver refuses bad input with one typed error before anything reaches the chain."""

from __future__ import annotations

import json
from typing import Any

import pytest

from btcloan.dev.localnodes import ANVIL_DEFAULT_KEYS
from chainwatch.evm.driver import (
    BorrowerActions,
    LenderActions,
    LoanContracts,
    as_bytes32,
)
from chainwatch.evm.errors import ChainIdMismatch, ContractRevert, InvalidInput, decode_revert_data
from tests.contracts.conftest import BORROWER_BTC_PUBKEY, ESCROW_ADDRESS, ESCROW_TXID, Desk

pytestmark = pytest.mark.evm


def _good_request(desk: Desk) -> dict[str, Any]:
    return {
        "amount_wei": 5 * 10**15,
        "btc_address": ESCROW_ADDRESS,
        "btc_pubkey": BORROWER_BTC_PUBKEY,
        "preimage_hash": desk.secrets.hash_borrower,
        "escrow_txid": ESCROW_TXID,
        "escrow_vout": 0,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"amount_wei": 5 * 10**15 - 1}, "below the minimum"),
        ({"amount_wei": 1.5e16}, "integer number of wei"),
        ({"btc_address": "bcrt1p" + "q" * 55}, "62 to 64"),
        ({"btc_address": "bcrt1p" + "q" * 50 + "!!!!!!"}, "62 to 64"),
        ({"btc_pubkey": BORROWER_BTC_PUBKEY[:-2]}, "64 hex characters"),
        ({"btc_pubkey": "zz" * 32}, "64 hex characters"),
        ({"preimage_hash": b"\x01" * 31}, "32 bytes"),
        ({"escrow_txid": "ab" * 31}, "32 bytes"),
        ({"escrow_vout": -1}, "vout"),
        ({"escrow_vout": 2**32}, "vout"),
    ],
)
def test_request_loan_bad_input_sends_nothing(
    desk: Desk, change: dict[str, Any], message: str
) -> None:
    nonce = desk.nonce(desk.borrower.address)
    with pytest.raises(InvalidInput, match=message):
        desk.borrower.request_loan(**{**_good_request(desk), **change})
    assert desk.nonce(desk.borrower.address) == nonce
    assert desk.contracts.total_loans() == 0


def test_the_minimum_itself_is_accepted(desk: Desk) -> None:
    result = desk.borrower.request_loan(**_good_request(desk))
    assert desk.loan(result.loan_id).amount == 5 * 10**15


def test_other_actions_check_their_arguments(desk: Desk) -> None:
    loan_id = desk.request()
    nonce = desk.nonce(desk.lender.address)
    with pytest.raises(InvalidInput, match="32 bytes"):
        desk.lender.extend_offer(loan_id, preimage_hash_lender="00" * 33)
    with pytest.raises(InvalidInput, match="32 bytes"):
        desk.lender.associate_preimage_hash(loan_id, "not hex")
    with pytest.raises(InvalidInput, match="loan id"):
        desk.lender.withdraw_offer(-1)
    with pytest.raises(InvalidInput, match="64 hex characters"):
        desk.lender.update_btc_pubkey("02" + "ab" * 32)
    with pytest.raises(ContractRevert, match="loan 77 does not exist"):
        desk.lender.extend_offer(77, preimage_hash_lender=desk.secrets.hash_lender)
    with pytest.raises(InvalidInput, match="32 bytes"):
        desk.borrower.accept_offer(loan_id, b"short")
    assert desk.nonce(desk.lender.address) == nonce


def test_a_revert_carries_the_reason_and_sends_nothing(desk: Desk) -> None:
    loan_id = desk.offered()
    nonce = desk.nonce(desk.other_borrower.address)
    with pytest.raises(ContractRevert) as caught:
        desk.other_borrower.accept_offer(loan_id, desk.secrets.preimage_borrower)
    assert caught.value.function == "acceptLoanOffer"
    assert caught.value.reason == "caller is not the borrower"
    assert desk.nonce(desk.other_borrower.address) == nonce


def test_wrong_chain_is_refused_before_sending(desk: Desk) -> None:
    wrong = LoanContracts(
        desk.w3,
        loan_address=desk.deployed.loan_address,
        etherswap_address=desk.deployed.etherswap_address,
        chain_id=30,  # Rootstock mainnet, not this anvil
    )
    borrower = BorrowerActions(wrong, ANVIL_DEFAULT_KEYS[1])
    nonce = desk.nonce(borrower.address)
    with pytest.raises(ChainIdMismatch, match="serves chain id 31337, expected 30"):
        borrower.request_loan(**_good_request(desk))
    with pytest.raises(ChainIdMismatch):
        LenderActions(wrong, desk.deployed.lender_private_key).mark_defaulted(1)
    assert desk.nonce(borrower.address) == nonce
    assert desk.contracts.total_loans() == 0


@pytest.mark.parametrize("key", ["", "0x1234", "zz" * 32, "00" * 32])
def test_bad_private_key_is_refused_without_echoing_it(desk: Desk, key: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        BorrowerActions(desk.contracts, key)
    if key:
        assert key not in str(caught.value)


def test_as_bytes32_accepts_bytes_and_hex() -> None:
    assert as_bytes32("0x" + "ab" * 32, "x") == b"\xab" * 32
    assert as_bytes32("AB" * 32, "x") == b"\xab" * 32
    assert as_bytes32(b"\x01" * 32, "x") == b"\x01" * 32


def test_decode_revert_data() -> None:
    error_string = (
        "0x08c379a0" + "20".rjust(64, "0") + "03".rjust(64, "0") + b"bad".hex().ljust(64, "0")
    )
    assert decode_revert_data(error_string) == "bad"
    assert decode_revert_data("0x4e487b71" + "11".rjust(64, "0")) == "panic 0x11"
    assert decode_revert_data(None) == "execution reverted without a reason"
    assert "unknown error 0xdeadbeef" in decode_revert_data("0xdeadbeef")


def test_reads_at_a_past_block(desk: Desk) -> None:
    from btcloan.dev.contracts import TEST_LENDER_BTC_PUBKEY
    from chainwatch.evm.driver import LoanStatus

    loan_id = desk.request()
    requested_at = desk.block()
    desk.lender.update_btc_pubkey("ab" * 32)
    desk.lender.extend_offer(loan_id, preimage_hash_lender=desk.secrets.hash_lender)
    contracts = desk.contracts
    assert contracts.get_loan(loan_id, block=requested_at).status is LoanStatus.REQUESTED
    assert contracts.get_loan(loan_id).status is LoanStatus.OFFERED
    assert contracts.lender_btc_pubkey(block=requested_at) == TEST_LENDER_BTC_PUBKEY
    assert contracts.lender_btc_pubkey() == "ab" * 32
    assert contracts.total_loans(block=requested_at - 1) == 0
    assert contracts.loan_id_of(desk.borrower.address, block=requested_at) == loan_id
    assert contracts.get_loan_parameters(loan_id, block=requested_at).t_borrower == 5
    assert contracts.timelock_parameters(block=requested_at) == desk.params


def test_batched_reads_equal_the_reads_one_by_one(desk: Desk) -> None:
    """getLoan of many loans in one JSON-RPC batch, decoded by hand, and the request snapshot
    in one batch: the same values as web3's own calls and ABI decoder, at a past block."""
    first = desk.request()
    requested_at = desk.block()
    desk.lender.extend_offer(first, preimage_hash_lender=desk.secrets.hash_lender)
    contracts = desk.contracts
    now = desk.block()
    missing = first + 1000  # never requested: the contract's zero struct
    states = contracts.get_loans([first, missing], block=now, per_request=1)
    assert states == {first: contracts.get_loan(first), missing: contracts.get_loan(missing)}
    assert not states[missing].exists
    assert contracts.get_loans([first], block=requested_at)[first] == contracts.get_loan(
        first, block=requested_at
    )
    state, terms, timelocks, lender_key = contracts.request_snapshot(first, block=requested_at)
    assert state == contracts.get_loan(first, block=requested_at)
    assert terms == contracts.get_loan_parameters(first, block=requested_at)
    assert timelocks == contracts.timelock_parameters(block=requested_at)
    assert lender_key == contracts.lender_btc_pubkey(block=requested_at)


def test_the_service_client_asks_the_chain_id_once(desk: Desk, settings: Any) -> None:
    """web3 asks eth_chainId before every contract call; the service's client asks it when it
    is built (the check) and never again."""
    from web3 import Web3

    from chainwatch.client import web3_provider

    provider = web3_provider(desk.w3.provider.endpoint_uri, timeout=30)  # type: ignore[attr-defined]
    methods: list[str] = []
    sessions = provider._request_session_manager
    post = sessions.make_post_request

    def counting(uri: Any, data: Any, **kwargs: Any) -> Any:  # what goes over HTTP
        methods.append(json.loads(data)["method"])
        return post(uri, data, **kwargs)

    sessions.make_post_request = counting  # type: ignore[method-assign,assignment]
    contracts = LoanContracts.from_deployment(Web3(provider), desk.deployed.deployment)
    loan_id = desk.request()
    for _ in range(3):
        contracts.get_loan(loan_id)
        contracts.lender_btc_pubkey()
    assert methods.count("eth_call") == 6
    assert methods.count("eth_chainId") == 1
