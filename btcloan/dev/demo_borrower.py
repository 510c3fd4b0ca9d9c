"""A borrower as the desk sees one: a dApp on the public REST API and a wallet on both chains.

The dApp signs in with the wallet's Ethereum key (EIP-4361), asks for an escrow quote, follows
its loans with GET /api/v1/loans/{id}/ and fetches the transactions to sign. The wallet funds
the escrow from a Bitcoin node's wallet, sends requestLoan / acceptLoanOffer / attemptRepayment
with its EVM key, signs TX_1, the release and the exit with vaultero after checking them, and
broadcasts its own spends. Nothing here reads the desk's database.

Used by `make demo` (btcloan/dev/demo.py) and tests/e2e.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TextIO

import requests
from eth_account import Account
from eth_account.messages import encode_defunct
from web3 import Web3

import vaultero
from chainwatch.evm.driver import BorrowerActions, ContractRevert, LoanContracts

NETWORK = "regtest"
# Sent over the quoted deposit, in case fees rise before TX_1 is built.
FEE_HEADROOM_SATS = 1_000
Json = dict[str, Any]


class DemoFailure(RuntimeError):
    """The loan did not get where the scenario expected in time."""


def btc_amount(sats: int) -> str:
    """Sats as the decimal BTC string Bitcoin RPC takes."""
    return f"{Decimal(sats) / 10**8:.8f}"


def btc(sats: int) -> str:
    return f"{btc_amount(sats)} BTC"


def sats_text(sats: int | str) -> str:
    return f"{int(sats):,} sats"


def rbtc(wei: int) -> str:
    return f"{Decimal(wei) / 10**18:.8f} rBTC".rstrip("0").rstrip(".")


class Display:
    """Timeline lines, and one progress line for waits that the next line replaces."""

    def __init__(self, out: TextIO | None = None, *, started: float | None = None) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.started = started or time.monotonic()
        self._progress_shown = False
        self._last_progress = 0.0
        self.lines: list[str] = []

    def clock(self) -> str:
        elapsed = int(time.monotonic() - self.started)
        return f"{elapsed // 60:02d}:{elapsed % 60:02d}"

    def line(self, text: str) -> None:
        if self._progress_shown:
            self.out.write("\r\033[K")
            self._progress_shown = False
        self.lines.append(text)
        self.out.write(f"{self.clock()}  {text}\n")
        self.out.flush()

    def progress(self, text: str) -> None:
        if self.tty:
            self.out.write(f"\r\033[K{self.clock()}  ⏳ {text}")
            self._progress_shown = True
            self.out.flush()
        elif time.monotonic() - self._last_progress >= 15:
            self.out.write(f"{self.clock()}  ... {text}\n")
            self.out.flush()
            self._last_progress = time.monotonic()

    def done_waiting(self) -> None:
        if self._progress_shown:
            self.out.write("\r\033[K")
            self.out.flush()
            self._progress_shown = False
        self._last_progress = 0.0


class DeskApi:
    """The desk's public REST API, as a dApp calls it."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base = base_url.rstrip("/") + "/api/v1"
        self.session = requests.Session()
        self.timeout = timeout

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, self.base + path, timeout=self.timeout, **kwargs)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise DemoFailure(f"{method} {path}: HTTP {response.status_code} {response.text[:300]}")
        return response.json()

    def sign_in(self, private_key: str) -> Json:
        """EIP-4361: ask a nonce for the address, sign the message, exchange it for a token."""
        account = Account.from_key(private_key)
        issued = self.ok("POST", "/auth/nonce", json={"address": account.address})
        signed = account.sign_message(encode_defunct(text=issued["message"]))
        token: Json = self.ok(
            "POST",
            "/auth/login",
            json={"message": issued["message"], "signature": "0x" + signed.signature.hex()},
        )
        self.session.headers["Authorization"] = f"Bearer {token['token']}"
        return token

    def parameters(self) -> Json:
        return dict(self.ok("GET", "/parameters"))

    def quote(self, *, btc_pubkey: str, preimage_hash: str, amount_wei: int) -> Json:
        body = {
            "borrower_btc_pubkey": btc_pubkey,
            "preimage_hash_borrower": preimage_hash,
            "amount_wei": str(amount_wei),
        }
        return dict(self.ok("POST", "/escrow/quote", json=body))

    def loans(self) -> list[Json]:
        return list(self.ok("GET", "/loans/")["results"])

    def loan(self, loan_id: int) -> Json:
        return dict(self.ok("GET", f"/loans/{loan_id}/"))


