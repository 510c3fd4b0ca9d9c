"""`python -m vaultero`: the borrower's offline toolkit. Nothing here touches a network.

Every command prints JSON (or a raw PSBT / transaction) on stdout; errors go to stderr with
exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vaultero.encoding import NETWORKS, address_to_script_pubkey, parse_hex
from vaultero.errors import VaulteroError
from vaultero.psbt import from_psbt, to_psbt
from vaultero.scripts import collateral_output, escrow_output
from vaultero.signing import finalize, sign_input, xonly_public_key
from vaultero.taproot import BIP341_NUMS, SEED_INTERNAL_KEY
from vaultero.transactions import Outpoint, build_borrower_exit, build_collateral_release


class CliError(VaulteroError):
    """A usage problem the command line reports as a clear error."""


def _internal_key(name: str) -> str:
    if name == "nums":
        return BIP341_NUMS
    if name == "seed":
        return SEED_INTERNAL_KEY
    return name


def _read_key_file(path: str) -> str:
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise CliError(f"cannot read key file {path}: {exc.strerror}") from None
    parse_hex(text, name="key file contents", length=32)
    return text


def _read_psbt(value: str) -> str:
    """A PSBT given inline as base64, or `@path` to a file holding one."""
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text().strip()
        except OSError as exc:
            raise CliError(f"cannot read PSBT file {value[1:]}: {exc.strerror}") from None
    return value


def _print(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def cmd_preimage(args: argparse.Namespace) -> None:
    secret = os.urandom(32)
    _print({"preimage": secret.hex(), "preimage_hash": hashlib.sha256(secret).hexdigest()})


def cmd_escrow_address(args: argparse.Namespace) -> None:
    escrow = escrow_output(
        borrower_key=args.borrower_key,
        lender_key=args.lender_key,
        preimage_hash=args.borrower_hash,
        csv_blocks=args.t0,
        internal_key=_internal_key(args.internal_key),
    )
    _print(
        {
            "address": escrow.address(args.network),
            "script_pubkey": escrow.script_pubkey.hex(),
            "internal_key": escrow.internal_key,
        }
    )


def cmd_check_psbt(args: argparse.Namespace) -> None:
    """Does this TX_1 spend my escrow, pay the collateral address my keys and H_L imply, and
    take no more than the stated fee? Exit status 1 when any check fails."""
    spend = from_psbt(_read_psbt(args.psbt))
    t = spend.template
    internal = _internal_key(args.internal_key)
    terms = {"borrower_key": args.borrower_key, "lender_key": args.lender_key}
    escrow = escrow_output(
        **terms, preimage_hash=args.borrower_hash, csv_blocks=args.t0, internal_key=internal
    )
    collateral = collateral_output(
        **terms, preimage_hash=args.lender_hash, csv_blocks=args.t1, internal_key=internal
    )
    checks = {
        "is_collateral_lock": t.leaf == "collateral_lock",
        "spends_my_escrow": t.output == escrow,
        "pays_collateral_address": len(t.outputs) == 2
        and t.outputs[1].script_pubkey == collateral.script_pubkey,
        "fee_within_limit": t.fee <= args.max_fee,
    }
    if args.lender_fee_address:
        fee_script = address_to_script_pubkey(args.lender_fee_address, args.network)
        checks["fee_output_to_lender"] = (
            bool(t.outputs) and t.outputs[0].script_pubkey == fee_script
        )
    report = {
        "ok": all(checks.values()),
        "checks": checks,
        "txid": t.txid,
        "escrow_address": escrow.address(args.network),
        "collateral_address": collateral.address(args.network),
        "outputs": [{"value": o.value, "script_pubkey": o.script_pubkey.hex()} for o in t.outputs],
        "miner_fee": t.fee,
        "vsize": t.vsize,
    }
    _print(report)
    if not report["ok"]:
        raise SystemExit(1)


def cmd_sign(args: argparse.Namespace) -> None:
    secret = _read_key_file(args.key_file)
    spend = from_psbt(_read_psbt(args.psbt))
    signature = sign_input(spend.template, secret)
    signatures = {**spend.signatures, xonly_public_key(secret): signature}
    print(to_psbt(spend.template, signatures=signatures))


def _outpoint(args: argparse.Namespace) -> Outpoint:
    return Outpoint(args.txid, args.vout)


def cmd_release(args: argparse.Namespace) -> None:
    secret = _read_key_file(args.key_file)
    collateral = collateral_output(
        borrower_key=xonly_public_key(secret),
        lender_key=args.lender_key,
        preimage_hash=args.lender_hash,
        csv_blocks=args.t1,
        internal_key=_internal_key(args.internal_key),
    )
    t = build_collateral_release(
        collateral=collateral,
        outpoint=_outpoint(args),
        value=args.value,
        destination=args.destination,
        feerate_sat_vb=args.feerate,
        network=args.network,
    )
    signed = finalize(t, borrower_sig=sign_input(t, secret), preimage=args.lender_preimage)
    _print({"txid": t.txid, "fee": t.fee, "vsize": t.vsize, "hex": signed})


def cmd_exit(args: argparse.Namespace) -> None:
    secret = _read_key_file(args.key_file)
    escrow = escrow_output(
        borrower_key=xonly_public_key(secret),
        lender_key=args.lender_key,
        preimage_hash=args.borrower_hash,
        csv_blocks=args.t0,
        internal_key=_internal_key(args.internal_key),
    )
    t = build_borrower_exit(
        escrow=escrow,
        outpoint=_outpoint(args),
        value=args.value,
        destination=args.destination,
        feerate_sat_vb=args.feerate,
        network=args.network,
    )
    signed = finalize(t, borrower_sig=sign_input(t, secret))
    _print(
        {
            "txid": t.txid,
            "fee": t.fee,
            "vsize": t.vsize,
            "hex": signed,
            "valid_after_blocks": t.sequence,
        }
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vaultero", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, *, network: bool = True) -> None:
        if network:
            sp.add_argument("--network", required=True, choices=NETWORKS)
        sp.add_argument(
            "--internal-key",
            default="nums",
            help="'nums' (default), 'seed' (outputs made by the seed's tools) or 64 hex",
        )

    sp = sub.add_parser("preimage", help="a new 32-byte secret and its SHA-256")
    sp.set_defaults(func=cmd_preimage)

    sp = sub.add_parser("escrow-address", help="the escrow address for my loan terms")
    common(sp)
    sp.add_argument("--borrower-key", required=True)
    sp.add_argument("--lender-key", required=True)
    sp.add_argument("--borrower-hash", required=True, help="H_B")
    sp.add_argument("--t0", required=True, type=int, help="t0_btc (CSV blocks)")
    sp.set_defaults(func=cmd_escrow_address)

    sp = sub.add_parser("check-psbt", help="check the TX_1 PSBT the lender asks me to sign")
    common(sp)
    sp.add_argument("psbt", help="base64 PSBT, or @file")
    sp.add_argument("--borrower-key", required=True)
    sp.add_argument("--lender-key", required=True)
    sp.add_argument("--borrower-hash", required=True, help="H_B")
    sp.add_argument("--lender-hash", required=True, help="H_L")
    sp.add_argument("--t0", required=True, type=int)
    sp.add_argument("--t1", required=True, type=int)
    sp.add_argument("--max-fee", required=True, type=int, help="largest miner fee (sats)")
    sp.add_argument("--lender-fee-address")
    sp.set_defaults(func=cmd_check_psbt)

    sp = sub.add_parser("sign", help="sign a PSBT offline with a local key file")
    sp.add_argument("psbt", help="base64 PSBT, or @file")
    sp.add_argument("--key-file", required=True, help="file holding the 64-hex private key")
    sp.set_defaults(func=cmd_sign)

    for name, func, help_text in (
        ("release", cmd_release, "take my collateral back with the lender's preimage P_L"),
        ("exit", cmd_exit, "take my escrow back after t0_btc blocks"),
    ):
        sp = sub.add_parser(name, help=help_text)
        common(sp)
        sp.add_argument("--key-file", required=True)
        sp.add_argument("--lender-key", required=True)
        sp.add_argument("--txid", required=True)
        sp.add_argument("--vout", required=True, type=int)
        sp.add_argument("--value", required=True, type=int, help="sats in the spent output")
        sp.add_argument("--destination", help="address (default: my key's P2TR address)")
        sp.add_argument("--feerate", required=True, type=int, help="sat/vB")
        if name == "release":
            sp.add_argument("--lender-hash", required=True, help="H_L")
            sp.add_argument("--lender-preimage", required=True, help="P_L, revealed on EVM")
            sp.add_argument("--t1", required=True, type=int)
        else:
            sp.add_argument("--borrower-hash", required=True, help="H_B")
            sp.add_argument("--t0", required=True, type=int)
        sp.set_defaults(func=func)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except VaulteroError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
