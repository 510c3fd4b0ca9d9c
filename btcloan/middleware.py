"""Refusals made before any view reads the request, for every caller, signed in or not: a body
larger than DATA_UPLOAD_MAX_MEMORY_SIZE is a 413, a NUL byte in the query string a 400 (it
reached PostgreSQL, which refuses NUL in text, as a 500)."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from btcloan.api.errors import envelope, is_api_path
from btcloan.api.inputs import whole_number

MAX_CONTENT_LENGTH_DIGITS = 10**18


class RequestGuardMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self._refusal(request) or self.get_response(request)

    def _refusal(self, request: HttpRequest) -> HttpResponse | None:
        raw_length = request.META.get("CONTENT_LENGTH") or "0"
        length = whole_number(raw_length, minimum=0, maximum=MAX_CONTENT_LENGTH_DIGITS)
        if length is None:
            return _answer(request, 400, "bad_request", "Content-Length is not a whole number.")
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is not None and length > limit:
            return _answer(
                request,
                413,
                "request_too_large",
                f"The request body is {length} bytes; at most {limit} are accepted.",
            )
        if "\x00" in request.META.get("QUERY_STRING", "") or _nul_in_query(request):
            return _answer(request, 400, "bad_request", "NUL bytes are not allowed in the query.")
        return None


def _nul_in_query(request: HttpRequest) -> bool:
    return any(
        "\x00" in key or any("\x00" in v for v in values) for key, values in request.GET.lists()
    )


def _answer(request: HttpRequest, status: int, code: str, message: str) -> HttpResponse:
    if is_api_path(request):
        return JsonResponse(envelope(code, message), status=status)
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")
