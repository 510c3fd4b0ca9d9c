"""ReorgNotice carries the contract address, and delivery keys name the contract.

A loan is (chain, contract, id), and a contract redeployed on the same chain numbers its loans
from 1 again: "loan:7" was ambiguous. Keys become "loan:<address>:<id>",
"swap:<address>:<hash>" and "contract:<address>" (address in lower case); existing rows are
rewritten so that a key's pending events stay in one queue across the upgrade."""

from typing import Any

from django.db import migrations, models
from django.db.models import OuterRef, Subquery, Value
from django.db.models.functions import Concat, Lower, Substr

PREFIXES = ("loan:", "swap:")


def _rewrite_keys(model: Any) -> None:
    for prefix in PREFIXES:
        model.objects.filter(delivery_key__startswith=prefix).update(
            delivery_key=Concat(
                Value(prefix),
                Lower("contract_address"),
                Value(":"),
                Substr("delivery_key", len(prefix) + 1),
            )
        )
    model.objects.filter(delivery_key__startswith="contract:").update(
        delivery_key=Concat(Value("contract:"), Lower("contract_address"))
    )


def forwards(apps: Any, schema_editor: Any) -> None:
    EvmEvent = apps.get_model("chainwatch", "EvmEvent")
    ReorgNotice = apps.get_model("chainwatch", "ReorgNotice")
    # A notice's contract: the one whose events under that (old) key it was raised for.
    emitter = EvmEvent.objects.filter(
        chain_id=OuterRef("chain_id"), delivery_key=OuterRef("delivery_key")
    ).order_by("-block_number")
    ReorgNotice.objects.update(contract_address=Subquery(emitter.values("contract_address")[:1]))
    ReorgNotice.objects.filter(contract_address__isnull=True).update(contract_address="")
    _rewrite_keys(ReorgNotice)
    _rewrite_keys(EvmEvent)


class Migration(migrations.Migration):
    dependencies = [("chainwatch", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="reorgnotice",
            name="contract_address",
            field=models.CharField(max_length=42, null=True),
        ),
        migrations.AlterField(
            model_name="evmevent",
            name="delivery_key",
            field=models.CharField(max_length=200),
        ),
        migrations.AlterField(
            model_name="reorgnotice",
            name="delivery_key",
            field=models.CharField(max_length=200),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="reorgnotice",
            name="contract_address",
            field=models.CharField(max_length=42),
        ),
    ]
