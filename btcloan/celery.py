"""The Celery app. Every setting comes from `celeryconfig.py`, nowhere else."""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "btcloan.settings")

app = Celery("btcloan")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["btcloan", "chainwatch", "bitcoin", "loans"])


@signals.worker_init.connect
@signals.beat_init.connect
def _refuse_unsafe_config(**kwargs: object) -> None:
    """Workers and beat sign and decrypt: outside DEBUG they refuse an unsafe configuration
    with one line, as the web server does."""
    from btcloan.startup import fail_fast, refuse_unsafe_config

    with fail_fast():
        refuse_unsafe_config()
