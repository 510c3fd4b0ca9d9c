from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from rest_framework import pagination
from rest_framework.request import Request

from btcloan.api.errors import ApiError

_WHOLE = re.compile(r"^[0-9]{1,18}$")


def _positive(name: str, raw: str) -> int:
    """`?page=` and `?page_size=` are whole numbers from 1, as the schema says, or a 400."""
    if not _WHOLE.match(raw) or int(raw) < 1:
        message = f"{name} must be a whole number from 1"
        raise ApiError(
            message, code="invalid", details={name: [{"message": message, "code": "invalid"}]}
        )
    return int(raw)


class PageNumberPagination(pagination.PageNumberPagination):
    """`?page=N&page_size=M`, M capped at settings.API_MAX_PAGE_SIZE. A page past the last is a
    404; a page or size that is not a whole number from 1 is a 400 (never silently ignored)."""

    page_size_query_param = "page_size"
    last_page_strings = ()  # `?page=last` is not in the schema: pages are numbers

    @property
    def max_page_size(self) -> int:
        return int(settings.API_MAX_PAGE_SIZE)

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return int(self.page_size or 0)
        return min(_positive(self.page_size_query_param, raw), self.max_page_size)

    def paginate_queryset(
        self, queryset: QuerySet[Any], request: Request, view: Any = None
    ) -> list[Any] | None:
        raw = request.query_params.get(self.page_query_param)
        if raw is not None:
            _positive(self.page_query_param, raw)
        return super().paginate_queryset(queryset, request, view)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = 1
        return parameters
