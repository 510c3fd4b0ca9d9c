"""Registering what the scanner watches (called by `loans`)."""

from __future__ import annotations

from django.conf import settings

from bitcoin.models import WatchedOutpoint, WatchedScript, WatchPurpose


class WatchError(ValueError):
    """A watch request that cannot be honoured (bad script, conflicting loan)."""


def _check_hex(name: str, value: str, length: int | None = None) -> str:
    value = value.lower()
    try:
        bytes.fromhex(value)
    except ValueError:
        raise WatchError(f"{name} must be hex (got {value[:20]!r})") from None
    if length is not None and len(value) != length:
        raise WatchError(f"{name} must be {length} hex characters (got {len(value)})")
    return value


def watch_script(
    *,
    script_pubkey: str,
    loan_ref: str,
    purpose: WatchPurpose = WatchPurpose.ESCROW,
    address: str = "",
    target_confirmations: int | None = None,
) -> WatchedScript:
    """Report every payment to `script_pubkey` (hex): seen, confirmed to 1..N, orphaned.

    Idempotent for the same loan; a script already watched for another loan is refused."""
    script_pubkey = _check_hex("script_pubkey", script_pubkey)
    if not script_pubkey:
        raise WatchError("script_pubkey is empty")
    # Inserted unless the script is there (ON CONFLICT DO NOTHING), then read: two statements
    # and no savepoint inside the caller's transaction, where `get_or_create` takes four.
    WatchedScript.objects.bulk_create(
        [
            WatchedScript(
                script_pubkey=script_pubkey,
                loan_ref=loan_ref,
                purpose=purpose,
                address=address,
                target_confirmations=target_confirmations or settings.BITCOIN_CONFIRMATIONS,
            )
        ],
        ignore_conflicts=True,
    )
    watched = WatchedScript.objects.get(script_pubkey=script_pubkey)
    if watched.loan_ref != loan_ref:
        raise WatchError(f"script already watched for loan {watched.loan_ref}")
    if not watched.active:
        WatchedScript.objects.filter(pk=watched.pk).update(active=True)
        watched.active = True
    return watched


def watch_outpoint(
    *,
    txid: str,
    vout: int,
    loan_ref: str,
    purpose: WatchPurpose,
    target_confirmations: int | None = None,
) -> WatchedOutpoint:
    """Report the spend of `txid:vout`: spending txid, leaf used, preimage revealed, depth."""
    txid = _check_hex("txid", txid, 64)
    if vout < 0:
        raise WatchError("vout must be >= 0")
    WatchedOutpoint.objects.bulk_create(  # as in watch_script: no savepoint
        [
            WatchedOutpoint(
                txid=txid,
                vout=vout,
                loan_ref=loan_ref,
                purpose=purpose,
                target_confirmations=target_confirmations or settings.BITCOIN_CONFIRMATIONS,
            )
        ],
        ignore_conflicts=True,
    )
    watched = WatchedOutpoint.objects.get(txid=txid, vout=vout)
    if watched.loan_ref != loan_ref:
        raise WatchError(f"outpoint already watched for loan {watched.loan_ref}")
    if not watched.active:
        WatchedOutpoint.objects.filter(pk=watched.pk).update(active=True)
        watched.active = True
    return watched


def watch_stop(*, loan_ref: str) -> int:
    """Stop watching everything of a closed loan (history stays); returns how many."""
    scripts = WatchedScript.objects.filter(loan_ref=loan_ref, active=True).update(active=False)
    outpoints = WatchedOutpoint.objects.filter(loan_ref=loan_ref, active=True).update(active=False)
    return scripts + outpoints
