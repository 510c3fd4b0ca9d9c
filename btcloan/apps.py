from django.apps import AppConfig
from django.core import checks


class BtcloanConfig(AppConfig):
    """The project itself: start-up checks and service-wide tasks."""

    name = "btcloan"
    verbose_name = "btcloan service"

    def ready(self) -> None:
        from btcloan.startup import database_reachable, production_config_safe

        checks.register(database_reachable, checks.Tags.database)
        checks.register(production_config_safe, checks.Tags.security, deploy=True)

        from django.db.models.signals import post_migrate

        from btcloan.roles import roles_sync_after_migrate

        post_migrate.connect(roles_sync_after_migrate)
