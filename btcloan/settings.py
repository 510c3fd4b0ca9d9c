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
# The default is public (it is in this file): outside DEBUG the service refuses to start with
# it, or with any key shorter than 50 characters (btcloan.startup.refuse_unsafe_config).
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="btcloan-insecure-development-key-change-me")
# Fernet keys (urlsafe base64, 32 bytes) for secrets at rest such as the lender preimages;
# the first encrypts, all decrypt (rotation). Unset: derived from SECRET_KEY, fit only for
# development; outside DEBUG the service refuses to start without them.
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
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc served from the package, no CDN
    "axes",
    "corsheaders",
    "btcloan",
    "chainwatch",
    "bitcoin",
    "loans",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Before anything that can answer (CommonMiddleware's redirects): preflights and the
    # CORS headers of every /api/ answer, errors included.
    "corsheaders.middleware.CorsMiddleware",
    # 413 for an oversized body, 400 for a NUL byte in the query, before anything reads them.
    "btcloan.middleware.RequestGuardMiddleware",
    # Static files from STATIC_ROOT (collectstatic), before anything that touches the session.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: it answers a locked-out admin login (django-axes).
    "axes.middleware.AxesMiddleware",
]

# --- Production hardening (docs/security.md; deploy/production.env.example) -----------------
# Behind TLS set these from the environment; the defaults suit a plain-HTTP local run.
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
SESSION_COOKIE_SECURE = env.bool("DJANGO_SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("DJANGO_CSRF_COOKIE_SECURE", default=False)
SESSION_COOKIE_HTTPONLY = True
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
# A TLS-terminating proxy in front says so in this header ("HTTP_X_FORWARDED_PROTO,https").
_proxy_ssl_header = env.list("DJANGO_SECURE_PROXY_SSL_HEADER", default=[])
SECURE_PROXY_SSL_HEADER = tuple(_proxy_ssl_header) if len(_proxy_ssl_header) == 2 else None
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Request bodies: the largest legitimate one (a borrower's signatures) is a few KiB.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE", default=2_621_440)

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # refuses a locked-out username/address first
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Admin login throttling (django-axes): this many failures for a username from one address
# lock that pair out for AXES_COOLOFF_HOURS; a correct password does not unlock it early.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=0.5)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_ENABLED = env.bool("AXES_ENABLED", default=True)
AXES_VERBOSE = False  # lockouts still log a warning; no banner at start-up
AXES_LOCKOUT_CALLABLE = "btcloan.api.errors.login_lockout"
# The client address as the API's throttles see it (API_NUM_PROXIES).
AXES_CLIENT_IP_CALLABLE = "btcloan.api.throttling.client_ip"

# Browser dApps (docs/dapp.md): the origins allowed to call the API, exactly as the browser
# sends them ("https://app.example.com", "http://localhost:3000"); none by default. Bearer
# tokens, not cookies, so no credentials mode; only /api/ answers cross-origin.
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/api/.*$"
CORS_ALLOW_CREDENTIALS = False
CORS_PREFLIGHT_MAX_AGE = env.int("CORS_PREFLIGHT_MAX_AGE", default=3600)

ROOT_URLCONF = "btcloan.urls"
WSGI_APPLICATION = "btcloan.wsgi.application"
ASGI_APPLICATION = "btcloan.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # Ours first, so btcloan/templates/admin/base_site.html extends the admin's own.
        "DIRS": [BASE_DIR / "btcloan" / "templates"],
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
# Seconds a process keeps its PostgreSQL connection (0: one per task or request).
DATABASE_CONN_MAX_AGE = env.int("DATABASE_CONN_MAX_AGE", default=300)
DATABASES = {
    "default": parse_database_url("DATABASE_URL", DATABASE_URL, conn_max_age=DATABASE_CONN_MAX_AGE)
}
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

# Single-flight locks live this long unless their holder renews them (it does, while it works),
# so a holder killed with -9 frees its poller within this many seconds.
SINGLE_FLIGHT_LEASE_SECONDS = env.float("SINGLE_FLIGHT_LEASE_SECONDS", default=30.0)

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
# The loan contract's semantics (docs/chainwatch.md, "Contract flavours"): btcloan (ours) or
# seed (the earlier prototype's, deadlines strict and a global loan duration). auto detects it
# from the deployed bytecode; a pinned value the chain contradicts stops the desk from acting.
LOAN_CONTRACT_FLAVOUR = env.str("LOAN_CONTRACT_FLAVOUR", default="auto")
if LOAN_CONTRACT_FLAVOUR not in ("auto", "btcloan", "seed"):
    raise ConfigError(
        f"LOAN_CONTRACT_FLAVOUR is {LOAN_CONTRACT_FLAVOUR!r}; expected auto, btcloan or seed"
    )
# Where deploy_contracts records addresses and the deployment block when the env names none.
DEPLOYMENT_FILE = Path(env.str("DEPLOYMENT_FILE", default=str(VAR_DIR / "deployment.json")))
# The lender's EVM key: never logged, never returned by the API.
LENDER_EVM_PRIVATE_KEY = env.str("LENDER_EVM_PRIVATE_KEY", default="")
EVM_RPC_TIMEOUT = env.float("EVM_RPC_TIMEOUT", default=10.0)
# chainwatch (docs/chainwatch.md): who receives events ("pkg.module.attr"; loans registers
# itself instead), retries before an event is parked, eth_getLogs windows, reorg history.
CHAINWATCH_CONSUMER = env.str("CHAINWATCH_CONSUMER", default="")
CHAINWATCH_MAX_ATTEMPTS = env.int("CHAINWATCH_MAX_ATTEMPTS", default=8)
CHAINWATCH_RETRY_BASE_SECONDS = env.float("CHAINWATCH_RETRY_BASE_SECONDS", default=5.0)
CHAINWATCH_RETRY_MAX_SECONDS = env.float("CHAINWATCH_RETRY_MAX_SECONDS", default=900.0)
CHAINWATCH_LOG_WINDOW = env.int("CHAINWATCH_LOG_WINDOW", default=1000)
CHAINWATCH_LOG_WINDOW_MAX = env.int("CHAINWATCH_LOG_WINDOW_MAX", default=20000)
CHAINWATCH_LOG_SLOW_SECONDS = env.float("CHAINWATCH_LOG_SLOW_SECONDS", default=5.0)
CHAINWATCH_REORG_HISTORY = env.int("CHAINWATCH_REORG_HISTORY", default=1000)
CHAINWATCH_PASS_SECONDS = env.float("CHAINWATCH_PASS_SECONDS", default=60.0)
CHAINWATCH_DELIVERY_COMMIT_EVERY = env.int("CHAINWATCH_DELIVERY_COMMIT_EVERY", default=100)
# The lender outbox (docs/chainwatch.md): a call carrying a secret (acceptLoanRepayment's P_L)
# is never estimated, it gets this gas limit; a transaction waiting this long in the mempool is
# replaced with the same nonce at EVM_FEE_BUMP_PERCENT more gas price, never above the cap
# (wei per gas; Rootstock's minimum is ~0.06 gwei); a reverted or lost call whose guard still
# holds is retried up to EVM_OUTBOX_MAX_RETRIES times, backing off from the base to the max.
# The block lender calls are estimated at: "pending" (a deadline action due in the next block
# passes there; at "latest" it reverts), or "latest" for a node without a pending block.
EVM_ESTIMATE_BLOCK = env.str("EVM_ESTIMATE_BLOCK", default="pending")
EVM_SECRET_CALL_GAS_LIMIT = env.int("EVM_SECRET_CALL_GAS_LIMIT", default=250_000)
EVM_FEE_BUMP_AFTER_SECONDS = env.float("EVM_FEE_BUMP_AFTER_SECONDS", default=120.0)
EVM_FEE_BUMP_PERCENT = env.int("EVM_FEE_BUMP_PERCENT", default=25)
EVM_GAS_PRICE_CAP_WEI = env.int("EVM_GAS_PRICE_CAP_WEI", default=50_000_000_000)
EVM_OUTBOX_MAX_RETRIES = env.int("EVM_OUTBOX_MAX_RETRIES", default=5)
EVM_OUTBOX_RETRY_BASE_SECONDS = env.float("EVM_OUTBOX_RETRY_BASE_SECONDS", default=15.0)
EVM_OUTBOX_RETRY_MAX_SECONDS = env.float("EVM_OUTBOX_RETRY_MAX_SECONDS", default=600.0)
# A new row's send task is enqueued with it: the pump leaves the row to that task this long, and
# sends it itself only after (the task was lost), instead of repeating its estimate and guard.
EVM_OUTBOX_REDRIVE_AFTER_SECONDS = env.float("EVM_OUTBOX_REDRIVE_AFTER_SECONDS", default=10.0)

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
# The lender's Bitcoin signer: a factory returning a bitcoin.signer.LenderSigner (an HSM or
# remote signer replaces the default in-process key).
BITCOIN_LENDER_SIGNER = env.str("BITCOIN_LENDER_SIGNER", default="bitcoin.signer.local_key_signer")
# Who receives Bitcoin facts when no handler was registered in code (pkg.module.callable).
BITCOIN_FACT_HANDLER = env.str("BITCOIN_FACT_HANDLER", default="")
BITCOIN_RPC_TIMEOUT = env.float("BITCOIN_RPC_TIMEOUT", default=30.0)
# First block the scanner reads on an empty database (default: the tip at first run).
BITCOIN_START_HEIGHT = env.int("BITCOIN_START_HEIGHT", default=-1)
BITCOIN_SCAN_MAX_BLOCKS = env.int("BITCOIN_SCAN_MAX_BLOCKS", default=50)
# Fee policy, in sat/vB: estimatesmartfee for the target, clamped to [floor, cap].
BITCOIN_FEE_TARGET_BLOCKS = env.int("BITCOIN_FEE_TARGET_BLOCKS", default=3)
BITCOIN_FEERATE_FLOOR_SAT_VB = env.int("BITCOIN_FEERATE_FLOOR_SAT_VB", default=2)
BITCOIN_FEERATE_CAP_SAT_VB = env.int("BITCOIN_FEERATE_CAP_SAT_VB", default=500)
BITCOIN_FEERATE_FALLBACK_SAT_VB = env.int("BITCOIN_FEERATE_FALLBACK_SAT_VB", default=20)
# CPFP TX_1 when it stayed unconfirmed this long after its first broadcast.
# Fee bumps (CPFP children of one TX_1, re-signed sweeps) before an operator must look.
BITCOIN_MAX_FEE_BUMPS = env.int("BITCOIN_MAX_FEE_BUMPS", default=10)
BITCOIN_MONITOR_INTERVAL = env.float("BITCOIN_MONITOR_INTERVAL", default=30.0)

# --- Celery (every other Celery setting is in celeryconfig.py) -------------------------------
CELERY_CONFIG_MODULE = "celeryconfig"

# --- API ----------------------------------------------------------------------------------
# Rates are "<count>/<second|minute|hour|day>"; the cache (Redis, or locmem on embedded
# defaults) holds the counters. "ip" limits every client address, "user" each signed-in user
# or API key, "auth" the sign-in endpoints, "auth_failure" wrong credentials, "metrics" scrapes.
API_THROTTLE_RATES = {
    "ip": env.str("API_THROTTLE_IP", default="600/minute"),
    "user": env.str("API_THROTTLE_USER", default="1200/minute"),
    "auth": env.str("API_THROTTLE_AUTH", default="30/minute"),
    # Wrong tokens or API keys per client address; past it every credential is refused (429).
    "auth_failure": env.str("API_THROTTLE_AUTH_FAILURE", default="30/minute"),
    "metrics": env.str("API_THROTTLE_METRICS", default="120/minute"),
}
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "btcloan.api.errors.api_exception_handler",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "btcloan.api.authentication.BearerTokenAuthentication",
        "btcloan.api.authentication.ApiKeyAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["btcloan.api.renderers.JSONRenderer"],  # DRF's JSON, by orjson
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "btcloan.api.pagination.PageNumberPagination",
    "PAGE_SIZE": env.int("API_PAGE_SIZE", default=50),
    "DEFAULT_FILTER_BACKENDS": [
        "btcloan.api.filtering.FilterBackend",  # django-filter; refuses empty values
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_THROTTLE_CLASSES": [
        "btcloan.api.throttling.IpRateThrottle",
        "btcloan.api.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": API_THROTTLE_RATES,
    # Proxies in front of the service; 0 means the peer address is the client (X-Forwarded-For
    # from the internet is never trusted).
    "NUM_PROXIES": env.int("API_NUM_PROXIES", default=0),
}
API_MAX_PAGE_SIZE = env.int("API_MAX_PAGE_SIZE", default=200)
SPECTACULAR_SETTINGS = {
    "TITLE": "btcloan API",
    "DESCRIPTION": "Bitcoin-collateralised rBTC loans: the lender desk's API for dApps.",
    "VERSION": "1.0.0",
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "LoanStatusEnum": "loans.models.LoanStatus",
        "BitcoinStageEnum": "loans.models.BitcoinStage",
    },
}

# Sign-in with Ethereum (EIP-4361): the dApp's domain and URI the signed message must name; the
# chain id is EVM_CHAIN_ID. Nonces are single-use and expire; tokens expire.
SIWE_DOMAIN = env.str("SIWE_DOMAIN", default="localhost:8000")
SIWE_URI = env.str("SIWE_URI", default="http://localhost:8000")
SIWE_STATEMENT = env.str("SIWE_STATEMENT", default="Sign in to the btcloan lending desk.")
SIWE_NONCE_TTL_SECONDS = env.int("SIWE_NONCE_TTL_SECONDS", default=300)
AUTH_TOKEN_TTL_SECONDS = env.int("AUTH_TOKEN_TTL_SECONDS", default=12 * 3600)

# Health: probes named here do not turn /api/v1/health into a 503 (e.g. "bitcoin_node" on a
# desk that runs without a Bitcoin node for a while); each probe gets this many seconds.
HEALTH_NONCRITICAL_PROBES = env.list("HEALTH_NONCRITICAL_PROBES", default=[])
HEALTH_PROBE_TIMEOUT = env.float("HEALTH_PROBE_TIMEOUT", default=2.0)
# Anonymous callers get the status alone, from a report at most this old (operators: details).
HEALTH_ANONYMOUS_CACHE_SECONDS = env.int("HEALTH_ANONYMOUS_CACHE_SECONDS", default=10)
# Watcher lag, in blocks the watcher could have processed but has not (the EVM indexer stays
# EVM_CONFIRMATIONS behind the head on purpose; that part is not counted). Past WARN the health
# is "degraded" (probes indexer_lag / scanner_lag); past CRITICAL it is "down" (probes
# indexer_far_behind / scanner_far_behind): deadlines are then being watched blind. Defaults:
# Rootstock ~30 s blocks polled every 5 s (20 blocks ~ 10 min, 120 ~ 1 h); Bitcoin ~10 min
# blocks polled every 10 s (2 blocks ~ 20 min, 6 ~ 1 h).
HEALTH_INDEXER_LAG_WARN_BLOCKS = env.int("HEALTH_INDEXER_LAG_WARN_BLOCKS", default=20)
HEALTH_INDEXER_LAG_CRITICAL_BLOCKS = env.int("HEALTH_INDEXER_LAG_CRITICAL_BLOCKS", default=120)
HEALTH_SCANNER_LAG_WARN_BLOCKS = env.int("HEALTH_SCANNER_LAG_WARN_BLOCKS", default=2)
HEALTH_SCANNER_LAG_CRITICAL_BLOCKS = env.int("HEALTH_SCANNER_LAG_CRITICAL_BLOCKS", default=6)
# /metrics answers operators, API keys, and these client addresses (a Prometheus server on a
# private network), nobody else.
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=[])

