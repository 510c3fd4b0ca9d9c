"""The bitcoin app's pure logic and its database rules (no node needed)."""

from __future__ import annotations

import hashlib
import pickle
import secrets
from decimal import Decimal
from typing import Any

import coincurve
import pytest

import vaultero
from bitcoin.facts import Fact, PaymentPayload, fact_record, facts_deliver, register_fact_handler
from bitcoin.fees import FeeError, clamp_feerate
from bitcoin.models import (
    BitcoinFact,
    BitcoinTransaction,
    FactKind,
    SpendPurpose,
    TransactionTransition,
    TxPurpose,
    TxStatus,
    WatchPurpose,
)
from bitcoin.rpc import TransactionRejected, btc_to_sats, sats_to_btc
from bitcoin.services import (
    SigningRefused,
    TransactionError,
    WatchError,
    lender_signature,
    spend_register,
    spend_register_template,
    transaction_register,
    transaction_transition,
    watch_outpoint,
    watch_script,
)
from bitcoin.services.bumping import ChildPlan, Rival, child_vsize
from bitcoin.signer import LocalKeySigner, SignerConfigError, SigningRequest, get_signer
from bitcoin.witness import describe_spend
from tests.bitcoin.conftest import LENDER_SECRET, NETWORK, new_loan

OUTPOINT = ("ab" * 32, 1)


def tx1_template(lender_key: str) -> tuple[Any, Any]:
    loan = new_loan(lender_key)
    template = vaultero.build_collateral_lock(
        escrow=loan.escrow,
        outpoint=vaultero.Outpoint(*OUTPOINT),
        value=1_100_000,
        collateral=loan.collateral,
        loan_sats=1_000_000,
        origination_fee_sats=10_000,
        feerate_sat_vb=3,
        network=NETWORK,
    )
    return loan, template


# --- amounts and fees -------------------------------------------------------------------------
def test_btc_amounts_become_integer_sats_at_the_boundary() -> None:
    assert btc_to_sats(Decimal("0.00000001")) == 1
    assert btc_to_sats(Decimal("20999999.97690000")) == 2_099_999_997_690_000
    assert sats_to_btc(1) == Decimal("0.00000001")
    with pytest.raises(ValueError, match="not a whole number of satoshis"):
        btc_to_sats(Decimal("0.000000001"))
    with pytest.raises(TypeError, match="never float"):
        btc_to_sats(0.1)  # type: ignore[arg-type]


def test_feerate_policy_clamps_the_estimate() -> None:
    policy = {"floor": 2, "cap": 100, "fallback": 20}
    assert clamp_feerate(Decimal("7.01"), **policy) == 8  # rounded up
    assert clamp_feerate(Decimal("0.5"), **policy) == 2
    assert clamp_feerate(Decimal(5000), **policy) == 100
    assert clamp_feerate(None, **policy) == 20
    with pytest.raises(FeeError, match="above the cap"):
        clamp_feerate(None, floor=10, cap=5, fallback=7)


