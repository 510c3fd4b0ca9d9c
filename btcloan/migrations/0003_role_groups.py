"""The operator roles (viewer, operator, admin) as groups with their permissions."""

from typing import Any

from django.contrib.auth.management import create_permissions
from django.db import migrations

from btcloan.roles import roles_sync


def create_roles(apps: Any, schema_editor: Any) -> None:
    # Permissions are normally created after the whole migrate run; the roles need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    roles_sync(apps.get_model("auth", "Group"), apps.get_model("auth", "Permission"))


def drop_roles(apps: Any, schema_editor: Any) -> None:
    apps.get_model("auth", "Group").objects.filter(
        name__in=("viewer", "operator", "admin")
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("btcloan", "0002_operator_roles"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("axes", "0010_accessattemptexpiration"),
        ("loans", "0004_event_position"),
        ("chainwatch", "0003_outbox_guards_retries_replacements"),
        ("bitcoin", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_roles, drop_roles)]
