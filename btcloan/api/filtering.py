"""django-filter, except that an empty filter value is refused, not ignored: `?status=` is a
client's mistake (the schema's enum has no ""), and answering with every loan hides it."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework.request import Request

from btcloan.api.errors import ApiError


class FilterBackend(DjangoFilterBackend):
    def filter_queryset(self, request: Request, queryset: QuerySet[Any], view: Any) -> Any:
        filterset_class = self.get_filterset_class(view, queryset)
        if filterset_class is not None:
            empty = [
                name
                for name in filterset_class.base_filters
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
