"""Roles: a borrower is a user bound to a wallet; an operator is staff (or an operator API key)."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from btcloan.api.selectors import is_operator, wallet_address_of


class IsOperator(BasePermission):
    message = "Operators only."

    def has_permission(self, request: Request, view: Any) -> bool:
        return is_operator(request.user)


class IsBorrowerOrOperator(BasePermission):
    """Borrowers (scope their data with `wallet_address_of`) and operators."""

    message = "Sign in with a wallet, or as an operator."

    def has_permission(self, request: Request, view: Any) -> bool:
        return is_operator(request.user) or wallet_address_of(request.user) is not None
