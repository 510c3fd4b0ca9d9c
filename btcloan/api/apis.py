"""Sign-in endpoints: wallet (EIP-4361) for borrowers, password for operators; who-am-I."""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field
from eth_utils import is_checksum_address
from rest_framework import serializers
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

import btcloan.api.schema  # noqa: F401 - registers the OpenAPI auth schemes
from btcloan.api import services
from btcloan.api.errors import error_responses
from btcloan.api.selectors import is_operator, wallet_address_of
from btcloan.api.throttling import AuthRateThrottle, IpRateThrottle
from btcloan.models import AccessToken, ApiKey

_HEX_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


@extend_schema_field({"type": "string", "pattern": _HEX_ADDRESS.pattern})
class AddressField(serializers.CharField):
    """A 20-byte hex address; mixed case must be a valid EIP-55 checksum."""

    def to_internal_value(self, data: Any) -> str:
        value = str(super().to_internal_value(data))
        if not _HEX_ADDRESS.match(value):
            raise serializers.ValidationError("must be 0x followed by 40 hex digits", "format")
        body = value[2:]
        if body != body.lower() and body != body.upper() and not is_checksum_address(value):
            raise serializers.ValidationError("mixed-case address with a bad checksum", "checksum")
        return value


class NonceRequestSerializer(serializers.Serializer):
    address = AddressField(max_length=42, trim_whitespace=False)


class NonceResponseSerializer(serializers.Serializer):
    address = serializers.CharField(help_text="EIP-55 checksummed.")
    nonce = serializers.CharField()
    message = serializers.CharField(help_text="The EIP-4361 message to sign (personal_sign).")
    issued_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()


class LoginRequestSerializer(serializers.Serializer):
    message = serializers.CharField(max_length=4000, trim_whitespace=False)
    signature = serializers.RegexField(
        r"^(0x)?[0-9a-fA-F]{130}$", error_messages={"invalid": "must be 65 bytes of hex"}
    )


class OperatorLoginRequestSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=256, trim_whitespace=False)


class TokenResponseSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send as `Authorization: Bearer <token>`.")
    token_type = serializers.CharField()
    expires_at = serializers.DateTimeField()
    role = serializers.ChoiceField(choices=["borrower", "operator"])
    address = serializers.CharField(allow_null=True)


class WhoAmISerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["borrower", "operator", "service"])
    address = serializers.CharField(allow_null=True)
    username = serializers.CharField()
    auth = serializers.ChoiceField(choices=["token", "api_key"])


def _role(user: Any) -> str:
    if is_operator(user):
        return "operator"
    return "borrower" if wallet_address_of(user) else "service"


def _token_response(issued: services.IssuedToken) -> Response:
    body = {
        "token": issued.token,
        "token_type": "Bearer",
        "expires_at": issued.expires_at,
        "role": _role(issued.user),
        "address": wallet_address_of(issued.user),
    }
    return Response(TokenResponseSerializer(body).data)


class _SignInApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list[type] = []
    throttle_classes = [IpRateThrottle, AuthRateThrottle]


class AuthNonceApi(_SignInApi):
    @extend_schema(
        tags=["auth"],
        summary="A single-use EIP-4361 message for a wallet to sign",
        description="Step 1 of signing in: the message names this desk's domain and URI, the "
        "address and a nonce that expires after SIWE_NONCE_TTL_SECONDS. Sign it with the "
        "wallet (personal_sign) and send it to /auth/login.",
        request=NonceRequestSerializer,
        responses={200: NonceResponseSerializer, **error_responses(400, 429)},
        auth=[],
    )
    def post(self, request: Request) -> Response:
        payload = NonceRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        issued = services.sign_in_nonce_issue(address=payload.validated_data["address"])
        body = {
            "address": issued.address,
            "nonce": issued.nonce,
            "message": issued.message,
            "issued_at": issued.issued_at,
            "expires_at": issued.expires_at,
        }
        return Response(NonceResponseSerializer(body).data)


class AuthLoginApi(_SignInApi):
    @extend_schema(
        tags=["auth"],
        summary="Exchange a signed EIP-4361 message for a borrower token",
        description="Refusals carry a code: invalid_message, wrong_domain, wrong_uri, "
        "wrong_chain_id, unsupported_version, not_yet_valid, message_expired, unknown_nonce, "
        "nonce_address_mismatch, nonce_used, nonce_expired, bad_signature, signer_mismatch.",
        request=LoginRequestSerializer,
        responses={200: TokenResponseSerializer, **error_responses(400, 401, 403, 429)},
        auth=[],
    )
    def post(self, request: Request) -> Response:
        payload = LoginRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        issued = services.wallet_sign_in(
            message=payload.validated_data["message"],
            signature=payload.validated_data["signature"],
        )
        return _token_response(issued)


class AuthOperatorLoginApi(_SignInApi):
    @extend_schema(
        tags=["auth"],
        summary="Exchange a staff user's password for an operator token",
        description="For operator tools and scripts: a bearer token with the operator role, "
        "valid for AUTH_TOKEN_TTL_SECONDS. Wrong credentials are 401; throttled per IP.",
        request=OperatorLoginRequestSerializer,
        responses={200: TokenResponseSerializer, **error_responses(400, 401, 429)},
        auth=[],
    )
    def post(self, request: Request) -> Response:
        payload = OperatorLoginRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        issued = services.operator_sign_in(request=request._request, **payload.validated_data)
        return _token_response(issued)


class AuthLogoutApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        tags=["auth"],
        summary="Revoke the bearer token this request carries",
        description="Signs this token out: later requests with it are 401. API keys are "
        "revoked by an operator (manage.py revoke_api_key), not here.",
        request=None,
        responses={204: None, **error_responses(401, 429)},
    )
    def post(self, request: Request) -> Response:
        if isinstance(request.auth, AccessToken):
            services.access_token_revoke(token_id=request.auth.pk)
        return Response(status=204)


class AuthMeApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        tags=["auth"],
        summary="Who this request is signed in as",
        description="The role (borrower or operator), the wallet address of a borrower, the "
        "user name, and whether a token or an API key authenticated the request.",
        responses={200: WhoAmISerializer, **error_responses(401, 429)},
    )
    def get(self, request: Request) -> Response:
        body = {
            "role": _role(request.user),
            "address": wallet_address_of(request.user),
            "username": request.user.get_username(),
            "auth": "api_key" if isinstance(request.auth, ApiKey) else "token",
        }
        return Response(WhoAmISerializer(body).data)
