"""The dApp's loan API. Views are thin: validate, call one selector or service, serialise.

Borrowers see and act on the loans of the wallet they signed in with; operators on all. A loan
another borrower owns answers 404, as if it did not exist.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bitcoin.rpc import NodeUnavailable as BitcoinNodeUnavailable
from btcloan.api.errors import ApiError, error_responses
from btcloan.api.inputs import whole_number
from btcloan.api.permissions import IsBorrowerOrOperator
from chainwatch.client import NodeUnavailable as EvmNodeUnavailable
from loans import serializers as s
from loans.chain import ChainNotConfigured, feerate_now
from loans.models import Loan
from loans.outputs import (
    CollateralError,
    InvalidBorrowerSignature,
    StrayDeposit,
    borrower_exit_template,
    borrower_release_template,
    borrower_stray_exit_template,
    collateral_lock_template,
    stray_deposit,
)
from loans.selectors import loan_detail_for, loans_visible_to
from loans.services.collateral import borrower_signature_submit
from loans.services.quote import QuoteRefused, escrow_quote, protocol_parameters
from vaultero import Outpoint, VaulteroError, to_psbt

# A node that is down (or no deployment configured): 503, the request can be retried.
CHAIN_DOWN = (OSError, BitcoinNodeUnavailable, EvmNodeUnavailable, ChainNotConfigured)


def _chain_unavailable(exc: Exception) -> ApiError:
    return ApiError(
        f"a chain node is not answering: {type(exc).__name__}",
        code="node_unavailable",
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
    )


def _not_now(message: str) -> ApiError:
    return ApiError(message, code="not_possible_yet", status_code=status.HTTP_409_CONFLICT)


class ParametersApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        summary="The desk's contracts, lender key and loan limits",
        description=(
            "What a dApp needs before its first quote: the chain id, the loan contract and "
            "EtherSwap addresses, the lender's Bitcoin public key (x-only), the processing "
            "fee and the minimum amount (wei, as strings), the bond and origination fee "
            "percentages, the timelocks (EVM blocks), the confirmations each chain needs and "
            "the Bitcoin network. Anonymous. 503 when the EVM node does not answer."
        ),
        responses={200: s.ParametersSerializer, **error_responses(429, 503)},
    )
    def get(self, request: Request) -> Response:
        try:
            parameters = protocol_parameters()
        except CHAIN_DOWN as exc:
            raise _chain_unavailable(exc) from exc
        return Response(s.ParametersSerializer(parameters).data)


class EscrowQuoteApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        summary="The escrow address and the deposit for a loan request",
        description=(
            "Send the borrower's x-only Bitcoin key, H_B (sha256 of the borrower's preimage) "
            "and the amount in wei; the answer is the escrow's taproot address and how many "
            "sats to deposit (collateral + origination fee + TX_1's miner fee at the current "
            "feerate), with its parts. Derive the address yourself (vaultero) and compare "
            "before funding it; then call requestLoan with the escrow outpoint. Anonymous; "
            "400 with a reason when the request cannot be served (e.g. amount out of range)."
        ),
        request=s.QuoteInSerializer,
        responses={200: s.QuoteOutSerializer, **error_responses(400, 429, 503)},
    )
    def post(self, request: Request) -> Response:
        given = s.QuoteInSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        try:
            quote = escrow_quote(**given.validated_data)
        except (QuoteRefused, VaulteroError) as exc:
            raise ApiError(str(exc), code="quote_refused") from exc
        except CHAIN_DOWN as exc:
            raise _chain_unavailable(exc) from exc
        return Response(s.QuoteOutSerializer(quote).data)


class LoanListApi(generics.ListAPIView):
    permission_classes = [IsBorrowerOrOperator]
    serializer_class = s.LoanSerializer
    filterset_fields = ("status", "bitcoin_stage", "borrower_address")
    ordering_fields = ("id", "updated_at", "created_at")

    def get_queryset(self) -> QuerySet[Loan, dict[str, Any]]:
        # Rows of just the serialised columns: a page builds no Loan per row.
        return loans_visible_to(self.request.user).values(*s.loan_columns())

    # 400: a filter value that is not one of its choices; 404: a page past the last one.
    @extend_schema(
        summary="Your loans (an operator: every loan), newest first",
        description=(
            "A borrower (signed in with their wallet) sees the loans of that wallet; an "
            "operator sees all. Filter by status, bitcoin_stage or borrower_address; order "
            "by id, created_at or updated_at; paginated (page, page_size)."
        ),
        responses={200: s.LoanSerializer(many=True), **error_responses(400, 401, 403, 404, 429)},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


def _visible_loan(request: Request, pk: int) -> Loan:
    return get_object_or_404(loans_visible_to(request.user), pk=pk)


class LoanDetailApi(APIView):
    permission_classes = [IsBorrowerOrOperator]

    @extend_schema(
        summary="One loan on both chains: state, deadlines, next step, timeline",
        description=(
            "The loan's status (EVM) and Bitcoin stage, its amounts (wei and sats as "
            "strings), the escrow and collateral outputs, the deadlines with the blocks left "
            "by the newest blocks the desk has seen, who must act next and how, and the "
            "timeline of EVM events, Bitcoin observations and the desk's own actions. "
            "Another borrower's loan is 404."
        ),
        responses={200: s.LoanDetailSerializer, **error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, pk: int) -> Response:
        detail = loan_detail_for(user=request.user, pk=pk)
        if detail is None:
            raise Http404
        return Response(s.LoanDetailSerializer(detail).data)


class CollateralTxApi(APIView):
    permission_classes = [IsBorrowerOrOperator]

    @extend_schema(
        summary="TX_1 (escrow to collateral) for the borrower to pre-sign",
        description=(
            "Once the escrow deposit is confirmed the desk builds TX_1: the unsigned "
            "transaction, a PSBT, the BIP-341 sighash, the leaf script and control block, its "
            "fee and outputs. Check that it spends your escrow into the collateral you expect, "
            "sign the sighash (BIP-340) and POST the signature to borrower-signature. 409 "
            "until TX_1 is built."
        ),
        responses={200: s.CollateralTxSerializer, **error_responses(401, 403, 404, 409, 429)},
    )
    def get(self, request: Request, pk: int) -> Response:
        loan = _visible_loan(request, pk)
        try:
            template = collateral_lock_template(loan)
        except CollateralError as exc:
            raise _not_now(str(exc)) from exc
        return Response(
            s.CollateralTxSerializer(
                {
                    "txid": template.txid,
                    "hex": template.unsigned_tx.hex(),
                    "psbt": to_psbt(template),
                    "sighash": template.sighash.hex(),
                    "leaf_script": template.leaf_script.hex(),
                    "control_block": template.control_block.hex(),
                    "fee_sats": template.fee,
                    "feerate_sat_vb": loan.collateral_lock_feerate,
                    "outputs": [
                        {"value_sats": out.value, "script_pubkey": out.script_pubkey.hex()}
                        for out in template.outputs
                    ],
                }
            ).data
        )


class BorrowerSignatureApi(APIView):
    permission_classes = [IsBorrowerOrOperator]

    @extend_schema(
        summary="Upload the borrower's pre-signature of TX_1",
        description=(
            "64-byte BIP-340 signature (128 hex) of TX_1's sighash by the borrower's key. It "
            "is verified before it is stored; the lender offers the loan once it is. 400 for "
            "a malformed or wrong signature (with the reason), 409 when TX_1 is not built."
        ),
        request=s.BorrowerSignatureInSerializer,
        responses={
            201: s.BorrowerSignatureOutSerializer,
            **error_responses(400, 401, 403, 404, 409, 429),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        loan = _visible_loan(request, pk)
        given = s.BorrowerSignatureInSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        try:
            stored = borrower_signature_submit(
                loan_id=loan.pk, signature_hex=given.validated_data["signature"]
            )
        except InvalidBorrowerSignature as exc:
            raise ApiError(
                str(exc), code="invalid_signature", details={"signature": [str(exc)]}
            ) from exc
        except CollateralError as exc:
            raise _not_now(str(exc)) from exc
        return Response(
            s.BorrowerSignatureOutSerializer(stored).data, status=status.HTTP_201_CREATED
        )


FEERATE_BOUNDS = {"minimum": 1, "maximum": 100_000}  # sat/vB; no real feerate is higher
ADDRESS_PARAMETERS = [
    OpenApiParameter("address", str, required=True, description="where the coins go"),
    OpenApiParameter("feerate", int, required=False, description="sat/vB; default: the node's"),
]


class _BorrowerSpendApi(APIView):
    permission_classes = [IsBorrowerOrOperator]
    needs: tuple[str, ...] = ()

    def build(self, loan: Loan, destination: str, feerate: int) -> Any:
        raise NotImplementedError

    def valid_from(self, loan: Loan) -> int | None:
        return None

    def get(self, request: Request, pk: int) -> Response:
        loan = _visible_loan(request, pk)
        destination = request.query_params.get("address", "").strip()
        if not destination:
            raise ApiError("address is required", code="invalid", details={"address": ["required"]})
        raw_feerate = request.query_params.get("feerate")
        given = None if raw_feerate is None else whole_number(raw_feerate, **FEERATE_BOUNDS)
        if raw_feerate is not None and given is None:
            raise ApiError(
                "feerate must be a whole number of sat/vB from 1 to 100000 (ASCII digits)",
                code="invalid",
                details={"feerate": ["not a whole number from 1 to 100000"]},
            )
        try:
            feerate = given or feerate_now()
            template = self.build(loan, destination, feerate)
        except VaulteroError as exc:
            raise ApiError(str(exc), code="invalid", details={"address": [str(exc)]}) from exc
        except CollateralError as exc:
            raise _not_now(str(exc)) from exc
        except CHAIN_DOWN as exc:
            raise _chain_unavailable(exc) from exc
        return Response(
            s.SpendPsbtSerializer(
                {
                    "txid": template.txid,
                    "psbt": to_psbt(template),
                    "hex": template.unsigned_tx.hex(),
                    "sighash": template.sighash.hex(),
                    "fee_sats": template.fee,
                    "feerate_sat_vb": feerate,
                    "destination": destination,
                    "valid_from_height": self.valid_from(loan),
                    "needs": list(self.needs),
                }
            ).data
        )


class ReleaseTxApi(_BorrowerSpendApi):
    needs = ("the borrower's signature", "P_L, revealed by RepaymentAccepted")

    def build(self, loan: Loan, destination: str, feerate: int) -> Any:
        return borrower_release_template(loan, destination=destination, feerate=feerate)

    @extend_schema(
        summary="The collateral release for the borrower to sign (after repayment)",
        description=(
            "After the lender accepted the repayment (revealing P_L in RepaymentAccepted): the "
            "unsigned spend of the collateral to `address` by the release leaf, as a PSBT "
            "with its sighash and fee. Sign it, add P_L read from the chain, and broadcast "
            "it yourself. 409 before the loan is repaid."
        ),
        parameters=ADDRESS_PARAMETERS,
        responses={
            200: s.SpendPsbtSerializer,
            **error_responses(400, 401, 403, 404, 409, 429, 503),
        },
    )
    def get(self, request: Request, pk: int) -> Response:
        return super().get(request, pk)


def _outpoint_param(request: Request) -> Outpoint | None:
    """`outpoint=<txid>:<vout>`, or None when not given; 400 when malformed."""
    raw = request.query_params.get("outpoint")
    if raw is None:
        return None
    txid, _, vout = raw.strip().partition(":")
    number = whole_number(vout, minimum=0, maximum=0xFFFFFFFF)
    try:
        if number is None:
            raise VaulteroError("vout must be a whole number from 0 to 4294967295")
        return Outpoint(txid, number)
    except VaulteroError as exc:
        reason = f"outpoint must be <txid>:<vout>: {exc}"
        raise ApiError(reason, code="invalid", details={"outpoint": [reason]}) from exc


class ExitTxApi(_BorrowerSpendApi):
    needs = ("the borrower's signature",)
    outpoint: Outpoint | None = None  # a stray deposit's, when asked for
    stray: StrayDeposit | None = None

    def build(self, loan: Loan, destination: str, feerate: int) -> Any:
        if self.outpoint is None or self.outpoint == Outpoint(loan.escrow_txid, loan.escrow_vout):
            return borrower_exit_template(loan, destination=destination, feerate=feerate)
        self.stray = stray_deposit(loan, outpoint=self.outpoint)
        return borrower_stray_exit_template(
            loan, self.stray, destination=destination, feerate=feerate
        )

    def valid_from(self, loan: Loan) -> int | None:
        stray = self.stray
        confirmed = loan.escrow_confirmed_height if stray is None else stray.confirmed_height
        return None if confirmed is None else confirmed + loan.escrow_csv_blocks

    @extend_schema(
        summary="The escrow exit for the borrower to sign (no loan came of it)",
        description=(
            "When the escrow was never locked into collateral (no offer, or the offer "
            "withdrawn): the unsigned spend of the escrow back to `address` by the exit leaf, "
            "valid from `valid_from_height` (escrow confirmation + t0_btc). Sign it and "
            "broadcast it once that height is reached. 409 when the escrow is not exitable. "
            "With `outpoint`: another payment to the escrow address (a top-up or a second "
            "deposit is never part of the loan), whatever the loan's state; valid from its "
            "own confirmation + t0_btc."
        ),
        parameters=[
            *ADDRESS_PARAMETERS,
            OpenApiParameter(
                "outpoint",
                str,
                required=False,
                description="<txid>:<vout> of another payment to the escrow address",
            ),
        ],
        responses={
            200: s.SpendPsbtSerializer,
            **error_responses(400, 401, 403, 404, 409, 429, 503),
        },
    )
    def get(self, request: Request, pk: int) -> Response:
        self.outpoint = _outpoint_param(request)
        return super().get(request, pk)
