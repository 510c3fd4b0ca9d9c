"""bitcoin: writes. The public service functions, re-exported from their modules."""

from bitcoin.services.bumping import collateral_lock_bump, lender_sweep_bump, transaction_bump
from bitcoin.services.monitor import transactions_refresh
from bitcoin.services.scanner import chain_rescan_from, chain_scan
from bitcoin.services.signing import (
    SigningRefused,
    collateral_lock_complete,
    lender_signature,
    lender_sweep_complete,
    spend_register,
    spend_register_template,
)
from bitcoin.services.transactions import (
    TransactionError,
    transaction_broadcast,
    transaction_rebroadcast,
    transaction_register,
    transaction_retry,
    transaction_transition,
)
from bitcoin.services.wallet import wallet_deposit_register, wallet_sync
from bitcoin.services.watch import WatchError, watch_outpoint, watch_script, watch_stop

__all__ = [
    "SigningRefused",
    "TransactionError",
    "WatchError",
    "chain_rescan_from",
    "chain_scan",
    "collateral_lock_bump",
    "collateral_lock_complete",
    "lender_signature",
    "lender_sweep_bump",
    "lender_sweep_complete",
    "spend_register",
    "spend_register_template",
    "transaction_broadcast",
    "transaction_bump",
    "transaction_rebroadcast",
    "transaction_register",
    "transaction_retry",
    "transaction_transition",
    "transactions_refresh",
    "wallet_deposit_register",
    "wallet_sync",
    "watch_outpoint",
    "watch_script",
    "watch_stop",
]
