"""The Celery app. Every setting comes from `celeryconfig.py`, nowhere else."""

import os

from celery import Celery, Task, signals

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


@signals.task_prerun.connect
@signals.task_postrun.connect
def _recycle_database_connections(task: Task | None = None, **kwargs: object) -> None:
    """Around every task, as Django does around every request: a connection that broke or is
    older than DATABASE_CONN_MAX_AGE is closed, a healthy one kept for the next task
    (celeryconfig.CELERY_DB_REUSE_MAX says why this is not left to Celery). Not for a task run
    eagerly: it runs inside its caller's transaction."""
    if task is not None and getattr(task.request, "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()
