"""Shapes of the loan API. Wei and uint256 ids are strings (JSON numbers lose precision past
2^53); sats are integers. Nothing secret is a field here: P_L never is."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any

from django.core.validators import RegexValidator
from rest_framework import serializers
from rest_framework.fields import Field

from loans.models import Loan
from loans.selectors import LoanDetail

# Published in the schema as each field's `pattern` (so clients, and generated tests, know what
# is accepted) and enforced by the same validator.
HEX64_PATTERN = r"^(0x)?[0-9a-fA-F]{64}$"
SIGNATURE_PATTERN = r"^(0x)?[0-9a-fA-F]{128}$"
# A whole number of satoshis in wei (10^10 wei per sat): ends in ten zeros, or is zero.
WEI_OF_SATS_PATTERN = r"^(?:[0-9]{0,68}0{10}|0{1,9})$"
# No loan can be larger than the whole rBTC supply (pegged 1:1 to bitcoin's 21 million).
MAX_LOAN_WEI = 21_000_000 * 10**18


def _pattern(pattern: str, message: str) -> RegexValidator:
    return RegexValidator(pattern, message=message, code="invalid")


# --- flat representation ------------------------------------------------------------------------
# DRF's generic to_representation (the fields built per serializer instance, get_attribute and
# a bound field per value) was most of the loan list's time at 10,000 loans (bench/api_bench.py:
# 35 of 50 ms for a page of 50). The loan serializers below compile their declared fields once
# into plain readers and converters: the same output (tests/api/test_loan_representation.py
# compares it with DRF's own), the same schema, a fraction of the work.
Represent = Callable[[Any], Any]
# Exact types only: a subclass may convert differently, so it keeps its own to_representation.
_CONVERTERS: dict[type, Represent] = {serializers.CharField: str, serializers.IntegerField: int}
_PLANS: dict[type, Represent] = {}


def _reader(source_attrs: list[str]) -> Represent:
    """DRF's get_attribute for our shapes: attributes of objects, keys of dicts (the detail's
    heads). Not `Mapping`: an ABC check per value cost as much as the rest of the read."""

    def read(instance: Any) -> Any:
        for attr in source_attrs:
            instance = instance[attr] if isinstance(instance, dict) else getattr(instance, attr)
            if instance is None:
                return None
        return instance

    return read


def _compile(fields: Iterable[tuple[str, Field]]) -> Represent:
    steps = [(name, _field_step(field)) for name, field in fields if not field.write_only]

    def represent(instance: Any) -> dict[str, Any]:
        return {name: step(instance) for name, step in steps}

    return represent


def _field_step(field: Field) -> Represent:
    if isinstance(field, serializers.Serializer) and field.source == "*":
        return _compile(field.fields.items())  # a group of the same object's fields
    read = _reader(field.source_attrs)
    if isinstance(field, serializers.ListSerializer):
        child = _compile(field.child.fields.items())
        convert: Represent = lambda items: [child(item) for item in items]  # noqa: E731
    elif isinstance(field, serializers.Serializer):
        convert = _compile(field.fields.items())
    else:
        convert = _CONVERTERS.get(type(field), field.to_representation)

    def step(instance: Any) -> Any:
        value = read(instance)
        return None if value is None else convert(value)

    return step


def _flat(serializer: serializers.Serializer, names: Iterable[str] | None = None) -> Represent:
    """The compiled representation of this serializer class (its fields are declared on the
    class, never per request or context), built on first use."""
    plan = _PLANS.get(type(serializer))
    if plan is None:
        fields = serializer.fields
        plan = _compile((name, fields[name]) for name in (names or fields))
        _PLANS[type(serializer)] = plan
    return plan


def _sources(fields: Mapping[str, Field]) -> list[str]:
    """The attributes (model columns) the fields read first."""
    names: list[str] = []
    for field in fields.values():
        if isinstance(field, serializers.Serializer) and field.source == "*":
            names += _sources(field.fields)
        else:
            names.append(field.source_attrs[0])
    return names


@cache
def loan_columns() -> tuple[str, ...]:
    """The Loan columns LoanSerializer reads: a list of loans can be read as `.values()` of
    just these (no model instance per row, no column nobody shows) and serialised alike."""
    return tuple(_sources(LoanSerializer().fields))


class EscrowSerializer(serializers.Serializer):
    address = serializers.CharField(source="escrow_address")
    internal_key = serializers.CharField(source="escrow_internal_key")
    txid = serializers.CharField(source="escrow_txid")
    vout = serializers.IntegerField(source="escrow_vout")
    value_sats = serializers.IntegerField(source="escrow_value_sats", allow_null=True)
    confirmed_height = serializers.IntegerField(source="escrow_confirmed_height", allow_null=True)
    csv_blocks = serializers.IntegerField(source="escrow_csv_blocks")


class CollateralSerializer(serializers.Serializer):
    address = serializers.CharField(source="collateral_address")
    txid = serializers.CharField(source="collateral_txid")
    vout = serializers.IntegerField(source="collateral_vout", allow_null=True)
    value_sats = serializers.IntegerField(source="collateral_value_sats", allow_null=True)
    confirmed_height = serializers.IntegerField(
        source="collateral_confirmed_height", allow_null=True
    )
    csv_blocks = serializers.IntegerField(source="collateral_csv_blocks")


class TimelocksSerializer(serializers.Serializer):
    loan_duration = serializers.IntegerField()
    t_borrower = serializers.IntegerField(source="timelock_borrower")
    t_btc_escrow = serializers.IntegerField(source="timelock_btc_escrow")
    t_lender = serializers.IntegerField(source="timelock_lender")
    t_btc_collateral = serializers.IntegerField(source="timelock_btc_collateral")


class BlocksSerializer(serializers.Serializer):
    request = serializers.IntegerField(source="request_block")
    offer = serializers.IntegerField(source="offer_block", allow_null=True)
    activation = serializers.IntegerField(source="activation_block", allow_null=True)
    repayment = serializers.IntegerField(source="repayment_block", allow_null=True)


class LoanSerializer(serializers.ModelSerializer):
    onchain_id = serializers.CharField()
    amount_wei = serializers.CharField()
    bond_wei = serializers.CharField(allow_null=True)
    escrow = EscrowSerializer(source="*")
    collateral = CollateralSerializer(source="*")
    timelocks = TimelocksSerializer(source="*")
    evm_blocks = BlocksSerializer(source="*")

    class Meta:
        model = Loan
        fields: tuple[str, ...] = (
            "id",
            "chain_id",
            "contract_address",
            "onchain_id",
            "contract_flavour",
            "status",
            "bitcoin_stage",
            "invalid_reason",
            "borrower_address",
            "borrower_btc_pubkey",
            "lender_btc_pubkey",
            "amount_wei",
            "bond_wei",
            "loan_sats",
            "preimage_hash_borrower",
            "preimage_hash_lender",
            "preimage_borrower",
            "escrow",
            "collateral",
            "timelocks",
            "evm_blocks",
            "created_at",
            "updated_at",
        )
        read_only_fields: tuple[str, ...] = fields

    def to_representation(self, instance: Any) -> dict[str, Any]:
        represented: dict[str, Any] = _flat(self)(instance)
        return represented


class DeadlineSerializer(serializers.Serializer):
    kind = serializers.CharField()
    chain = serializers.CharField()
    block = serializers.IntegerField(help_text="the last block in which `must_act` can act")
    blocks_left = serializers.IntegerField(help_text="after the next block; negative: passed")
    must_act = serializers.CharField()
    action = serializers.CharField()
    remedy_block = serializers.IntegerField(
        help_text="the first block in which the other party's remedy opens (the block after "
        "`block` on btcloan's contract, two after it for the seed's strict bounds)"
    )
    remedy_left = serializers.IntegerField(help_text="like blocks_left; <= 0: the remedy is open")


class TimelineEntrySerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    source = serializers.ChoiceField(choices=["evm", "bitcoin", "backend"])
    what = serializers.CharField()
    ref = serializers.CharField()
    block = serializers.IntegerField(allow_null=True)
    details = serializers.DictField()


class NextActionSerializer(serializers.Serializer):
    party = serializers.CharField()
    action = serializers.CharField()


class WorkflowSerializer(serializers.Serializer):
    type = serializers.CharField()
    status = serializers.CharField()
    current_step = serializers.CharField()
    steps_completed = serializers.ListField(child=serializers.CharField())
    retry_count = serializers.IntegerField()


class FlowSerializer(serializers.Serializer):
    party = serializers.CharField()
    item = serializers.CharField()
    owed_wei = serializers.CharField()
    paid_wei = serializers.CharField(help_text="what the loan contract pays out for it")
    stranded_wei = serializers.CharField(help_text="owed but left in the loan contract")


class AccountingSerializer(serializers.Serializer):
    outcome = serializers.CharField(help_text="the loan's last status on the contract")
    flows = FlowSerializer(many=True)
    stranded_wei = serializers.CharField()


class HeadsSerializer(serializers.Serializer):
    evm = serializers.IntegerField(allow_null=True)
    bitcoin = serializers.IntegerField(allow_null=True)


# What the detail adds to the loan's own fields, read from the LoanDetail.
DERIVED_FIELDS = ("heads", "deadlines", "next_action", "timeline", "workflows", "accounting")


class LoanDetailSerializer(LoanSerializer):
    """Serialises a `loans.selectors.LoanDetail`: the loan's fields, then what was derived."""

    heads = HeadsSerializer()
    deadlines = DeadlineSerializer(many=True)
    next_action = NextActionSerializer()
    timeline = TimelineEntrySerializer(many=True)
    workflows = WorkflowSerializer(many=True)
    accounting = AccountingSerializer()

    class Meta(LoanSerializer.Meta):
        fields = (*LoanSerializer.Meta.fields, *DERIVED_FIELDS)
        read_only_fields = fields

    def to_representation(self, instance: Any) -> dict[str, Any]:
        detail: LoanDetail = instance
        data = LoanSerializer(context=self.context).to_representation(detail.loan)
        data.update(_flat(self, DERIVED_FIELDS)(detail))
        return data


