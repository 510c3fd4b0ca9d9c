"""django-filter, except that an empty filter value is refused, not ignored: `?status=` is a
client's mistake (the schema's enum has no ""), and answering with every loan hides it.

Per request, django-filter built the view's FilterSet class (from `filterset_fields`) twice
and a FilterSet with its form, even with no filter given (bench/api_bench.py: the loan list's
first page). The class is built once per view; a request that names no filter is not filtered
(the FilterSet would hand the queryset back as is)."""

from __future__ import annotations

from typing import Any

from django.db.models import Model, QuerySet
from django_filters import FilterSet
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework.request import Request

from btcloan.api.errors import ApiError

# (view class, model) -> its FilterSet class; views declare their filters on the class.
_FILTERSETS: dict[tuple[type, type[Model]], type[FilterSet] | None] = {}


class FilterBackend(DjangoFilterBackend):
    def get_filterset_class(
        self, view: Any, queryset: QuerySet[Any] | None = None
    ) -> type[FilterSet] | None:
        if queryset is None:
            return super().get_filterset_class(view, queryset)
        key = (type(view), queryset.model)
        if key not in _FILTERSETS:
            _FILTERSETS[key] = super().get_filterset_class(view, queryset)
        return _FILTERSETS[key]

    def filter_queryset(self, request: Request, queryset: QuerySet[Any], view: Any) -> Any:
        filterset_class = self.get_filterset_class(view, queryset)
        if filterset_class is None:
            return queryset
        given = [name for name in filterset_class.base_filters if name in request.query_params]
        if not given:
            return queryset
        empty = [
            name
            for name in given
            if any(not value.strip() for value in request.query_params.getlist(name))
        ]
        if empty:
            raise ApiError(
                f"empty filter: {', '.join(empty)}",
                code="invalid",
                details={
                    name: [{"message": "may not be empty", "code": "blank"}] for name in empty
                },
            )
        return super().filter_queryset(request, queryset, view)
