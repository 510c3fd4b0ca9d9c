from django.apps import AppConfig


class BitcoinConfig(AppConfig):
    name = "bitcoin"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from bitcoin import metrics
        from btcloan.health import register_probe
        from btcloan.metrics import register_scrape_hook

        register_scrape_hook("bitcoin", metrics.scrape)
        register_probe("bitcoin_node", metrics.bitcoin_node_probe)
        register_probe("scanner_lag", metrics.scanner_lag_probe, critical=False)
        register_probe("scanner_far_behind", metrics.scanner_far_behind_probe)

        from bitcoin.signer import lender_key_problems
        from btcloan.startup import register_config_check

        register_config_check("lender_btc_key", lender_key_problems)