# Alerts: the log always; email and a webhook when configured.
ALERT_EMAILS = env.list("ALERT_EMAILS", default=[])
ALERT_WEBHOOK_URL = env.str("ALERT_WEBHOOK_URL", default="")
if ALERT_WEBHOOK_URL:
    parse_url("ALERT_WEBHOOK_URL", ALERT_WEBHOOK_URL, schemes=("http", "https"))
ALERT_WEBHOOK_TIMEOUT = env.float("ALERT_WEBHOOK_TIMEOUT", default=5.0)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="btcloan@localhost")
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# `manage.py collectstatic` fills it (the image does at build time); WhiteNoise serves it with
# compression and caching headers. WHITENOISE_USE_FINDERS serves the apps' own static
# directories without collecting (DEBUG, and the local dev stack).
STATIC_ROOT = Path(env.str("DJANGO_STATIC_ROOT", default=str(VAR_DIR / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = env.bool("WHITENOISE_USE_FINDERS", default=DEBUG)
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns about a missing one

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
# "json" (one object per line, with the loan id in context) or "plain" for a terminal.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("json", "plain"):
    raise ConfigError(f"LOG_FORMAT must be json or plain (got {LOG_FORMAT!r})")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "btcloan.logs.ContextFilter"},
        "redact": {"()": "btcloan.logs.RedactSecretsFilter"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "btcloan.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context", "redact"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # django-axes narrates every login at INFO; its lockouts are warnings.
    "loggers": {"axes": {"level": "WARNING"}},
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
# acceptLoanRepayment (which reveals P_L) is signed only while at least this many EVM blocks
# remain before repayment block + t_L: mined after that it would revert with P_L public.
LOAN_REPAYMENT_ACCEPT_MARGIN = env.int("LOAN_REPAYMENT_ACCEPT_MARGIN", default=20)
# An offer goes out only while the probability that the escrow's exit path opens before TX_1
# can confirm is below this (Poisson over the Bitcoin blocks of t_B; docs/security.md).
# A probability, not money: a float.
OFFER_WINDOW_RISK = env.float("OFFER_WINDOW_RISK", default=1e-6)
# The quoted escrow deposit pays TX_1 at today's feerate plus this much (percent), so a fee
# rise before the deposit is seen does not leave it short; TX_1 is then built at the best
# rate the deposit affords (at most that), never below BITCOIN_FEERATE_FLOOR_SAT_VB.
QUOTE_FEERATE_HEADROOM_PERCENT = env.int("QUOTE_FEERATE_HEADROOM_PERCENT", default=50)
# The watchdog alerts when fewer blocks than these are left: to accept a repayment (EVM
# blocks), and for TX_1 to confirm before the escrow's exit path opens (Bitcoin blocks).
LOAN_ALERT_REPAYMENT_MARGIN_BLOCKS = env.int("LOAN_ALERT_REPAYMENT_MARGIN_BLOCKS", default=100)
LOAN_ALERT_TX1_MARGIN_BLOCKS = env.int("LOAN_ALERT_TX1_MARGIN_BLOCKS", default=12)
# Beat intervals (seconds) of the watchdog and the reconciler.
LOAN_WATCHDOG_INTERVAL = env.float("LOAN_WATCHDOG_INTERVAL", default=15.0)
LOAN_RECONCILE_INTERVAL = env.float("LOAN_RECONCILE_INTERVAL", default=300.0)
# The reconciler reads the chains for this many loans at a time (one JSON-RPC batch per node
# per 500 of them) and stops a pass after LOAN_RECONCILE_PASS_SECONDS, well inside its 600 s
# single-flight timeout; the next pass continues from the saved cursor. Loans with an EVM
# deadline within LOAN_RECONCILE_RISK_BLOCKS come first in every pass.
LOAN_RECONCILE_BATCH = env.int("LOAN_RECONCILE_BATCH", default=2000)
LOAN_RECONCILE_PASS_SECONDS = env.float("LOAN_RECONCILE_PASS_SECONDS", default=240.0)
LOAN_RECONCILE_RISK_BLOCKS = env.int("LOAN_RECONCILE_RISK_BLOCKS", default=1000)
# The watchdog re-sends a step still due this long after it last sent it (a task lost with
# its worker or a flushed broker), doubling the wait each time up to 32x.
LOAN_WATCHDOG_REDRIVE_SECONDS = env.float("LOAN_WATCHDOG_REDRIVE_SECONDS", default=120.0)