class CollateralTxSerializer(serializers.Serializer):
    txid = serializers.CharField()
    hex = serializers.CharField(help_text="TX_1 unsigned (no witness)")
    psbt = serializers.CharField(help_text="BIP-174/371 PSBT, base64")
    sighash = serializers.CharField(help_text="BIP-341 script-path sighash the borrower signs")
    leaf_script = serializers.CharField()
    control_block = serializers.CharField()
    fee_sats = serializers.IntegerField()
    feerate_sat_vb = serializers.IntegerField()
    outputs = serializers.ListField(child=serializers.DictField())


class BorrowerSignatureInSerializer(serializers.Serializer):
    signature = serializers.CharField(
        help_text="64-byte BIP-340 signature, hex",
        trim_whitespace=False,
        validators=[
            _pattern(SIGNATURE_PATTERN, "a signature is 64 bytes: 128 hex characters"),
        ],
    )

    def validate_signature(self, value: str) -> str:
        return value.removeprefix("0x").lower()


class BorrowerSignatureOutSerializer(serializers.Serializer):
    txid = serializers.CharField()
    sighash = serializers.CharField()
    verified_at = serializers.DateTimeField()


class SpendPsbtSerializer(serializers.Serializer):
    txid = serializers.CharField()
    psbt = serializers.CharField()
    hex = serializers.CharField()
    sighash = serializers.CharField()
    fee_sats = serializers.IntegerField()
    feerate_sat_vb = serializers.IntegerField()
    destination = serializers.CharField()
    valid_from_height = serializers.IntegerField(
        allow_null=True, help_text="first block the spend can be mined in (CSV), if timelocked"
    )
    needs = serializers.ListField(child=serializers.CharField())


