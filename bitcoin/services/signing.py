"""The lender's signatures: only for spends registered for a known loan.

`loans` builds a spend with vaultero (TX_1, the lender sweep) and registers it here with
`spend_register` (or `spend_register_template`); the signer will then sign exactly that
transaction, since its txid commits to every input, output, nSequence and the locktime.
`collateral_lock_complete` and `lender_sweep_complete` add the lender's signature, assemble
the witness and put the transaction in the outbox, ready for `transaction_broadcast`.
"""

from __future__ import annotations

import hashlib

import coincurve

import vaultero
from bitcoin.models import (
    BitcoinTransaction,
    LenderUtxo,
    RegisteredSpend,
    SpendPurpose,
    TxPurpose,
    TxStatus,
    UtxoStatus,
    WatchedOutpoint,
    WatchPurpose,
)
from bitcoin.services.transactions import transaction_register
from bitcoin.services.wallet import wallet_bind
from bitcoin.signer import SigningRequest, get_signer
from vaultero import Transaction, TransactionDecodeError, TxOut

# Which watched output each lender spend must spend.
SPENT_OUTPUT = {
    SpendPurpose.COLLATERAL_LOCK: WatchPurpose.ESCROW,
    SpendPurpose.LENDER_SWEEP: WatchPurpose.COLLATERAL,
}


class SigningRefused(ValueError):
    """The lender's key will not sign this (unknown loan, not a registered spend, mismatch)."""


def _hex(value: bytes | str) -> str:
    return value.hex() if isinstance(value, bytes) else bytes.fromhex(value).hex()


def spend_register(
    *,
    loan_ref: str,
    purpose: SpendPurpose,
    unsigned_hex: str,
    prevout_script_pubkey: bytes | str,
    prevout_value_sats: int,
    leaf_script: bytes | str = b"",
    control_block: bytes | str = b"",
    input_index: int = 0,
) -> RegisteredSpend:
    """Allow the lender's key to sign this transaction's input. The spent outpoint must be
    watched for `loan_ref` (escrow for TX_1, collateral for the sweep), or, for a CPFP child,
    be an output of one of that loan's own transactions; the leaf must name the lender's key;
    a sweep must pay the lender's own key-path address only."""
    try:
        tx = Transaction.from_hex(unsigned_hex)
    except TransactionDecodeError as exc:
        raise SigningRefused(f"not a transaction: {exc}") from None
    if not 0 <= input_index < len(tx.inputs):
        raise SigningRefused(f"input {input_index} does not exist")
    txin = tx.inputs[input_index]
    leaf = bytes.fromhex(_hex(leaf_script))
    signer = get_signer()
    if purpose == SpendPurpose.CPFP:
        if (
            leaf
            or not BitcoinTransaction.objects.filter(
                txid=txin.prev_txid, loan_ref=loan_ref
            ).exists()
        ):
            raise SigningRefused(
                "a CPFP child must spend, by key path, one of the loan's transactions"
            )
    else:
        if not WatchedOutpoint.objects.filter(
            txid=txin.prev_txid,
            vout=txin.prev_vout,
            loan_ref=loan_ref,
            purpose=SPENT_OUTPUT[purpose],
        ).exists():
            raise SigningRefused(
                f"{txin.prev_txid}:{txin.prev_vout} is not the {SPENT_OUTPUT[purpose]} output "
                f"watched for loan {loan_ref!r}"
            )
        if signer.x_only_public_key() not in leaf:
            raise SigningRefused("the leaf does not check the lender's key")
    if purpose in (SpendPurpose.LENDER_SWEEP, SpendPurpose.CPFP):
        ours = signer.key_path_script_pubkey()
        if any(out.script_pubkey != ours for out in tx.outputs):
            raise SigningRefused("a lender sweep must pay the lender's own address only")
    spend, created = RegisteredSpend.objects.get_or_create(
        txid=tx.txid,
        defaults={
            "unsigned_hex": tx.serialize(with_witness=False).hex(),
            "purpose": purpose,
            "loan_ref": loan_ref,
            "input_index": input_index,
            "prevout_txid": txin.prev_txid,
            "prevout_vout": txin.prev_vout,
            "prevout_script_pubkey": _hex(prevout_script_pubkey),
            "prevout_value_sats": prevout_value_sats,
            "leaf_script": leaf.hex(),
            "control_block": _hex(control_block),
        },
    )
    if not created and (spend.loan_ref, spend.purpose) != (loan_ref, purpose):
        raise SigningRefused(f"spend {tx.txid} is registered for another loan or purpose")
    return spend


