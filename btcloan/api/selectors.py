"""Reads about who is calling: the roles the rest of the API scopes data by."""

from __future__ import annotations

from typing import Any

from btcloan.models import BorrowerWallet


def wallet_address_of(user: Any) -> str | None:
    """The EIP-55 address a borrower signed in with; None for operators, services, anonymous."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    try:
        wallet = user.borrower_wallet
    except BorrowerWallet.DoesNotExist:
        return None
    return str(wallet.address)


def is_operator(user: Any) -> bool:
    """Staff users with a role that reads the desk (viewer, operator, admin: btcloan.roles), and
    service clients whose API key has the operator role. `is_staff` alone grants nothing."""
    return bool(
        user is not None
        and getattr(user, "is_authenticated", False)
        and user.is_active
        and user.is_staff
        and user.has_perm("loans.view_loan")
    )
