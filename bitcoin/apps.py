from django.apps import AppConfig


class BitcoinConfig(AppConfig):
    name = "bitcoin"
    default_auto_field = "django.db.models.BigAutoField"
