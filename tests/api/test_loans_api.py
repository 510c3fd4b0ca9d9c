"""The loan endpoints: who may see and act on which loan, bad input, and what a loan shows.

(Endpoints that read a chain, such as parameters, the quote and collateral-tx with a built
TX_1, are exercised against real nodes in tests/integration.)
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from loans.models import BitcoinStage, LoanStatus
from tests.loans.conftest import loan_factory
from vaultero import key_path_address

pytestmark = pytest.mark.django_db


@pytest.fixture
def own_loan(wallet):
    return loan_factory(borrower_address=wallet.address)


@pytest.fixture
def other_loan():
    return loan_factory(borrower_address="0x" + "ee" * 20)


def _error(response, status_code: int) -> dict:
    assert response.status_code == status_code, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert {"code", "message", "details"} <= set(body["error"])
    return body["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/loans/",
        "/api/v1/loans/1/",
        "/api/v1/loans/1/collateral-tx",
        "/api/v1/loans/1/release-tx?address=x",
        "/api/v1/loans/1/exit-tx?address=x",
    ],
)
def test_anonymous_users_reach_no_loan(path):
    _error(APIClient().get(path), 401)


def test_anonymous_users_cannot_upload_a_signature():
    _error(APIClient().post("/api/v1/loans/1/borrower-signature", {}, format="json"), 401)


def test_a_borrower_lists_only_their_own_loans(borrower_client, own_loan, other_loan):
    response = borrower_client.get("/api/v1/loans/")
    assert response.status_code == 200
    assert [loan["id"] for loan in response.json()["results"]] == [own_loan.pk]


def test_an_operator_lists_every_loan_and_can_filter(operator_client, own_loan, other_loan):
    loan_factory(status=LoanStatus.ACTIVE)
    every = operator_client.get("/api/v1/loans/").json()
    assert every["count"] == 3
    active = operator_client.get("/api/v1/loans/?status=active").json()
    assert [loan["status"] for loan in active["results"]] == ["active"]


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("get", "/"),
        ("get", "/collateral-tx"),
        ("get", "/release-tx?address=bcrt1qxyz"),
        ("get", "/exit-tx?address=bcrt1qxyz"),
        ("post", "/borrower-signature"),
    ],
)
def test_another_borrowers_loan_does_not_exist_for_you(borrower_client, other_loan, method, suffix):
    path = f"/api/v1/loans/{other_loan.pk}{suffix}"
    if method == "post":
        response = borrower_client.post(path, {"signature": "00" * 64}, format="json")
    else:
        response = borrower_client.get(path)
    _error(response, 404)


def test_a_loan_shows_both_chains_its_next_step_and_money_as_strings(borrower_client, own_loan):
    body = borrower_client.get(f"/api/v1/loans/{own_loan.pk}/").json()
    assert body["status"] == "requested"
    assert body["bitcoin_stage"] == "awaiting_escrow"
    assert body["amount_wei"] == str(own_loan.amount_wei)
    assert body["onchain_id"] == str(own_loan.onchain_id)
    assert body["escrow"]["address"] == own_loan.escrow_address
    assert body["next_action"] == {
        "party": "borrower",
        "action": "fund the escrow outpoint named in the request",
    }
    assert body["timeline"] == []
    assert "preimage_lender_encrypted" not in body
    assert not any("preimage_lender" in key and key != "preimage_hash_lender" for key in body)


def test_an_offered_loan_shows_its_expiry_from_the_indexed_head(operator_client):
    from chainwatch.models import ChainCursor

    loan = loan_factory(status=LoanStatus.OFFERED, offer_block=100, timelock_borrower=50)
    ChainCursor.objects.create(chain_id=loan.chain_id, block_number=128, block_hash="0x" + "1" * 64)
    body = operator_client.get(f"/api/v1/loans/{loan.pk}/").json()
    (deadline,) = body["deadlines"]
    assert deadline["kind"] == "offer_expiry"
    assert deadline["block"] == 150
    # The indexer's cursor trails the head by EVM_CONFIRMATIONS (12): head 140, 9 blocks after
    # the next one.
    assert deadline["blocks_left"] == 150 - (128 + 12 + 1)
    assert body["next_action"]["party"] == "borrower"


@pytest.mark.parametrize(
    ("status", "fields", "deadline", "lender_action"),
    [
        (
            LoanStatus.ACTIVE,
            {"activation_block": 100, "loan_duration": 30},
            130,
            "mark the loan defaulted (the due block has passed)",
        ),
        (
            LoanStatus.OFFERED,
            {"offer_block": 100, "timelock_borrower": 30},
            130,
            "withdraw the expired offer",
        ),
    ],
)
def test_a_borrower_step_past_its_deadline_is_the_lenders_next(
    operator_client, status, fields, deadline, lender_action
):
    """Loan B in the demo said "next: borrower repay" long after its due block."""
    from chainwatch.models import ChainCursor

    loan = loan_factory(status=status, **fields)
    # Known head = cursor + EVM_CONFIRMATIONS (12). The last block to act in is `deadline`.
    cursor = ChainCursor.objects.create(
        chain_id=loan.chain_id, block_number=deadline - 12 - 1, block_hash="0x" + "1" * 64
    )
    body = operator_client.get(f"/api/v1/loans/{loan.pk}/").json()
    assert body["deadlines"][0]["blocks_left"] == 0
    assert body["next_action"]["party"] == "borrower"

    cursor.block_number += 1
    cursor.save()
    body = operator_client.get(f"/api/v1/loans/{loan.pk}/").json()
    assert body["deadlines"][0]["blocks_left"] == -1
    assert body["next_action"] == {"party": "lender", "action": lender_action}


def test_on_the_seed_contract_the_lenders_step_waits_a_block_after_the_deadline(operator_client):
    """The seed accepts while block < offer + t_B and withdraws only after offer + t_B: in
    block offer + t_B nobody can act, and the lender's step names the block it opens in."""
    from chainwatch.models import ChainCursor
    from loans.models import ContractFlavour

    loan = loan_factory(
        status=LoanStatus.OFFERED,
        offer_block=100,
        timelock_borrower=30,
        contract_flavour=ContractFlavour.SEED,
    )
    # Known head = cursor + 12; head 129: block 130 is past the borrower's last block (129).
    cursor = ChainCursor.objects.create(
        chain_id=loan.chain_id, block_number=129 - 12, block_hash="0x" + "1" * 64
    )
    body = operator_client.get(f"/api/v1/loans/{loan.pk}/").json()
    assert body["deadlines"][0]["blocks_left"] == -1
    assert body["next_action"] == {
        "party": "lender",
        "action": "withdraw the expired offer from block 131",
    }

    cursor.block_number += 1  # head 130: block 131, where withdrawLoanOffer no longer reverts
    cursor.save()
    body = operator_client.get(f"/api/v1/loans/{loan.pk}/").json()
    assert body["next_action"] == {"party": "lender", "action": "withdraw the expired offer"}