@dataclass
class Wallet:
    """The borrower's keys: EVM, Bitcoin (x-only) and the preimage P_B."""

    evm_key: str
    btc_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    preimage: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @property
    def address(self) -> str:
        return str(Account.from_key(self.evm_key).address)

    @property
    def btc_key(self) -> str:
        return vaultero.xonly_public_key(self.btc_secret)

    @property
    def preimage_hash(self) -> str:
        return hashlib.sha256(self.preimage).hexdigest()

    @property
    def payout_address(self) -> str:
        return vaultero.key_path_address(self.btc_key, NETWORK)


@dataclass
class Loan:
    """One loan as the borrower follows it."""

    label: str
    wallet: Wallet
    onchain_id: int = 0
    escrow_address: str = ""
    escrow_sats: int = 0
    api_id: int | None = None
    detail: Json = field(default_factory=dict)
    seen: set[tuple[str, str, str, str]] = field(default_factory=set)


class Borrower:
    """Plays one borrower's side of loans against a running desk."""

    def __init__(
        self,
        *,
        web_url: str,
        evm_url: str,
        bitcoin_rpc: Callable[..., Any],
        wallet: Wallet,
        display: Display | None = None,
    ) -> None:
        self.api = DeskApi(web_url)
        self.bitcoin_rpc = bitcoin_rpc
        self.wallet = wallet
        self.display = display or Display()
        self.w3 = Web3(Web3.HTTPProvider(evm_url, request_kwargs={"timeout": 30}))
        self.api.sign_in(wallet.evm_key)
        self.parameters = self.api.parameters()
        contracts = LoanContracts(
            self.w3,
            loan_address=self.parameters["loan_contract"],
            etherswap_address=self.parameters["etherswap_contract"],
            chain_id=int(self.parameters["chain_id"]),
        )
        self.contracts = contracts
        self.evm = BorrowerActions(contracts, wallet.evm_key)
        self.loans: list[Loan] = []

    def say(self, loan: Loan, text: str) -> None:
        self.display.line(f"{loan.label:<8} you        {text}")

    # --- following a loan -------------------------------------------------------------
    def refresh(self, loan: Loan) -> Json:
        """GET the loan (finding its API id on first sight) and print new timeline entries."""
        if loan.api_id is None:
            for row in self.api.loans():
                if (
                    row["onchain_id"] == str(loan.onchain_id)
                    and row["contract_address"].lower() == self.parameters["loan_contract"].lower()
                ):
                    loan.api_id = int(row["id"])
                    break
            else:
                return {}
        loan.detail = self.api.loan(loan.api_id)
        for entry in loan.detail["timeline"]:
            key = (entry["at"], entry["source"], entry["what"], entry["ref"])
            if key not in loan.seen:
                loan.seen.add(key)
                self.display.line(f"{loan.label:<8} {describe(entry)}")
        return loan.detail

    def wait(
        self,
        loan: Loan,
        what: str,
        reached: Callable[[Json], bool],
        *,
        timeout: float = 180.0,
        tick: Callable[[], None] | None = None,
    ) -> Json:
        """Poll the loan until `reached(detail)`; the progress line says what it waits for."""
        started = time.monotonic()
        while True:
            detail = self.refresh(loan)
            if detail and reached(detail):
                self.display.done_waiting()
                return detail
            waited = time.monotonic() - started
            if waited > timeout:
                self.display.done_waiting()
                state = f"{detail.get('status')}/{detail.get('bitcoin_stage')}" if detail else "-"
                raise DemoFailure(f"{loan.label}: {what} not reached in {timeout:.0f}s ({state})")
            if detail:
                heads, nxt = detail["heads"], detail["next_action"]
                where = (
                    f"EVM #{heads['evm']}, BTC #{heads['bitcoin']}; "
                    f"next: {nxt['party']} {nxt['action']}"
                )
            else:
                where = "the desk has not indexed the request yet"
            self.display.progress(f"{loan.label}: waiting for {what} ({waited:.0f}s; {where})")
            if tick is not None:
                tick()
            time.sleep(0.5)

    def wait_status(self, loan: Loan, status: str, stage: str | None = None, **kw: Any) -> Json:
        label = status + (f" / {stage}" if stage else "")

        def reached(d: Json) -> bool:
            return bool(d["status"] == status and (stage is None or d["bitcoin_stage"] == stage))

        return self.wait(loan, label, reached, **kw)

    # --- the borrower's steps -----------------------------------------------------------
    def open_loan(self, label: str, *, amount_wei: int = 10**16) -> Loan:
        """Quote, fund the escrow, requestLoan, pre-sign TX_1, and wait for the offer."""
        wallet = self.wallet
        quote = self.api.quote(
            btc_pubkey=wallet.btc_key, preimage_hash=wallet.preimage_hash, amount_wei=amount_wei
        )
        if quote["lender_btc_pubkey"] != self.parameters["lender_btc_pubkey"]:
            raise DemoFailure("the quote names another lender key than /parameters")
        # The wallet derives the escrow itself and only funds it if the desk's address agrees.
        expected = vaultero.escrow_output(
            borrower_key=wallet.btc_key,
            lender_key=quote["lender_btc_pubkey"],
            preimage_hash=wallet.preimage_hash,
            csv_blocks=quote["csv_blocks"],
            internal_key=quote["internal_key"],
        ).address(NETWORK)
        if expected != quote["escrow_address"]:
            raise DemoFailure("the quoted escrow address is not the one the wallet derives")
        # A little over the quote: fees may rise between the quote and TX_1. TX_1 pays its
        # miner fee from the escrow and whatever it does not need goes to the collateral.
        deposit = quote["deposit"]
        sats = int(deposit["total_sats"]) + FEE_HEADROOM_SATS
        txid = str(self.bitcoin_rpc("sendtoaddress", quote["escrow_address"], btc_amount(sats)))
        decoded = self.bitcoin_rpc("getrawtransaction", txid, True)
        vout = next(
            int(o["n"])
            for o in decoded["vout"]
            if o["scriptPubKey"].get("address") == quote["escrow_address"]
        )
        loan = Loan(label, wallet, 0, quote["escrow_address"], sats)
        self.loans.append(loan)
        self.display.line(
            f"{label:<8} you        fund escrow {quote['escrow_address'][:18]}… with {btc(sats)} "
            f"for a loan of {rbtc(amount_wei)} txid {txid[:16]}…"
        )
        self.display.line(
            f"{label:<8}            = collateral {sats_text(deposit['collateral_sats'])} "
            f"+ origination fee {sats_text(deposit['origination_fee_sats'])} "
            f"+ TX_1 miner fee {sats_text(deposit['miner_fee_sats'])} "
            f"+ headroom {sats_text(FEE_HEADROOM_SATS)} (for a fee rise; unused, it joins "
            "the collateral)"
        )
        result = self.evm.request_loan(
            amount_wei=amount_wei,
            btc_address=quote["escrow_address"],
            btc_pubkey=wallet.btc_key,
            preimage_hash=wallet.preimage_hash,
            escrow_txid=txid,
            escrow_vout=vout,
        )
        loan.onchain_id = result.loan_id
        self.say(
            loan,
            f"requestLoan → loan #{loan.onchain_id}, paying the "
            f"{rbtc(self.contracts.processing_fee())} processing fee (back on acceptance) "
            f"(tx {result.receipt['transactionHash'].hex()[:16]}…, block "
            f"{result.receipt['blockNumber']})",
        )
        self.presign(loan)
        self.wait_status(loan, "offered")
        return loan

    def presign(self, loan: Loan) -> None:
        """GET collateral-tx once the desk has built TX_1; check it spends our escrow into
        the collateral output we expect, sign it and POST the signature."""
        self.wait(loan, "TX_1 to sign", lambda d: self._collateral_tx(d) is not None)
        psbt = self._collateral_tx(loan.detail)
        assert psbt is not None
        self.refresh(loan)  # a view of the loan at least as new as the TX_1 it built
        tx1 = vaultero.from_psbt(psbt["psbt"]).template
        escrow, collateral = loan.detail["escrow"], loan.detail["collateral"]
        problems = [
            reason
            for wrong, reason in (
                (tx1.leaf != "collateral_lock", "it is not the escrow's collateral-lock spend"),
                (
                    (tx1.outpoint.txid, tx1.outpoint.vout) != (escrow["txid"], escrow["vout"]),
                    "it spends another outpoint than the escrow",
                ),
                (tx1.output.address(NETWORK) != loan.escrow_address, "it spends another address"),
                (tx1.sighash.hex() != psbt["sighash"], "its sighash is not the PSBT's"),
                (
                    tx1.collateral is None
                    or tx1.collateral.address(NETWORK) != collateral["address"],
                    "it pays another collateral output than the loan's",
                ),
                (tx1.outputs[1].value < int(loan.detail["loan_sats"]), "the collateral is short"),
                (tx1.fee != int(psbt["fee_sats"]), "its fee is not the one the desk states"),
            )
            if wrong
        ]
        if problems:
            raise DemoFailure(f"the desk's TX_1 is not signed: {'; '.join(problems)}")
        signature = vaultero.sign_input(tx1, loan.wallet.btc_secret)
        self.api.ok(
            "POST",
            f"/loans/{loan.api_id}/borrower-signature",
            json={"signature": signature.hex()},
        )
        fee_output, collateral_output = (out.value for out in tx1.outputs)
        self.say(
            loan,
            f"pre-sign TX_1 {psbt['txid'][:16]}…: escrow {sats_text(tx1.value)} = collateral "
            f"{sats_text(collateral_output)} + origination fee {sats_text(fee_output)} + "
            f"miner fee {sats_text(tx1.fee)}",
        )

    def _collateral_tx(self, detail: Json) -> Json | None:
        if not detail:
            return None
        response = self.api.request("GET", f"/loans/{detail['id']}/collateral-tx")
        return dict(response.json()) if response.status_code == 200 else None

    def accept(self, loan: Loan) -> None:
        """acceptLoanOffer with P_B: the amount arrives; then wait for TX_1 to confirm."""
        before = self.w3.eth.get_balance(Web3.to_checksum_address(self.wallet.address))
        receipt = self.evm.accept_offer(loan.onchain_id, loan.wallet.preimage)
        after = self.w3.eth.get_balance(Web3.to_checksum_address(self.wallet.address))
        # What arrived: the loan and the processing fee paid with the request, less the gas.
        amount = int(loan.detail["amount_wei"])
        fee = self.contracts.processing_fee()
        gas = int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
        rest = (after - before) - (amount + fee - gas)
        self.say(
            loan,
            f"acceptLoanOffer, revealing P_B (block {receipt['blockNumber']}): "
            f"balance +{rbtc(after - before)} = loan {rbtc(amount)} + processing fee back "
            f"{rbtc(fee)} - gas {rbtc(gas)}" + (f" + {rbtc(rest)} unexplained" if rest else ""),
        )
        self.wait_status(loan, "active", "collateral_confirmed")

    def repay(self, loan: Loan) -> None:
        receipt = self.evm.attempt_repayment(loan.onchain_id)
        self.say(
            loan,
            f"attemptRepayment of {rbtc(int(loan.detail['amount_wei']))} "
            f"(block {receipt['blockNumber']})",
        )

    def lender_preimage(self, loan: Loan) -> bytes:
        """P_L, as the wallet reads it from the RepaymentAccepted log."""
        logs = self.contracts.loan.events.RepaymentAccepted().get_logs(
            argument_filters={"loanId": loan.onchain_id},
            from_block=int(loan.detail["evm_blocks"]["request"]),
        )
        if not logs:
            raise DemoFailure("no RepaymentAccepted log for this loan")
        return bytes(logs[0]["args"]["preimageLender"])

    def release(self, loan: Loan) -> str:
        """GET release-tx, check and sign it, add P_L and broadcast: the collateral is ours."""
        preimage = self.lender_preimage(loan)
        spend = self.api.ok(
            "GET",
            f"/loans/{loan.api_id}/release-tx",
            params={"address": loan.wallet.payout_address},
        )
        parsed = vaultero.from_psbt(spend["psbt"]).template
        collateral = loan.detail["collateral"]
        if (
            parsed.leaf != "collateral_release"
            or parsed.outpoint.txid != collateral["txid"]
            or [o.script_pubkey for o in parsed.outputs]
            != [vaultero.address_to_script_pubkey(loan.wallet.payout_address, NETWORK)]
        ):
            raise DemoFailure("the release the desk built does not pay the collateral to us")
        signed = vaultero.finalize(
            parsed,
            borrower_sig=vaultero.sign_input(parsed, loan.wallet.btc_secret),
            preimage=preimage,
        )
        txid = str(self.bitcoin_rpc("sendrawtransaction", signed))
        self.say(
            loan,
            "release the collateral with P_L from RepaymentAccepted: collateral "
            f"{sats_text(parsed.value)} - miner fee {sats_text(spend['fee_sats'])} = "
            f"{btc(parsed.value - spend['fee_sats'])} to {loan.wallet.payout_address[:18]}… "
            f"(tx {txid[:16]}…)",
        )
        return txid

    def withdraw_repayment(self, loan: Loan) -> None:
        """After t_L with no answer: take the repayment (and the lender's bond) back."""
        repaid_at = int(loan.detail["evm_blocks"]["repayment"])
        opens = repaid_at + int(loan.detail["timelocks"]["t_lender"]) + 1
        self.wait(loan, f"EVM block {opens} (t_L passed)", lambda d: d["heads"]["evm"] >= opens)
        for _ in range(10):
            try:
                receipt = self.evm.withdraw_repayment(loan.onchain_id)
                break
            except ContractRevert:
                time.sleep(1)  # the node's head is a block behind the desk's view
        else:
            raise DemoFailure("withdrawRepaymentAttempt kept reverting")
        self.say(loan, f"withdrawRepaymentAttempt (block {receipt['blockNumber']})")

    def exit_escrow(self, loan: Loan) -> str:
        """Once t_0 has passed: GET exit-tx, sign, broadcast when the CSV allows it."""
        spend = self.api.ok(
            "GET", f"/loans/{loan.api_id}/exit-tx", params={"address": loan.wallet.payout_address}
        )
        valid_from = int(spend["valid_from_height"])
        parsed = vaultero.from_psbt(spend["psbt"]).template
        if parsed.leaf != "escrow_exit" or parsed.output.address(NETWORK) != loan.escrow_address:
            raise DemoFailure("the exit the desk built does not spend our escrow")
        signed = vaultero.finalize(
            parsed, borrower_sig=vaultero.sign_input(parsed, loan.wallet.btc_secret)
        )
        self.wait(
            loan,
            f"BTC block {valid_from - 1} (t_0 passed)",
            lambda d: int(self.bitcoin_rpc("getblockcount")) + 1 >= valid_from,
        )
        txid = str(self.bitcoin_rpc("sendrawtransaction", signed))
        self.say(
            loan,
            f"exit the escrow: {sats_text(parsed.value)} - miner fee "
            f"{sats_text(spend['fee_sats'])} = {btc(parsed.value - spend['fee_sats'])} back "
            f"(tx {txid[:16]}…)",
        )
        return txid


def describe(entry: Json) -> str:
    """One timeline entry as a line: which chain (or the desk), the block, what happened."""
    details = entry.get("details") or {}
    source = entry["source"]
    if source == "evm":
        return f"EVM #{entry['block']:<6} {entry['what']}"
    if source == "bitcoin":
        extra = ", ".join(
            f"{k} {btc(v) if k == 'value_sats' else v}"
            for k, v in details.items()
            if k in ("purpose", "path", "value_sats", "confirmations")
        )
        block = f"#{entry['block']}" if entry.get("block") is not None else "mempool"
        return f"BTC {block:<7} {entry['what']}" + (f" ({extra})" if extra else "")
    action = details.get("action")
    what = entry["what"]
    if action and action not in what:
        what = f"{what}: {action}"
    return f"desk       {what}"
