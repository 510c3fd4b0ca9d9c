"""Settings for the test suite: the machine's real PostgreSQL and Redis.

Each run gets its own test database (pytest-django prefixes `test_`) and its own scratch
directory, so parallel runs on one machine do not trample each other. BTCLOAN_TEST_REDIS_DB
picks the Redis database (default 15) for runs that must not share a broker.
"""

import os
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/btcloan")
_redis_db = os.environ.get("BTCLOAN_TEST_REDIS_DB", "15")
os.environ.setdefault("REDIS_URL", f"redis://127.0.0.1:6379/{_redis_db}")
os.environ.setdefault("BTCLOAN_VAR_DIR", tempfile.mkdtemp(prefix="btcloan-test-"))

from btcloan.settings import *  # noqa: E402,F403
from btcloan.settings import DATABASES  # noqa: E402

_tag = os.environ.get("BTCLOAN_TEST_TAG") or str(os.getpid())
DATABASES["default"]["TEST"] = {"NAME": f"test_btcloan_{_tag}"}
# Fast, deterministic password hashing for test users.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