def test_tx1_before_the_deposit_is_a_conflict_with_the_reason(borrower_client, own_loan):
    error = _error(borrower_client.get(f"/api/v1/loans/{own_loan.pk}/collateral-tx"), 409)
    assert "TX_1 is not built yet" in error["message"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({}, "required"),
        ({"signature": "zz" * 64}, "128 hex characters"),
        ({"signature": "ab" * 63}, "128 hex characters"),
    ],
)
def test_a_malformed_signature_is_refused_per_field(borrower_client, own_loan, payload, reason):
    error = _error(
        borrower_client.post(
            f"/api/v1/loans/{own_loan.pk}/borrower-signature", payload, format="json"
        ),
        400,
    )
    assert reason in str(error["details"]["signature"])


def test_a_signature_before_tx1_exists_is_a_conflict(borrower_client, own_loan):
    error = _error(
        borrower_client.post(
            f"/api/v1/loans/{own_loan.pk}/borrower-signature",
            {"signature": "ab" * 64},
            format="json",
        ),
        409,
    )
    assert "not built yet" in error["message"]


def test_spends_need_an_address_and_say_why_they_are_not_possible_yet(borrower_client, own_loan):
    error = _error(borrower_client.get(f"/api/v1/loans/{own_loan.pk}/release-tx"), 400)
    assert error["details"] == {"address": ["required"]}
    error = _error(
        borrower_client.get(f"/api/v1/loans/{own_loan.pk}/release-tx?address=x&feerate=2"), 409
    )
    assert "release opens once repaid" in error["message"]
    error = _error(
        borrower_client.get(f"/api/v1/loans/{own_loan.pk}/exit-tx?address=x&feerate=2"), 409
    )
    assert "no unspent escrow output" in error["message"]
    error = _error(
        borrower_client.get(f"/api/v1/loans/{own_loan.pk}/exit-tx?address=x&feerate=abc"), 400
    )
    assert "feerate" in error["details"]


def test_quote_input_is_checked_field_by_field(api_client):
    error = _error(
        api_client.post(
            "/api/v1/escrow/quote",
            {"borrower_btc_pubkey": "12", "preimage_hash_borrower": "g" * 64, "amount_wei": "1.5"},
            format="json",
        ),
        400,
    )
    assert set(error["details"]) == {"borrower_btc_pubkey", "preimage_hash_borrower", "amount_wei"}


def test_an_escrow_exit_is_offered_for_an_unoffered_funded_loan(borrower_client, wallet, settings):
    loan = loan_factory(
        borrower_address=wallet.address,
        bitcoin_stage=BitcoinStage.ESCROW_CONFIRMED,
        escrow_value_sats=1_100_000,
        escrow_confirmed_height=200,
        escrow_internal_key="50929b74c1a04954b78b4b6035e97a5e078a5a0f28ec96d547bfee9ace803ac0",
        preimage_hash_borrower="aa" * 32,
    )
    destination = key_path_address(loan.borrower_btc_pubkey, "regtest")
    body = borrower_client.get(
        f"/api/v1/loans/{loan.pk}/exit-tx?address={destination}&feerate=2"
    ).json()
    assert body["destination"] == destination
    assert body["valid_from_height"] == 200 + loan.escrow_csv_blocks
    assert body["psbt"].startswith("cHNidP8")  # base64 of "psbt\xff"
    assert body["fee_sats"] > 0
