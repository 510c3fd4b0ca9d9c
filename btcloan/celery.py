"""The Celery app. Every setting comes from `celeryconfig.py`, nowhere else."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "btcloan.settings")

app = Celery("btcloan")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["btcloan", "chainwatch", "bitcoin", "loans"])
