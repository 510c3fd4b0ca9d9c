from django.apps import AppConfig


class LoansConfig(AppConfig):
    name = "loans"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The watchers hand their facts to us; they never import loans themselves.
        from btcloan.health import register_probe
        from btcloan.metrics import register_scrape_hook
        from loans import guards, metrics
        from loans.handlers import register

        register()
        guards.register()  # the guards the outbox and the broadcaster ask before acting
        register_scrape_hook("loans", metrics.scrape)
        # Checked at start-up by the web container's health check, and at every /health.
        register_probe("loan_contract_flavour", metrics.contract_flavour_probe)
