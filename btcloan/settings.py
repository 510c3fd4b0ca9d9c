"""Django settings, read from the environment (django-environ).

With nothing configured the service runs on embedded defaults: a SQLite file and a Celery
transport on the local filesystem, so a first run needs no servers. Setting DATABASE_URL,
CELERY_BROKER_URL and REDIS_URL moves the same code onto PostgreSQL and Redis.
"""

from __future__ import annotations

from pathlib import Path

import environ

from btcloan.config import ConfigError, parse_database_url, parse_url

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A local .env file is honoured for operators; the process environment wins over it.
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# Embedded state (SQLite file, filesystem broker, beat schedule) lives here.
VAR_DIR = Path(env.str("BTCLOAN_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="btcloan-insecure-development-key-change-me")
# Fernet keys (urlsafe base64, 32 bytes) for secrets at rest such as the lender preimages;
# the first encrypts, all decrypt (rotation). Unset: derived from SECRET_KEY, fit only for
# development (`manage.py check --deploy` warns).
BTCLOAN_ENCRYPTION_KEYS = env.list("BTCLOAN_ENCRYPTION_KEYS", default=[])
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "btcloan",
    "chainwatch",
    "bitcoin",
    "loans",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "btcloan.urls"
WSGI_APPLICATION = "btcloan.wsgi.application"
ASGI_APPLICATION = "btcloan.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Stores -------------------------------------------------------------------------------
DATABASE_URL = env.str("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'btcloan.sqlite3'}")
DATABASES = {"default": parse_database_url("DATABASE_URL", DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis backs single-flight locks and the cache; without it a file lock and a local cache
# serve a single-machine run.
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    parse_url("REDIS_URL", REDIS_URL, schemes=("redis", "rediss", "unix"))
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "filesystem://")
parse_url(
    "CELERY_BROKER_URL", CELERY_BROKER_URL, schemes=("redis", "rediss", "filesystem", "memory")
)
CELERY_RESULT_BACKEND = env.str(
    "CELERY_RESULT_BACKEND",
    default=REDIS_URL or f"file://{VAR_DIR / 'celery-results'}",
)

# --- Chains -------------------------------------------------------------------------------
EVM_RPC_URL = env.str("EVM_RPC_URL", default="http://127.0.0.1:8545")
parse_url("EVM_RPC_URL", EVM_RPC_URL, schemes=("http", "https", "ws", "wss"))
EVM_CHAIN_ID = env.int("EVM_CHAIN_ID", default=31337)  # anvil; Rootstock mainnet is 30
EVM_CONFIRMATIONS = env.int("EVM_CONFIRMATIONS", default=12)
EVM_POLL_INTERVAL = env.float("EVM_POLL_INTERVAL", default=5.0)
EVM_START_BLOCK = env.int("EVM_START_BLOCK", default=0)
LOAN_CONTRACT_ADDRESS = env.str("LOAN_CONTRACT_ADDRESS", default="")
ETHERSWAP_CONTRACT_ADDRESS = env.str("ETHERSWAP_CONTRACT_ADDRESS", default="")
# Where deploy_contracts records addresses and the deployment block when the env names none.
DEPLOYMENT_FILE = Path(env.str("DEPLOYMENT_FILE", default=str(VAR_DIR / "deployment.json")))
# The lender's EVM key: never logged, never returned by the API.
LENDER_EVM_PRIVATE_KEY = env.str("LENDER_EVM_PRIVATE_KEY", default="")

BITCOIN_RPC_URL = env.str("BITCOIN_RPC_URL", default="http://btcloan:btcloan@127.0.0.1:18443")
parse_url("BITCOIN_RPC_URL", BITCOIN_RPC_URL, schemes=("http", "https"))
BITCOIN_NETWORK = env.str("BITCOIN_NETWORK", default="regtest")
BITCOIN_NETWORKS = ("mainnet", "testnet", "signet", "regtest")
if BITCOIN_NETWORK not in BITCOIN_NETWORKS:
    raise ConfigError(
        f"BITCOIN_NETWORK must be one of {', '.join(BITCOIN_NETWORKS)} (got {BITCOIN_NETWORK!r})"
    )
BITCOIN_CONFIRMATIONS = env.int("BITCOIN_CONFIRMATIONS", default=6)
BITCOIN_POLL_INTERVAL = env.float("BITCOIN_POLL_INTERVAL", default=10.0)
# EVM blocks per Bitcoin block, to turn the contract's t_0/t_1 into CSV block counts.
EVM_BLOCKS_PER_BITCOIN_BLOCK = env.int("EVM_BLOCKS_PER_BITCOIN_BLOCK", default=20)
LENDER_BTC_PRIVATE_KEY = env.str("LENDER_BTC_PRIVATE_KEY", default="")
LENDER_BTC_KEY_FILE = env.str("LENDER_BTC_KEY_FILE", default="")

# --- Celery (every other Celery setting is in celeryconfig.py) -------------------------------
CELERY_CONFIG_MODULE = "celeryconfig"

# --- API ----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "btcloan API",
    "DESCRIPTION": "Bitcoin-collateralised rBTC loans: the lender desk's API for dApps.",
    "VERSION": "1.0.0",
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}
# --- Loans: the lender's policy -------------------------------------------------------------
# Lender actions that wait for an operator's approval in the admin ("all", or any of
# associate_hash, offer, accept_repayment, withdraw_offer, mark_default). Broadcasting TX_1
# and sweeping a matured collateral are never held back.
LENDER_ACTIONS_REQUIRING_APPROVAL = env.list("LENDER_ACTIONS_REQUIRING_APPROVAL", default=[])
# Bitcoin blocks allowed for TX_1 to confirm, and the extra margin an offer must leave before
# the escrow's exit path opens.
TX1_CONFIRMATION_ALLOWANCE_BLOCKS = env.int("TX1_CONFIRMATION_ALLOWANCE_BLOCKS", default=6)
OFFER_SAFETY_MARGIN_BLOCKS = env.int("OFFER_SAFETY_MARGIN_BLOCKS", default=6)
# Where the lender's Bitcoin payouts go (origination fee, sweeps); default: the lender key's
# own P2TR key-path address.
LENDER_BTC_PAYOUT_ADDRESS = env.str("LENDER_BTC_PAYOUT_ADDRESS", default="")
