"""gunicorn's configuration for the web process: `gunicorn -c deploy/gunicorn.conf.py`.

Every value can be changed from the environment (GUNICORN_BIND, WEB_CONCURRENCY, ...). The app
is loaded once in the master (preload_app), so an unsafe configuration ends start-up with one
line before any worker forks (btcloan.wsgi -> btcloan.startup.refuse_unsafe_config). Access and
error logs go through the same secret redaction as the service's own logs.
"""

import os

wsgi_app = "btcloan.wsgi:application"
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000").split(",")
# Sync workers: the API is short database reads and writes; chain calls happen in Celery.
workers = int(os.environ.get("WEB_CONCURRENCY", "3"))
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "2000"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "200"))
preload_app = True
# No control socket: it would live at one path per user ($HOME/.gunicorn), shared by every
# gunicorn of that user on the machine; stop and reload with signals instead.
control_socket_disable = True
# Requests larger than this are refused by gunicorn itself; bodies by Django (413).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# Forwarded headers are trusted only from these proxies (comma-separated addresses).
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1")
proxy_allow_ips = forwarded_allow_ips
# No request bodies, headers or query strings beyond what the redacted access line shows.
accesslog = "-"
errorlog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")

# gunicorn merges this over its defaults (whose root logger names "console").
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "btcloan.logs.RedactSecretsFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact"],
            "stream": "ext://sys.stdout",
        },
        "error_console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact"],
            "stream": "ext://sys.stderr",
        },
    },
    "loggers": {
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
    },
}
