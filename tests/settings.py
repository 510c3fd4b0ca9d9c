"""Settings for the test suite: the machine's real PostgreSQL and Redis.

Each run gets its own test database (pytest-django prefixes `test_`) and its own scratch
directory, so parallel runs on one machine do not trample each other. BTCLOAN_TEST_REDIS_DB
picks the Redis database (default 15) for runs that must not share a broker.
"""

import base64
import os
import secrets
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/btcloan")
_redis_db = os.environ.get("BTCLOAN_TEST_REDIS_DB", "15")
os.environ.setdefault("REDIS_URL", f"redis://127.0.0.1:6379/{_redis_db}")
os.environ.setdefault("BTCLOAN_VAR_DIR", tempfile.mkdtemp(prefix="btcloan-test-"))
# A real secret key and Fernet key per run: service processes the tests start (worker, beat,
# gunicorn) run outside DEBUG and refuse the published defaults. They inherit these from this
# process, so what one encrypts the other decrypts.
os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
os.environ.setdefault(
    "BTCLOAN_ENCRYPTION_KEYS", base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
)

from btcloan.settings import *  # noqa: E402,F403
from btcloan.settings import (  # noqa: E402
    DATABASES,
    LENDER_BTC_PRIVATE_KEY,
    LENDER_EVM_PRIVATE_KEY,
)

# Throwaway lender keys for this process only (importing btcloan.wsgi checks they exist); a
# test that signs sets its own, and service processes get theirs from their test.
LENDER_EVM_PRIVATE_KEY = LENDER_EVM_PRIVATE_KEY or "0x" + secrets.token_hex(32)
LENDER_BTC_PRIVATE_KEY = LENDER_BTC_PRIVATE_KEY or secrets.token_hex(32)

_tag = os.environ.get("BTCLOAN_TEST_TAG") or str(os.getpid())
DATABASES["default"]["TEST"] = {"NAME": f"test_btcloan_{_tag}"}
# Fast, deterministic password hashing for test users.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Tests drive the outbox with the pump: it sends a new row at once, as if its task were lost
# (test_outbox checks the production wait on its own).
EVM_OUTBOX_REDRIVE_AFTER_SECONDS = 0.0