def test_cpfp_child_pays_for_the_package_the_rival_and_the_child_it_replaces(
    settings: Any,
) -> None:
    settings.BITCOIN_FEERATE_FLOOR_SAT_VB = 1
    assert [child_vsize(n) for n in (1, 2, 3)] == [111, 169, 226]
    parent = BitcoinTransaction(fee_sats=200, vsize=200)
    plain = ChildPlan(parent=parent, rate=20, rival=None, previous=None)
    assert plain.fee(111) == 20 * 311 - 200
    # A parent that already overpays: the child still pays its own way at the floor.
    rich = ChildPlan(parent=BitcoinTransaction(fee_sats=99_999, vsize=200), rate=20,
                     rival=None, previous=None)  # fmt: skip
    assert rich.fee(111) == 111
    # Package RBF: the rival's fee with descendants plus the package's relay at 1 sat/vB...
    rival = Rival(fee_with_descendants=9_000, rate_sat_kvb=30_000)
    racing = ChildPlan(parent=parent, rate=2, rival=rival, previous=None)
    assert racing.fee(111) == max(9_000 + 311 - 200, 30 * 311 + 1 - 200)
    # ...and a child replacing our previous one pays more and at a higher feerate.
    previous = BitcoinTransaction(fee_sats=5_000, vsize=111)
    again = ChildPlan(parent=parent, rate=2, rival=None, previous=previous)
    assert again.fee(111) == 5_000 + 111
    assert again.fee(169) == max(5_000 + 169, 5_000 * 169 // 111 + 1)


def test_reject_reasons_are_classified() -> None:
    def rejected(code: int, message: str) -> TransactionRejected:
        return TransactionRejected("sendrawtransaction", code, message)

    assert rejected(-26, "non-BIP68-final").temporary
    assert rejected(-27, "Transaction already in block chain").already_known
    assert rejected(-26, "txn-already-in-mempool").already_known
    bad = rejected(-26, "mandatory-script-verify-flag-failed (Invalid Schnorr signature)")
    assert not bad.temporary
    assert not bad.already_known
    assert not bad.fee_too_low
    # fee refusals: a package or a replacement is the answer, not waiting for the same bytes
    for reason in (
        "mempool min fee not met, 280 < 1370",
        "min relay fee not met, 0 < 137",
        "insufficient fee, rejecting replacement ab12; new feerate 0.00002 BTC/kvB <= ...",
        "too-large-cluster",
    ):
        assert rejected(-26, reason).fee_too_low, reason
        assert not rejected(-26, reason).temporary, reason


# --- transaction codec and sighash ------------------------------------------------------------
def test_the_signers_request_signs_what_the_template_signs(lender_key: str) -> None:
    _loan, template = tx1_template(lender_key)
    tx = vaultero.Transaction.from_hex(template.unsigned_tx.hex())
    assert tx.txid == template.txid
    assert tx.serialize(with_witness=False) == template.unsigned_tx
    request = SigningRequest(
        tx=tx,
        input_index=0,
        prevouts=(vaultero.TxOut(template.value, template.spent_script_pubkey),),
        leaf_script=template.leaf_script,
    )
    assert request.sighash() == template.sighash


# --- the signer -------------------------------------------------------------------------------
def test_the_lender_key_never_shows(settings: Any, tmp_path: Any) -> None:
    signer = LocalKeySigner.from_settings()
    for text in (repr(signer), str(signer), f"{signer!r}"):
        assert LENDER_SECRET not in text
        assert "redacted" in text
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(signer)
    assert not hasattr(signer, "__dict__")
    assert signer.x_only_public_key().hex() == vaultero.xonly_public_key(LENDER_SECRET)

    settings.LENDER_BTC_PRIVATE_KEY = ""
    key_file = tmp_path / "lender.key"
    key_file.write_text(LENDER_SECRET + "\n")
    settings.LENDER_BTC_KEY_FILE = str(key_file)
    assert LocalKeySigner.from_settings().x_only_public_key() == signer.x_only_public_key()

    key_file.write_text(LENDER_SECRET[:-2] + "zz")
    with pytest.raises(SignerConfigError) as bad:
        LocalKeySigner.from_settings()
    assert LENDER_SECRET[:20] not in str(bad.value)
    settings.LENDER_BTC_KEY_FILE = ""
    with pytest.raises(SignerConfigError, match="no lender Bitcoin key"):
        LocalKeySigner.from_settings()


def test_the_key_path_address_is_the_one_vaultero_pays(lender_key: str) -> None:
    expected = vaultero.address_to_script_pubkey(
        vaultero.key_path_address(lender_key, NETWORK), NETWORK
    )
    assert get_signer().key_path_script_pubkey() == expected


def test_key_path_signatures_verify_against_the_tweaked_key() -> None:
    for _ in range(4):  # both parities of the internal key, most likely
        secret = secrets.token_bytes(32)
        signer = LocalKeySigner(secret)
        tx = vaultero.Transaction.from_hex(
            "02000000" "01" + "cd" * 32 + "00000000" "00" "fdffffff"
            "01" "e803000000000000" "22" + signer.key_path_script_pubkey().hex() + "00000000"
        )  # fmt: skip
        prevout = vaultero.TxOut(5000, signer.key_path_script_pubkey())
        request = SigningRequest(tx, 0, (prevout,), None)
        signature = signer.sign(request)
        output_key = coincurve.PublicKeyXOnly(signer.key_path_script_pubkey()[2:])
        assert output_key.verify(signature, request.sighash())


# --- signing only what was registered ---------------------------------------------------------
def test_the_signer_signs_only_registered_spends_of_known_loans(db: None, lender_key: str) -> None:
    loan, template = tx1_template(lender_key)
    with pytest.raises(SigningRefused, match="not the escrow output watched"):
        spend_register_template(
            loan_ref=loan.ref, purpose=SpendPurpose.COLLATERAL_LOCK, template=template
        )
    watch_outpoint(txid=OUTPOINT[0], vout=OUTPOINT[1], loan_ref="another-loan",
                   purpose=WatchPurpose.ESCROW)  # fmt: skip
    with pytest.raises(SigningRefused, match="not the escrow output watched"):
        spend_register_template(
            loan_ref=loan.ref, purpose=SpendPurpose.COLLATERAL_LOCK, template=template
        )
    with pytest.raises(SigningRefused, match="no spend"):
        lender_signature(loan_ref="another-loan", txid=template.txid)

    other, other_template = tx1_template(lender_key)
    watch_outpoint(txid=OUTPOINT[0], vout=OUTPOINT[1] + 1, loan_ref=other.ref,
                   purpose=WatchPurpose.ESCROW)  # fmt: skip
    with pytest.raises(SigningRefused, match="not the escrow output"):  # vout 1 is not theirs
        spend_register_template(
            loan_ref=other.ref, purpose=SpendPurpose.COLLATERAL_LOCK, template=other_template
        )

    third = new_loan(lender_key)
    watch_outpoint(txid="cd" * 32, vout=0, loan_ref=third.ref, purpose=WatchPurpose.COLLATERAL)
    sweep = vaultero.build_lender_sweep(
        collateral=third.collateral, outpoint=vaultero.Outpoint("cd" * 32, 0), value=500_000,
        destination=third.escrow_address, feerate_sat_vb=2, network=NETWORK,
    )  # fmt: skip
    with pytest.raises(SigningRefused, match="lender's own address"):
        spend_register_template(
            loan_ref=third.ref, purpose=SpendPurpose.LENDER_SWEEP, template=sweep
        )
    with pytest.raises(SigningRefused, match="not a transaction"):
        spend_register(
            loan_ref=third.ref, purpose=SpendPurpose.LENDER_SWEEP, unsigned_hex="00zz",
            prevout_script_pubkey=b"", prevout_value_sats=1,
        )  # fmt: skip


def test_a_registered_spend_gets_the_lenders_signature(db: None, lender_key: str) -> None:
    loan, template = tx1_template(lender_key)
    watch_outpoint(txid=OUTPOINT[0], vout=OUTPOINT[1], loan_ref=loan.ref,
                   purpose=WatchPurpose.ESCROW)  # fmt: skip
    spend_register_template(
        loan_ref=loan.ref, purpose=SpendPurpose.COLLATERAL_LOCK, template=template
    )
    signature = lender_signature(loan_ref=loan.ref, txid=template.txid)
    assert vaultero.verify_input(template, lender_key, signature)


# --- watches ----------------------------------------------------------------------------------
def test_a_script_is_watched_for_one_loan(db: None) -> None:
    first = watch_script(script_pubkey="5120" + "11" * 32, loan_ref="a")
    assert watch_script(script_pubkey="5120" + "11" * 32, loan_ref="a").pk == first.pk
    with pytest.raises(WatchError, match="already watched for loan a"):
        watch_script(script_pubkey="5120" + "11" * 32, loan_ref="b")
    with pytest.raises(WatchError, match="must be hex"):
        watch_script(script_pubkey="xyz", loan_ref="a")
    with pytest.raises(WatchError, match="64 hex"):
        watch_outpoint(txid="ab", vout=0, loan_ref="a", purpose=WatchPurpose.ESCROW)


# --- the transaction lifecycle ----------------------------------------------------------------
def test_status_moves_only_along_the_table_and_each_move_is_audited(
    db: None, lender_key: str
) -> None:
    _loan, template = tx1_template(lender_key)
    tx = transaction_register(raw_hex=template.unsigned_tx.hex(), purpose=TxPurpose.OTHER,
                              status=TxStatus.BUILT)  # fmt: skip
    assert not transaction_transition(tx_id=tx.pk, to=TxStatus.CONFIRMED, cause="no")
    assert not transaction_transition(tx_id=tx.pk, to=TxStatus.IN_MEMPOOL, cause="no")
    assert transaction_transition(tx_id=tx.pk, to=TxStatus.SIGNED, cause="signed")
    assert transaction_transition(tx_id=tx.pk, to=TxStatus.IN_MEMPOOL, cause="sent")
    assert not transaction_transition(tx_id=tx.pk, to=TxStatus.SIGNED, cause="no")
    moves = list(TransactionTransition.objects.filter(transaction=tx).values_list(
        "from_status", "to_status"))  # fmt: skip
    assert moves == [("", "built"), ("built", "signed"), ("signed", "in_mempool")]
    with pytest.raises(TransactionError, match="already registered as other"):
        transaction_register(raw_hex=template.unsigned_tx.hex(), purpose=TxPurpose.CPFP)
    with pytest.raises(TransactionError, match="not a transaction"):
        transaction_register(raw_hex="0200", purpose=TxPurpose.OTHER)
    assert BitcoinTransaction.objects.count() == 1


# --- facts ------------------------------------------------------------------------------------
def test_facts_are_handed_on_in_order_exactly_once_and_a_failure_holds_back_only_its_loan(
    db: None,
) -> None:
    for n, ref in enumerate(["a", "b", "a", "b"]):
        assert fact_record(kind=FactKind.PAYMENT_SEEN, loan_ref=ref, dedupe_key=f"k{n}",
                           payload=PaymentPayload(txid="aa" * 32, vout=n))  # fmt: skip
    assert not fact_record(
        kind=FactKind.PAYMENT_SEEN, loan_ref="a", dedupe_key="k0", payload=PaymentPayload(txid="")
    )
    previous = register_fact_handler(None)  # loans' own handler, registered at start-up
    assert facts_deliver()["pending"] == 4  # nobody registered: they wait

    seen: list[int] = []
    failing = {"a"}

    def handler(fact: Fact) -> None:
        if fact.loan_ref in failing:
            raise RuntimeError("loan a is busy")
        assert isinstance(fact.payload, PaymentPayload)
        seen.append(fact.payload.vout)

    register_fact_handler(handler)
    try:
        assert facts_deliver() == {"delivered": 2, "failed": 1, "pending": 2}
        assert seen == [1, 3]
        assert BitcoinFact.objects.get(dedupe_key="k0").attempts == 1
        failing.clear()
        assert facts_deliver()["delivered"] == 2
        assert facts_deliver()["delivered"] == 0
    finally:
        register_fact_handler(previous)
    assert seen == [1, 3, 0, 2]


# --- witnesses --------------------------------------------------------------------------------
def test_a_spend_tells_its_leaf_and_preimage(lender_key: str) -> None:
    loan = new_loan(lender_key)
    release = vaultero.build_collateral_release(
        collateral=loan.collateral, outpoint=vaultero.Outpoint(*OUTPOINT), value=600_000,
        feerate_sat_vb=2, network=NETWORK,
    )  # fmt: skip
    signed = vaultero.finalize(
        release, borrower_sig=vaultero.sign_input(release, loan.borrower_secret), preimage=loan.p_l
    )
    assert describe_spend(signed, 0) == (1, loan.p_l.hex())
    assert hashlib.sha256(loan.p_l).hexdigest() == loan.collateral.preimage_hash


def test_a_timelocked_spend_is_leaf0_and_reveals_nothing(lender_key: str) -> None:
    loan = new_loan(lender_key)
    sweep = vaultero.build_lender_sweep(
        collateral=loan.collateral, outpoint=vaultero.Outpoint(*OUTPOINT), value=600_000,
        feerate_sat_vb=2, network=NETWORK,
    )  # fmt: skip
    signed = vaultero.finalize(sweep, lender_sig=vaultero.sign_input(sweep, LENDER_SECRET))
    assert describe_spend(signed, 0) == (0, "")


def test_spends_not_through_our_leaves_tell_nothing(lender_key: str) -> None:
    """A key-path spend, a leaf that is not one of ours byte for byte, and bytes that are not
    a transaction: no leaf, no preimage (the heuristics that guessed at such leaves are gone)."""
    loan = new_loan(lender_key)
    release = vaultero.build_collateral_release(
        collateral=loan.collateral, outpoint=vaultero.Outpoint(*OUTPOINT), value=600_000,
        feerate_sat_vb=2, network=NETWORK,
    )  # fmt: skip
    tx = release.transaction()
    assert describe_spend(tx.with_witness(0, (b"\x01" * 64,)).to_hex(), 0) == (None, "")
    # The release leaf with a trailing OP_NOP: same shape to a heuristic, not our leaf.
    foreign_leaf = release.leaf_script + b"\x61"
    witness = (b"\x01" * 64, loan.p_l, foreign_leaf, release.control_block)
    assert describe_spend(tx.with_witness(0, witness).to_hex(), 0) == (None, "")
    assert describe_spend("00", 0) == (None, "")
