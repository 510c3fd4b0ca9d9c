"""Operator roles as Django groups. A staff user gets a role by joining its group:

- viewer: reads everything the desk records (admin and API), changes nothing;
- operator: a viewer who also approves held lender actions, retries failed work, rescans,
  runs the watchdog/reconciler, rebroadcasts and bumps transactions, acknowledges alerts;
- admin: an operator who also manages users, API keys and tokens, and login lockouts.

The admin's actions and the API check these permissions, never `is_staff` alone. A data
migration creates the groups; `roles_sync` runs again after every `migrate`, so models added
later are covered.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q

VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
ROLES = (VIEWER, OPERATOR, ADMIN)
DESK_APPS = ("btcloan", "loans", "chainwatch", "bitcoin")

OPERATOR_ACTIONS = (
    "approve_lender_action",
    "retry_work",
    "rescan_chain",
    "rebroadcast_transaction",
)
# (app_label, codename) pairs only an admin holds.
ADMIN_ONLY = (
    *(("auth", f"{verb}_user") for verb in ("add", "change", "delete", "view")),
    ("auth", "view_group"),
    *(("btcloan", f"{verb}_apikey") for verb in ("change", "delete")),
    *(("btcloan", f"{verb}_accesstoken") for verb in ("change", "delete")),
    *(("axes", f"{verb}_accessattempt") for verb in ("view", "delete")),
    ("axes", "view_accessfailurelog"),
    ("axes", "view_accesslog"),
)


def _pairs(pairs: Any) -> Q:
    query = Q(pk__in=[])
    for app_label, codename in pairs:
        query |= Q(content_type__app_label=app_label, codename=codename)
    return query


def role_permissions_query(role: str) -> Q:
    """The permissions of a role, as a filter on auth.Permission."""
    viewer = Q(content_type__app_label__in=DESK_APPS, codename__startswith="view_")
    if role == VIEWER:
        return viewer
    operator = (
        viewer
        | _pairs(("btcloan", codename) for codename in OPERATOR_ACTIONS)
        | _pairs([("btcloan", "change_alert")])
    )
    if role == OPERATOR:
        return operator
    if role == ADMIN:
        return operator | _pairs(ADMIN_ONLY)
    raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")


def roles_sync(group_model: Any, permission_model: Any) -> None:
    """Create the groups and set their permissions exactly (models passed in, so a migration
    can use its historical ones)."""
    for role in ROLES:
        group, _ = group_model.objects.get_or_create(name=role)
        group.permissions.set(permission_model.objects.filter(role_permissions_query(role)))


def roles_sync_after_migrate(sender: Any, **kwargs: Any) -> None:
    """post_migrate (also sent after a test's flush): once every app has its permissions (the
    signal's last app), the roles get those of models added since the data migration."""
    from django.apps import apps
    from django.contrib.auth.models import Group, Permission

    with_models = [config for config in apps.get_app_configs() if config.models_module]
    if with_models and sender is with_models[-1]:
        roles_sync(Group, Permission)


def user_role_set(*, user: Any, role: str) -> None:
    """Give a staff user exactly one role (its group), replacing any other role."""
    from django.contrib.auth.models import Group, Permission

    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if not Group.objects.filter(name=role).exists():
        roles_sync(Group, Permission)
    user.groups.remove(*Group.objects.filter(name__in=ROLES))
    user.groups.add(Group.objects.get(name=role))
