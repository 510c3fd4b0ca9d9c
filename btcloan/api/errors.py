"""One error shape for the whole API: `{"error": {"code", "message", "details"}}`.

DRF errors (validation, 401/403/404/405/429) are reshaped by `api_exception_handler`; anything
unexpected becomes a 500 with a generic message (the exception goes to the log, which redacts
secrets, never to the client). `json_404` / `json_500` do the same for Django-level errors under
/api/.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler, set_rollback

logger = logging.getLogger(__name__)

SERVER_ERROR_MESSAGE = "Internal server error; the operators have been notified by the log."


class ApiError(exceptions.APIException):
    """A refusal with its own code, message and details (e.g. a sign-in refused for a reason)."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "bad_request"
    default_detail = "Bad request."

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail=message, code=code or self.default_code)
        if status_code is not None:
            self.status_code = status_code
        self.error_code = code or self.default_code
        self.details = details or {}


def envelope(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _validation_details(detail: Any) -> dict[str, Any]:
    """Per field, the list of {message, code}; errors not tied to a field under
    `non_field_errors`."""
    full = exceptions.ValidationError(detail).get_full_details()
    if isinstance(full, dict):
        return full
    return {"non_field_errors": full if isinstance(full, list) else [full]}


def _first_message(details: dict[str, Any]) -> str:
    for field, errors in details.items():
        first = errors[0] if isinstance(errors, list) and errors else errors
        if isinstance(first, dict) and "message" in first:
            prefix = "" if field == "non_field_errors" else f"{field}: "
            return f"{prefix}{first['message']}"
        if isinstance(first, dict):  # nested serializer
            return f"{field}: {_first_message(first)}"
    return "Invalid input."


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    # Django's own 404/403 get DRF's generic wording (a model name is nobody's business).
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)  # DRF's: headers (Retry-After...), rollback
    if response is None:
        view = context.get("view")
        logger.exception("unhandled error in %s", type(view).__name__ if view else "API view")
        set_rollback()
        return Response(
            envelope("server_error", SERVER_ERROR_MESSAGE),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    if isinstance(exc, ApiError):
        response.data = envelope(exc.error_code, str(exc.detail), exc.details)
    elif isinstance(exc, exceptions.ValidationError):
        fields = _validation_details(exc.detail)
        response.data = envelope("invalid", _first_message(fields), fields)
    elif isinstance(exc, exceptions.APIException):  # the only kind DRF answers
        code = exc.get_codes()
        details: dict[str, Any] = {}
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            details["retry_after_seconds"] = int(exc.wait) + 1
        response.data = envelope(
            code if isinstance(code, str) else exc.default_code, str(exc.detail), details
        )
    return response


def is_api_path(request: HttpRequest) -> bool:
    """Paths that answer in the API's JSON error shape."""
    return request.path.startswith("/api/") or request.path == "/metrics"


def json_404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request):
        return JsonResponse(envelope("not_found", "Not found."), status=404)
    return defaults.page_not_found(request, exception or Exception())


def json_500(request: HttpRequest) -> HttpResponse:
    if is_api_path(request):
        return JsonResponse(envelope("server_error", SERVER_ERROR_MESSAGE), status=500)
    return defaults.server_error(request)


LOCKED_OUT_MESSAGE = (
    "Too many failed sign-ins for this user from this address: locked out for a while. "
    "An admin can lift the lockout."
)


def login_lockout(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: Any = None
) -> HttpResponse:
    """django-axes' answer to a locked-out sign-in: 429 in the API's shape under /api/, a plain
    429 page on the admin."""
    if is_api_path(request):
        return JsonResponse(envelope("locked_out", LOCKED_OUT_MESSAGE), status=429)
    return HttpResponse(LOCKED_OUT_MESSAGE, status=429, content_type="text/plain")


# --- OpenAPI ---------------------------------------------------------------------------------
class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable machine-readable code, e.g. `invalid`.")
    message = serializers.CharField(help_text="Human-readable reason.")
    details = serializers.DictField(
        help_text="For validation errors: per field, a list of {message, code}."
    )


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()


_DESCRIPTIONS = {
    400: "Bad input: `details` names each field and its reason.",
    401: "Not signed in, or the token or API key is invalid or expired.",
    403: "Signed in, but this role may not do that.",
    404: "Not found.",
    409: "Conflicts with the current state.",
    429: "Too many requests; `details.retry_after_seconds` says when to retry.",
    503: "A dependency is down.",
}


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    """`extend_schema(responses={200: X, **error_responses(400, 401, 429)})`."""
    return {
        code: OpenApiResponse(response=ErrorSerializer, description=_DESCRIPTIONS[code])
        for code in codes
    }