class QuoteInSerializer(serializers.Serializer):
    borrower_btc_pubkey = serializers.CharField(
        help_text="x-only key, 64 hex",
        trim_whitespace=False,
        validators=[_pattern(HEX64_PATTERN, "borrower_btc_pubkey must be 64 hex characters")],
    )
    preimage_hash_borrower = serializers.CharField(
        help_text="H_B = sha256(P_B), 64 hex",
        trim_whitespace=False,
        validators=[_pattern(HEX64_PATTERN, "preimage_hash_borrower must be 64 hex characters")],
    )
    amount_wei = serializers.CharField(
        help_text="the loan amount in wei (a decimal string), a whole number of satoshis",
        trim_whitespace=False,
        validators=[
            _pattern(
                WEI_OF_SATS_PATTERN,
                "amount_wei must be a whole number of satoshis in wei (decimal digits)",
            )
        ],
    )

    def validate_borrower_btc_pubkey(self, value: str) -> str:
        return value.removeprefix("0x").lower()

    def validate_preimage_hash_borrower(self, value: str) -> str:
        return value.removeprefix("0x").lower()

    def validate_amount_wei(self, value: str) -> int:
        amount = int(value)
        if amount > MAX_LOAN_WEI:
            raise serializers.ValidationError(
                "amount_wei is above any loan the contract can hold "
                "(21,000,000 rBTC, all there will ever be)",
                code="max_value",
            )
        return amount


class DepositSerializer(serializers.Serializer):
    collateral_sats = serializers.IntegerField()
    origination_fee_sats = serializers.IntegerField()
    miner_fee_sats = serializers.IntegerField()
    total_sats = serializers.IntegerField()
    tx1_vsize = serializers.IntegerField()
    feerate_sat_vb = serializers.IntegerField()


class QuoteOutSerializer(serializers.Serializer):
    escrow_address = serializers.CharField()
    internal_key = serializers.CharField()
    lender_btc_pubkey = serializers.CharField()
    csv_blocks = serializers.IntegerField(help_text="t0 in Bitcoin blocks")
    deposit = DepositSerializer()
    request_loan = serializers.DictField(help_text="the requestLoan arguments")


class ParametersSerializer(serializers.Serializer):
    chain_id = serializers.IntegerField()
    loan_contract = serializers.CharField()
    etherswap_contract = serializers.CharField()
    lender_btc_pubkey = serializers.CharField()
    timelocks = serializers.DictField()
    processing_fee_wei = serializers.CharField()
    min_loan_amount_wei = serializers.CharField()
    lender_bond_percentage = serializers.IntegerField()
    origination_fee_percentage = serializers.IntegerField()
    evm_confirmations = serializers.IntegerField()
    bitcoin_network = serializers.CharField()
    bitcoin_confirmations = serializers.IntegerField()
    evm_blocks_per_bitcoin_block = serializers.IntegerField()
    escrow_internal_key = serializers.CharField()
