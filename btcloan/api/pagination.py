from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.db.models.expressions import RawSQL
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


# The page's rows carry the total under this name (taken off before they are served).
_TOTAL = "page_total_count"


class OneStatementPaginator(Paginator):
    """Django's Paginator, with the count read in the page's own statement (a scalar subquery
    the database runs once): one round trip for a page instead of two (bench/api_bench.py: a
    round trip costs more at load than its CPU). A page with no rows (past the last one, or an
    empty list) is left to Django's way, which counts first, so its answer is Django's."""

    def page(self, number: Any) -> Page:
        object_list = self.object_list
        if not isinstance(object_list, QuerySet) or self.orphans or not str(number).isdigit():
            return super().page(number)
        if int(number) < 1:
            return super().page(number)
        bottom = (int(number) - 1) * self.per_page
        counted, params = object_list.order_by().values("pk").query.sql_with_params()
        # The list's own compiled SQL, its values as parameters.
        total = RawSQL(f"SELECT COUNT(*) FROM ({counted}) AS counted", params)  # noqa: S608,S611
        rows = list(object_list.annotate(**{_TOTAL: total})[bottom : bottom + self.per_page])
        if not rows:
            return super().page(number)
        for row in rows:
            count = row.pop(_TOTAL) if isinstance(row, dict) else getattr(row, _TOTAL)
        self.__dict__["count"] = count  # Paginator.count is a cached_property
        return Page(rows, self.validate_number(number), self)


class PageNumberPagination(pagination.PageNumberPagination):
    """`?page=N&page_size=M`, M capped at settings.API_MAX_PAGE_SIZE. A page past the last is a
    404; a page or size that is not a whole number from 1 is a 400 (never silently ignored)."""

    django_paginator_class = OneStatementPaginator
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
