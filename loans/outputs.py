"""The loan's Bitcoin outputs and spends, derived from its recorded terms: the escrow and
collateral outputs, TX_1 as built for the borrower's pre-signature, and the borrower's own
release and exit. Reads only, no writes (the API, the services and the guards derive from
the same place); the one node read is the exit's deposit value when it was never recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from loans.chain import escrow_utxo
from loans.models import BitcoinStage, Loan, LoanStatus
from vaultero import (
    BIP341_NUMS,
    Outpoint,
    SpendTemplate,
    TaprootOutput,
    build_borrower_exit,
    build_collateral_lock,
    build_collateral_release,
    collateral_output,
    escrow_output,
    origination_fee_sats,
)


class CollateralError(Exception):
    """A Bitcoin step of the loan cannot be taken (yet); the message says why."""


class InvalidBorrowerSignature(CollateralError):
    """The uploaded signature does not verify for this loan's TX_1."""


def loan_ref(loan: Loan) -> str:
    return str(loan.pk)


def escrow_of(loan: Loan) -> TaprootOutput:
    return escrow_output(
        borrower_key=loan.borrower_btc_pubkey,
        lender_key=loan.lender_btc_pubkey,
        preimage_hash=loan.preimage_hash_borrower,
        csv_blocks=loan.escrow_csv_blocks,
        internal_key=loan.escrow_internal_key,
    )


def collateral_of(loan: Loan) -> TaprootOutput:
    """The collateral output: always under the provably unspendable NUMS internal key, also
    for an escrow the borrower built under the seed's key (nobody can prove that one)."""
    if not loan.preimage_hash_lender:
        raise CollateralError("the lender's preimage hash is not fixed yet")
    return collateral_output(
        borrower_key=loan.borrower_btc_pubkey,
        lender_key=loan.lender_btc_pubkey,
        preimage_hash=loan.preimage_hash_lender,
        csv_blocks=loan.collateral_csv_blocks,
        internal_key=BIP341_NUMS,
    )


def collateral_lock_build(loan: Loan, *, value: int, feerate: int, payout: str) -> SpendTemplate:
    return build_collateral_lock(
        escrow=escrow_of(loan),
        outpoint=Outpoint(loan.escrow_txid, loan.escrow_vout),
        value=value,
        lender_fee_address=payout,
        collateral=collateral_of(loan),
        loan_sats=loan.loan_sats,
        origination_fee_sats=origination_fee_sats(loan.loan_sats),
        feerate_sat_vb=feerate,
        network=settings.BITCOIN_NETWORK,
    )


def collateral_lock_template(loan: Loan) -> SpendTemplate:
    """TX_1 exactly as built for the borrower (rebuilt from the recorded inputs)."""
    if loan.collateral_lock_feerate is None or loan.escrow_value_sats is None:
        raise CollateralError("TX_1 is not built yet (waiting for the escrow deposit)")
    return collateral_lock_build(
        loan,
        value=loan.escrow_value_sats,
        feerate=loan.collateral_lock_feerate,
        payout=loan.lender_payout_address,
    )


def borrower_release_template(loan: Loan, *, destination: str, feerate: int) -> SpendTemplate:
    """The borrower's collateral release, unsigned (they add their signature and P_L)."""
    if loan.status not in (LoanStatus.REPAID, LoanStatus.DELETED, LoanStatus.CLOSED):
        raise CollateralError(f"the loan is {loan.status}: the release opens once repaid")
    if loan.collateral_value_sats is None or loan.bitcoin_stage not in (
        BitcoinStage.COLLATERAL_LOCKED,
        BitcoinStage.COLLATERAL_CONFIRMED,
    ):
        raise CollateralError("there is no unspent collateral output to release")
    return build_collateral_release(
        collateral=collateral_of(loan),
        outpoint=Outpoint(loan.collateral_txid, 1),
        value=loan.collateral_value_sats,
        destination=destination,
        feerate_sat_vb=feerate,
        network=settings.BITCOIN_NETWORK,
    )


@dataclass(frozen=True)
class StrayDeposit:
    """Another payment to the loan's escrow address: never part of the loan (only the named
    outpoint is), and the borrower's alone to take back by the exit leaf once t0_btc passed."""

    outpoint: Outpoint
    value_sats: int
    confirmed_height: int | None


def stray_deposit(loan: Loan, *, outpoint: Outpoint) -> StrayDeposit:
    """The unspent output at `outpoint`, if it pays the loan's escrow script and is no loan's
    named escrow (that one exits by the loan's own rules)."""
    named = Loan.objects.filter(escrow_txid=outpoint.txid, escrow_vout=outpoint.vout)
    if named.exists():
        raise CollateralError(f"{outpoint.txid}:{outpoint.vout} is a loan's escrow, not a stray")
    utxo = escrow_utxo(txid=outpoint.txid, vout=outpoint.vout)
    if utxo is None or utxo.script_pubkey != escrow_of(loan).script_pubkey.hex():
        raise CollateralError(
            f"no unspent payment to this loan's escrow address at {outpoint.txid}:{outpoint.vout}"
        )
    return StrayDeposit(outpoint, utxo.value_sats, utxo.confirmed_height)


def borrower_stray_exit_template(
    loan: Loan, deposit: StrayDeposit, *, destination: str, feerate: int
) -> SpendTemplate:
    """A stray deposit's exit, unsigned; valid once t0_btc has passed since it confirmed."""
    return build_borrower_exit(
        escrow=escrow_of(loan),
        outpoint=deposit.outpoint,
        value=deposit.value_sats,
        destination=destination,
        feerate_sat_vb=feerate,
        network=settings.BITCOIN_NETWORK,
    )


def borrower_exit_template(loan: Loan, *, destination: str, feerate: int) -> SpendTemplate:
    """The borrower's escrow exit, unsigned; valid once t0_btc has passed since funding."""
    if loan.status not in (LoanStatus.REQUESTED, LoanStatus.REFUNDED_TO_LENDER, LoanStatus.INVALID):
        raise CollateralError(f"the loan is {loan.status}: the escrow is not the borrower's")
    if loan.bitcoin_stage not in (
        BitcoinStage.ESCROW_SEEN,
        BitcoinStage.ESCROW_CONFIRMED,
        BitcoinStage.PRESIGNED,
    ):
        raise CollateralError("there is no unspent escrow output to exit")
    value = loan.escrow_value_sats
    if value is None:
        utxo = escrow_utxo(txid=loan.escrow_txid, vout=loan.escrow_vout)
        if utxo is None:
            raise CollateralError("the escrow output is not in the UTXO set")
        value = utxo.value_sats
    return build_borrower_exit(
        escrow=escrow_of(loan),
        outpoint=Outpoint(loan.escrow_txid, loan.escrow_vout),
        value=value,
        destination=destination,
        feerate_sat_vb=feerate,
        network=settings.BITCOIN_NETWORK,
    )