def spend_register_template(
    *, loan_ref: str, purpose: SpendPurpose, template: vaultero.SpendTemplate
) -> RegisteredSpend:
    """`spend_register` from a vaultero SpendTemplate (TX_1 or the lender sweep)."""
    return spend_register(
        loan_ref=loan_ref,
        purpose=purpose,
        unsigned_hex=template.unsigned_tx.hex(),
        prevout_script_pubkey=template.spent_script_pubkey,
        prevout_value_sats=template.value,
        leaf_script=template.leaf_script,
        control_block=template.control_block,
    )


def _request(spend: RegisteredSpend) -> tuple[Transaction, SigningRequest]:
    tx = Transaction.from_hex(spend.unsigned_hex)
    if tx.txid != spend.txid or len(tx.inputs) != 1:
        raise SigningRefused("the registered spend is inconsistent")
    return tx, SigningRequest(
        tx=tx,
        input_index=spend.input_index,
        prevouts=(TxOut(spend.prevout_value_sats, bytes.fromhex(spend.prevout_script_pubkey)),),
        leaf_script=bytes.fromhex(spend.leaf_script) if spend.leaf_script else None,
    )


def lender_signature(*, loan_ref: str, txid: str) -> bytes:
    """The lender's 64-byte signature for a registered spend of `loan_ref` (not a secret)."""
    spend = RegisteredSpend.objects.filter(txid=txid, loan_ref=loan_ref).first()
    if spend is None:
        raise SigningRefused(f"no spend {txid} is registered for loan {loan_ref!r}")
    _tx, request = _request(spend)
    return get_signer().sign(request)


def _fee(spend: RegisteredSpend, tx: Transaction) -> int:
    return spend.prevout_value_sats - sum(out.value for out in tx.outputs)


def collateral_lock_complete(
    *,
    loan_ref: str,
    txid: str,
    borrower_signature: bytes | str,
    borrower_preimage: bytes | str,
    deadline_height: int | None = None,
) -> BitcoinTransaction:
    """TX_1 with the borrower's pre-signature, the lender's signature and P_B, in the outbox
    (status signed). The borrower's signature and the preimage are checked first.
    `deadline_height`: the first block in which the escrow's exit path is open (what the fee
    bumper races against)."""
    spend = RegisteredSpend.objects.filter(
        txid=txid, loan_ref=loan_ref, purpose=SpendPurpose.COLLATERAL_LOCK
    ).first()
    if spend is None:
        raise SigningRefused(f"TX_1 {txid} is not registered for loan {loan_ref!r}")
    tx, request = _request(spend)
    leaf = bytes.fromhex(spend.leaf_script)
    parsed = vaultero.parse_leaf(leaf)
    if parsed is None or parsed.name != "collateral_lock":
        raise SigningRefused("the registered leaf is not the escrow's collateral-lock leaf")
    sig_b = bytes.fromhex(_hex(borrower_signature))
    preimage = bytes.fromhex(_hex(borrower_preimage))
    if hashlib.sha256(preimage).hexdigest() != parsed.preimage_hash:
        raise SigningRefused("P_B does not hash to the H_B of the escrow")
    borrower_key = bytes.fromhex(str(parsed.borrower_key))
    if len(sig_b) != 64 or not coincurve.PublicKeyXOnly(borrower_key).verify(
        sig_b, request.sighash()
    ):
        raise SigningRefused("the borrower's signature does not verify for this TX_1")
    sig_l = get_signer().sign(request)
    witness = (sig_b, sig_l, preimage, leaf, bytes.fromhex(spend.control_block))
    signed = tx.with_witness(spend.input_index, witness)
    return transaction_register(
        raw_hex=signed.to_hex(),
        purpose=TxPurpose.COLLATERAL_LOCK,
        loan_ref=loan_ref,
        fee_sats=_fee(spend, tx),
        deadline_height=deadline_height,
    )


