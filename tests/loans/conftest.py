from __future__ import annotations

import itertools
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from loans.models import Loan

_ids = itertools.count(1)


def loan_factory(**overrides: Any) -> Loan:
    """A requested loan as LoanRequested would create it; override any field."""
    onchain_id = next(_ids)
    fields: dict[str, Any] = {
        "chain_id": 31337,
        "contract_address": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
        "onchain_id": Decimal(onchain_id),
        "borrower_address": f"0x{onchain_id:040x}",
        "borrower_btc_pubkey": "7592aab5d43618dda13fba71e3993cd7517a712d3da49664c06ee1bd3d1f70af",
        "lender_btc_pubkey": "e5740e63bad28081ed7cf654dd6c19029ca03382fc05ab5f5dda81f2c55b845b",
        "amount_wei": Decimal(10**16),
        "loan_sats": 10**6,
        "preimage_hash_borrower": "a" * 64,
        "escrow_address": "bcrt1pdj8zes7cr8nausad4lygdp3vgq7vue6w2shn0q6k208xppr6h84skm23rc",
        "escrow_txid": f"{onchain_id:064x}",
        "escrow_vout": 0,
        "loan_duration": 540000,
        "timelock_borrower": 1000,
        "timelock_btc_escrow": 2000,
        "timelock_lender": 1500,
        "timelock_btc_collateral": 543000,
        "escrow_csv_blocks": 100,
        "collateral_csv_blocks": 27150,
        "request_block": 100,
    }
    fields.update(overrides)
    return Loan.objects.create(**fields)


@pytest.fixture
def make_loan() -> Callable[..., Loan]:
    return loan_factory
