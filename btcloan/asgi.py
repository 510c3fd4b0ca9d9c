"""The ASGI application. Outside DEBUG an unsafe configuration ends start-up here with one
line (btcloan.startup.refuse_unsafe_config)."""

import os

from django.core.asgi import get_asgi_application

from btcloan.startup import fail_fast, refuse_unsafe_config

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "btcloan.settings")
with fail_fast():
    application = get_asgi_application()
    refuse_unsafe_config()