def lender_sweep_complete(
    *, loan_ref: str, txid: str, replaces: BitcoinTransaction | None = None
) -> BitcoinTransaction:
    """The lender's sweep of the collateral, signed, in the outbox. The node refuses it
    ("non-BIP68-final") until t1_btc blocks have passed: the broadcaster keeps it ready."""
    spend = RegisteredSpend.objects.filter(
        txid=txid, loan_ref=loan_ref, purpose=SpendPurpose.LENDER_SWEEP
    ).first()
    if spend is None:
        raise SigningRefused(f"sweep {txid} is not registered for loan {loan_ref!r}")
    tx, request = _request(spend)
    witness = (
        get_signer().sign(request),
        bytes.fromhex(spend.leaf_script),
        bytes.fromhex(spend.control_block),
    )
    signed = tx.with_witness(spend.input_index, witness)
    return transaction_register(
        raw_hex=signed.to_hex(),
        purpose=TxPurpose.LENDER_SWEEP,
        loan_ref=loan_ref,
        fee_sats=_fee(spend, tx),
        replaces=replaces,
    )


def cpfp_child_complete(
    *,
    parent: BitcoinTransaction,
    unsigned: Transaction,
    prevouts: tuple[TxOut, ...],
    reservations: list[str],
    replaces: BitcoinTransaction | None = None,
) -> BitcoinTransaction:
    """A CPFP child for `parent`, signed by key path on every input, in the outbox. Input 0
    must be an output of the loan's own transaction (registered as the CPFP spend); every
    other input a coin of the lender's wallet reserved for this child (`reservations`:
    the reservation token and the txid of the child it replaces). Every output pays the
    lender's own address. Signed outside any transaction: a remote signer may be slow."""
    ours = get_signer().key_path_script_pubkey()
    if len(prevouts) != len(unsigned.inputs) or any(p.script_pubkey != ours for p in prevouts):
        raise SigningRefused("a CPFP child spends only the lender's own outputs")
    spend_register(
        loan_ref=parent.loan_ref,
        purpose=SpendPurpose.CPFP,
        unsigned_hex=unsigned.to_hex(),
        prevout_script_pubkey=ours,
        prevout_value_sats=prevouts[0].value,
    )
    for txin, prevout in zip(unsigned.inputs[1:], prevouts[1:], strict=True):
        reserved = LenderUtxo.objects.filter(
            txid=txin.prev_txid,
            vout=txin.prev_vout,
            value_sats=prevout.value,
            status=UtxoStatus.RESERVED,
            reserved_by__in=reservations,
        ).exists()
        if not reserved:
            raise SigningRefused(
                f"{txin.prev_txid}:{txin.prev_vout} is not a wallet coin reserved for this child"
            )
    signer = get_signer()
    signed = unsigned
    for index in range(len(unsigned.inputs)):
        request = SigningRequest(
            tx=unsigned, input_index=index, prevouts=prevouts, leaf_script=None
        )
        signed = signed.with_witness(index, (signer.sign(request),))
    row = transaction_register(
        raw_hex=signed.to_hex(),
        purpose=TxPurpose.CPFP,
        loan_ref=parent.loan_ref,
        fee_sats=sum(p.value for p in prevouts) - sum(o.value for o in unsigned.outputs),
        parent=parent,
        status=TxStatus.SIGNED,
        replaces=replaces,
    )
    wallet_bind(tokens=reservations, txid=row.txid)
    return row
