"""The borrower's whole flow as a browser dApp runs it against the API (docs/dapp.md), from an
origin named in CORS_ALLOWED_ORIGINS, on both contract flavours: sign in, parameters, quote,
fund, requestLoan, TX_1 to pre-sign, upload, accept, repay under the stored H_L, release.

Every answer must carry the dApp's origin. With BTCLOAN_DAPP_CAPTURE=<file> the requests and
answers are written there as JSON (what docs/dapp.md's examples were taken from).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from rest_framework.test import APIClient

import vaultero
from btcloan.dev.localnodes import ANVIL_DEFAULT_KEYS
from chainwatch.evm.flavour import ContractFlavour
from tests.integration.conftest import NETWORK, Desk

pytestmark = [pytest.mark.evm, pytest.mark.bitcoin_node, pytest.mark.slow]

DAPP = "http://localhost:3000"  # where the seed's dApp runs


@pytest.fixture(params=list(ContractFlavour))
def flavour(request: pytest.FixtureRequest) -> ContractFlavour:
    return ContractFlavour(request.param)


class Dapp:
    """The browser side: every call with the dApp's Origin, the token once signed in."""

    def __init__(self, record: list[dict[str, Any]]) -> None:
        self.client = APIClient()
        self.record = record

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, **query: Any) -> Any:
        send: Callable[..., Any] = getattr(self.client, method.lower())
        if method == "GET":
            answer = send(path, query, HTTP_ORIGIN=DAPP)
        else:
            answer = send(path, body, format="json", HTTP_ORIGIN=DAPP)
        assert answer["access-control-allow-origin"] == DAPP
        payload = answer.json() if answer.content else None
        self.record.append(
            {
                "request": f"{method} {path}",
                "query": query,
                "body": body,
                "status": answer.status_code,
                "answer": payload,
            }
        )
        return answer.status_code, payload

    def ok(self, method: str, path: str, body: dict[str, Any] | None = None, **query: Any) -> Any:
        status, payload = self.call(method, path, body, **query)
        assert status in (200, 201), payload
        return payload


def test_the_borrowers_flow_through_the_api(desk: Desk, settings: Any, flavour: str) -> None:
    settings.CORS_ALLOWED_ORIGINS = [DAPP]
    record: list[dict[str, Any]] = []
    dapp = Dapp(record)
    borrower = desk.borrower()
    account = Account.from_key(ANVIL_DEFAULT_KEYS[1])

    # 1. Sign in with the wallet (EIP-4361).
    nonce = dapp.ok("POST", "/api/v1/auth/nonce", {"address": account.address})
    signature = account.sign_message(encode_defunct(text=nonce["message"])).signature.hex()
    login = dapp.ok(
        "POST", "/api/v1/auth/login", {"message": nonce["message"], "signature": signature}
    )
    dapp.client.credentials(HTTP_AUTHORIZATION=f"Bearer {login['token']}")

    # 2. Parameters and the escrow quote; the wallet checks the address itself.
    parameters = dapp.ok("GET", "/api/v1/parameters")
    quote = dapp.ok(
        "POST",
        "/api/v1/escrow/quote",
        {
            "borrower_btc_pubkey": borrower.btc_key,
            "preimage_hash_borrower": borrower.preimage_hash,
            "amount_wei": str(10**16),
        },
    )
    assert quote["lender_btc_pubkey"] == parameters["lender_btc_pubkey"]
    derived = vaultero.escrow_output(
        borrower_key=borrower.btc_key,
        lender_key=quote["lender_btc_pubkey"],
        preimage_hash=borrower.preimage_hash,
        csv_blocks=quote["csv_blocks"],
        internal_key=quote["internal_key"],
    ).address(NETWORK)
    assert derived == quote["escrow_address"]

    # 3. Fund the escrow (the deposit the quote asks, not the seed dApp's amount + 500 sats),
    #    then requestLoan from the wallet with the quote's arguments.
    txid, vout = desk.fund(quote["escrow_address"], quote["deposit"]["total_sats"] + 1_000)
    desk.mine_btc(3)
    request = quote["request_loan"]
    onchain_id = borrower.actions.request_loan(
        amount_wei=int(request["amount"]),
        btc_address=request["btcAddress"],
        btc_pubkey=request["btcPubkey"],
        preimage_hash=request["preimageHashBorrower"],
        escrow_txid=txid,
        escrow_vout=vout,
    ).loan_id

    # 4. The loan appears in the list (the API's id, not the on-chain one).
    def mine() -> list[dict[str, Any]]:
        return [
            row
            for row in dapp.ok("GET", "/api/v1/loans/")["results"]
            if row["onchain_id"] == str(onchain_id)
        ]

    desk.until(lambda: bool(mine()))
    (listed,) = mine()
    assert listed["contract_flavour"] == flavour
    loan_path = f"/api/v1/loans/{listed['id']}"

    # 5. TX_1 to pre-sign, once the desk has fixed H_L and built it.
    desk.until(lambda: dapp.call("GET", f"{loan_path}/collateral-tx")[0] == 200)
    tx1 = dapp.ok("GET", f"{loan_path}/collateral-tx")
    template = vaultero.from_psbt(tx1["psbt"]).template
    assert template.sighash.hex() == tx1["sighash"]
    presigned = vaultero.sign_input(template, borrower.btc_secret)
    dapp.ok("POST", f"{loan_path}/borrower-signature", {"signature": presigned.hex()})

    # 6. The offer; the wallet accepts it on chain (revealing P_B) before the named block.
    def detail() -> dict[str, Any]:
        return dict(dapp.ok("GET", f"{loan_path}/"))

    desk.until(lambda: detail()["status"] == "offered")
    (expiry,) = [d for d in detail()["deadlines"] if d["kind"] == "offer_expiry"]
    assert expiry["block"] >= int(desk.w3.eth.block_number) + 1
    borrower.actions.accept_offer(onchain_id, borrower.preimage)
    desk.until(
        lambda: (
            (detail()["status"], detail()["bitcoin_stage"]) == ("active", "collateral_confirmed")
        ),
        evm=1,
        btc=1,
    )

    # 7. Repay under the H_L the API shows (the loan's stored one), then release.
    stored_hash = detail()["preimage_hash_lender"]
    borrower.actions.attempt_repayment(onchain_id, preimage_hash_lender=stored_hash)
    desk.until(lambda: detail()["status"] == "repaid")
    release = dapp.ok(
        "GET", f"{loan_path}/release-tx", address=borrower.payout_address, feerate="2"
    )
    spend = vaultero.from_psbt(release["psbt"]).template
    signed = vaultero.finalize(
        spend,
        borrower_sig=vaultero.sign_input(spend, borrower.btc_secret),
        preimage=desk.revealed_lender_preimage(onchain_id),
    )
    desk.send_btc(signed)
    desk.until(lambda: detail()["status"] == "closed", evm=0, btc=1)
    final = detail()
    assert final["bitcoin_stage"] == "released"
    assert final["accounting"]["outcome"] == "repaid"

    capture = os.environ.get("BTCLOAN_DAPP_CAPTURE")
    if capture:
        Path(f"{capture}.{flavour}.json").write_text(json.dumps(record, indent=1, default=str))
