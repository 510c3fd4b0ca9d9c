"""`python -m vaultero`, the borrower's offline toolkit, end to end through its main()."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vaultero.conftest import BORROWER_SECRET, Loan, consensus_accepts
from tests.vaultero.test_consensus import tx1
from vaultero import (
    SEED_INTERNAL_KEY,
    build_borrower_exit,
    build_collateral_release,
    from_psbt,
    to_psbt,
)
from vaultero.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def key_file(tmp_path: Path) -> str:
    path = tmp_path / "borrower.key"
    path.write_text(BORROWER_SECRET + "\n")
    return str(path)


def test_preimage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "preimage")
    data = json.loads(out)
    assert code == 0
    assert hashlib.sha256(bytes.fromhex(data["preimage"])).hexdigest() == data["preimage_hash"]


def test_escrow_address_matches_the_seed_vector(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "escrow-address",
        "--network",
        "regtest",
        "--internal-key",
        "seed",
        "--borrower-key",
        "7592aab5d43618dda13fba71e3993cd7517a712d3da49664c06ee1bd3d1f70af",
        "--lender-key",
        "e5740e63bad28081ed7cf654dd6c19029ca03382fc05ab5f5dda81f2c55b845b",
        "--borrower-hash",
        "a" * 64,
        "--t0",
        "100",
    )
    assert code == 0
    data = json.loads(out)
    assert data["address"] == "bcrt1pdj8zes7cr8nausad4lygdp3vgq7vue6w2shn0q6k208xppr6h84skm23rc"
    assert data["internal_key"] == SEED_INTERNAL_KEY


def _check_args(loan: Loan, psbt: str, max_fee: int) -> list[str]:
    return [
        "check-psbt",
        psbt,
        "--network",
        "regtest",
        "--borrower-key",
        loan.borrower_key,
        "--lender-key",
        loan.lender_key,
        "--borrower-hash",
        loan.escrow.preimage_hash,
        "--lender-hash",
        loan.collateral.preimage_hash,
        "--t0",
        str(loan.escrow.csv_blocks),
        "--t1",
        str(loan.collateral.csv_blocks),
        "--max-fee",
        str(max_fee),
    ]


def test_check_then_sign_tx1(
    capsys: pytest.CaptureFixture[str], loan: Loan, key_file: str, tmp_path: Path
) -> None:
    template = tx1(loan)
    psbt = to_psbt(template)
    code, out, _ = run(capsys, *_check_args(loan, psbt, template.fee))
    assert code == 0
    assert json.loads(out)["ok"] is True
    # a fee above the borrower's limit fails the check
    with pytest.raises(SystemExit) as stop:
        run(capsys, *_check_args(loan, psbt, template.fee - 1))
    assert stop.value.code == 1
    assert json.loads(capsys.readouterr().out)["checks"]["fee_within_limit"] is False
    # a TX_1 paying a collateral address with another H_L fails it too
    (tmp_path / "tx1.psbt").write_text(psbt)
    args = _check_args(loan, "@" + str(tmp_path / "tx1.psbt"), template.fee)
    args[args.index("--lender-hash") + 1] = "cd" * 32
    with pytest.raises(SystemExit):
        run(capsys, *args)
    assert json.loads(capsys.readouterr().out)["checks"]["pays_collateral_address"] is False
    # sign offline: the PSBT comes back with a signature the lender can verify
    code, out, _ = run(capsys, "sign", psbt, "--key-file", key_file)
    assert code == 0
    assert list(from_psbt(out.strip()).signatures) == [loan.borrower_key]


def test_exit_and_release_print_valid_transactions(
    capsys: pytest.CaptureFixture[str], loan: Loan, key_file: str
) -> None:
    common = [
        "--network",
        "regtest",
        "--key-file",
        key_file,
        "--lender-key",
        loan.lender_key,
        "--txid",
        loan.outpoint.txid,
        "--vout",
        str(loan.outpoint.vout),
        "--feerate",
        "2",
    ]
    code, out, _ = run(
        capsys,
        "exit",
        *common,
        "--value",
        "60000",
        "--borrower-hash",
        loan.escrow.preimage_hash,
        "--t0",
        "100",
    )
    assert code == 0
    exit_template = build_borrower_exit(
        escrow=loan.escrow,
        outpoint=loan.outpoint,
        value=60_000,
        feerate_sat_vb=2,
        network="regtest",
    )
    assert consensus_accepts(exit_template, json.loads(out)["hex"])
    code, out, _ = run(
        capsys,
        "release",
        *common,
        "--value",
        "70000",
        "--lender-hash",
        loan.collateral.preimage_hash,
        "--lender-preimage",
        loan.preimage_lender.hex(),
        "--t1",
        "27150",
    )
    assert code == 0
    release_template = build_collateral_release(
        collateral=loan.collateral,
        outpoint=loan.outpoint,
        value=70_000,
        feerate_sat_vb=2,
        network="regtest",
    )
    assert consensus_accepts(release_template, json.loads(out)["hex"])


def test_errors_are_one_clear_line(
    capsys: pytest.CaptureFixture[str], loan: Loan, key_file: str, tmp_path: Path
) -> None:
    code, _, err = run(capsys, "sign", "garbage", "--key-file", key_file)
    assert code == 2
    assert err == "error: PSBT is not valid base64\n"
    code, _, err = run(capsys, "sign", to_psbt(tx1(loan)), "--key-file", str(tmp_path / "none"))
    assert code == 2
    assert err.startswith("error: cannot read key file")
    code, _, err = run(
        capsys,
        "release",
        "--network",
        "regtest",
        "--key-file",
        key_file,
        "--lender-key",
        loan.lender_key,
        "--txid",
        loan.outpoint.txid,
        "--vout",
        "1",
        "--feerate",
        "2",
        "--value",
        "70000",
        "--lender-hash",
        loan.collateral.preimage_hash,
        "--lender-preimage",
        loan.preimage_borrower.hex(),
        "--t1",
        "27150",
    )
    assert code == 2
    assert err.startswith("error: preimage does not hash to")


def test_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vaultero", "preimage"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == {"preimage", "preimage_hash"}
