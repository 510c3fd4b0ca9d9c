from django.apps import AppConfig


class ChainwatchConfig(AppConfig):
    name = "chainwatch"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from btcloan.health import register_probe
        from btcloan.metrics import register_scrape_hook
        from chainwatch import metrics

        register_scrape_hook("chainwatch", metrics.scrape)
        register_probe("evm_node", metrics.evm_node_probe)
        register_probe("indexer_lag", metrics.indexer_lag_probe, critical=False)
        register_probe("indexer_far_behind", metrics.indexer_far_behind_probe)

        from btcloan.startup import register_config_check
        from chainwatch.outbox.services import lender_key_problems

        register_config_check("lender_evm_key", lender_key_problems)
