"""Every Celery setting of btcloan, in one place.

Broker and result backend come from Django settings (and so from the environment); with
nothing configured they are the filesystem transport and file results under var/, so a
first run needs no server.
"""

from __future__ import annotations

from django.conf import settings
from kombu import Exchange, Queue

broker_url = settings.CELERY_BROKER_URL
result_backend = settings.CELERY_RESULT_BACKEND
result_expires = 3600

if broker_url.startswith("filesystem://"):
    _broker_dir = settings.VAR_DIR / "broker"
    _broker_dir.mkdir(parents=True, exist_ok=True)
    # kombu's transport with an atomic put and claim (btcloan/broker.py says why).
    broker_transport = "btcloan.broker:Transport"
    broker_transport_options = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    # Redis: a task whose worker died is redelivered after this many seconds.
    broker_transport_options = {"visibility_timeout": 3600}

if result_backend.startswith("file://"):
    (settings.VAR_DIR / "celery-results").mkdir(parents=True, exist_ok=True)

broker_connection_retry_on_startup = True

# JSON only: task arguments are ids and small summaries, never pickled objects.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# One queue per concern, so a backlog of indexing never starves lender actions. `send`: the
# lender's signed transactions on their way out, in a queue of their own so they never wait
# behind the pollers of their app (a worker takes from its queues in turn).
_exchange = Exchange("btcloan", type="direct")
task_default_queue = "default"
task_queues = (
    Queue("default", _exchange, routing_key="default"),
    Queue("chainwatch", _exchange, routing_key="chainwatch"),
    Queue("bitcoin", _exchange, routing_key="bitcoin"),
    Queue("loans", _exchange, routing_key="loans"),
    Queue("send", _exchange, routing_key="send"),
)
task_default_exchange = "btcloan"
task_default_routing_key = "default"
# A task's own name is matched before the patterns.
task_routes = {
    "chainwatch.send_evm_transaction": {"queue": "send", "routing_key": "send"},
    "bitcoin.broadcast": {"queue": "send", "routing_key": "send"},
    "chainwatch.*": {"queue": "chainwatch", "routing_key": "chainwatch"},
    "bitcoin.*": {"queue": "bitcoin", "routing_key": "bitcoin"},
    "loans.*": {"queue": "loans", "routing_key": "loans"},
}

# Celery's Django fixup closes every database connection before and after each task, whatever
# CONN_MAX_AGE says, unless this is set (then once every this many tasks): a new PostgreSQL
# backend and handshake per task. btcloan.celery closes a connection around each task only when
# it broke or outlived DATABASE_CONN_MAX_AGE, as Django does around each request.
CELERY_DB_REUSE_MAX = 1000

# Tasks acknowledge on receipt by default; idempotent tasks opt into acks_late themselves.
task_acks_late = False
task_reject_on_worker_lost = False
worker_prefetch_multiplier = 1
task_time_limit = 300
task_soft_time_limit = 240
task_track_started = True
# Workers log through Django's LOGGING (JSON format, secret redaction), not Celery's own.
worker_hijack_root_logger = False
# Flower and `celery events` need these.
worker_send_task_events = True
task_send_sent_event = True

beat_schedule_filename = str(settings.VAR_DIR / "celerybeat-schedule")
# Filled by the apps' issues (pollers, watchdog, reconciler), each entry single-flight.
beat_schedule: dict[str, dict[str, object]] = {
    # chainwatch: index + hand on EVM events; send and follow the lender's transactions.
    "chainwatch-poll": {
        "task": "chainwatch.poll",
        "schedule": settings.EVM_POLL_INTERVAL,
        "options": {"expires": settings.EVM_POLL_INTERVAL},
    },
    "chainwatch-outbox": {
        "task": "chainwatch.outbox_pump",
        "schedule": settings.EVM_POLL_INTERVAL,
        "options": {"expires": settings.EVM_POLL_INTERVAL},
    },
    # bitcoin: scan blocks and the mempool; monitor open transactions (rebroadcast, CPFP).
    "bitcoin-scan": {
        "task": "bitcoin.scan",
        "schedule": settings.BITCOIN_POLL_INTERVAL,
        "options": {"expires": settings.BITCOIN_POLL_INTERVAL},
    },
    "bitcoin-monitor": {
        "task": "bitcoin.monitor",
        "schedule": settings.BITCOIN_MONITOR_INTERVAL,
        "options": {"expires": settings.BITCOIN_MONITOR_INTERVAL},
    },
    # btcloan: forget expired sign-in nonces and tokens.
    "btcloan-auth-purge": {"task": "btcloan.auth_records_purge", "schedule": 3600.0},
    # loans: act before every deadline; compare every open loan with the chains.
    "loans-watchdog": {
        "task": "loans.watchdog",
        "schedule": settings.LOAN_WATCHDOG_INTERVAL,
        "options": {"expires": settings.LOAN_WATCHDOG_INTERVAL},
    },
    "loans-reconcile": {
        "task": "loans.reconcile",
        "schedule": settings.LOAN_RECONCILE_INTERVAL,
        "options": {"expires": settings.LOAN_RECONCILE_INTERVAL},
    },
}
