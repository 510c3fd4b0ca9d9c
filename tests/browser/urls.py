"""The project's URLs plus a one-time login link, for the browser lane only: a headless
browser has no way to type a password, so a test mints a link that signs one user in once."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model, login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import path
from django.utils.http import url_has_allowed_host_and_scheme

from btcloan.urls import handler404, handler500
from btcloan.urls import urlpatterns as project_urlpatterns

__all__ = ["handler404", "handler500", "login_link", "urlpatterns"]

_LINKS: dict[str, int] = {}


def login_link(*, user_id: int, next_path: str) -> str:
    """A path that signs `user_id` in once and goes on to `next_path`."""
    token = secrets.token_urlsafe(24)
    _LINKS[token] = user_id
    return f"/test-login/{token}?next={next_path}"


def one_time_login(request: HttpRequest, token: str) -> HttpResponse:
    user_id = _LINKS.pop(token, None)
    if user_id is None:
        raise Http404("unknown or used link")
    user = get_user_model().objects.get(pk=user_id)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    next_path = request.GET.get("next", "/admin/")
    if not url_has_allowed_host_and_scheme(next_path, allowed_hosts=None):
        next_path = "/admin/"
    return redirect(next_path)


urlpatterns = [*project_urlpatterns, path("test-login/<str:token>", one_time_login)]
