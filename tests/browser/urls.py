"""The project's URLs plus a one-time login link, for the browser lane only: a headless
browser has no way to type a password, so a test mints a link that signs one user in once."""

from __future__ import annotations

import json
import secrets

from django.contrib.auth import get_user_model, login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import path
from django.utils.http import url_has_allowed_host_and_scheme

from btcloan.urls import handler404, handler500
from btcloan.urls import urlpatterns as project_urlpatterns

__all__ = ["handler404", "handler500", "layout_probe_link", "login_link", "urlpatterns"]

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


# Loads an admin list page into itself and measures it once rendered: does the results box
# scroll sideways, and where does the right-most column end? `--dump-dom` then shows the figures
# in #layout-probe. (A headless browser has no other way to report a layout.)
_PROBE = """<!doctype html><html><body><script>
fetch(%s, {credentials: "same-origin"}).then((r) => r.text()).then((html) => {
  const probe = `<script>window.addEventListener("load", () => {
    const box = document.querySelector("#changelist-form .results");
    const heads = [...document.querySelectorAll("#result_list thead th")];
    const out = document.createElement("div");
    out.id = "layout-probe";
    out.dataset.scrolls = String(box.scrollWidth > box.clientWidth);
    const last = heads[heads.length - 1].getBoundingClientRect();
    out.dataset.lastRight = String(Math.round(last.right));
    out.dataset.viewport = String(document.documentElement.clientWidth);
    out.dataset.columns = String(heads.length);
    document.body.appendChild(out);
  });<\\/script>`;
  document.open();
  document.write(html.replace("</body>", probe + "</body>"));
  document.close();
});
</script></body></html>"""


def layout_probe_link(*, page: str) -> str:
    return f"/test-layout?page={page}"


def layout_probe(request: HttpRequest) -> HttpResponse:
    page = request.GET.get("page", "/admin/")
    if not url_has_allowed_host_and_scheme(page, allowed_hosts=None):
        raise Http404("not a page of this site")
    return HttpResponse(_PROBE % json.dumps(page))


urlpatterns = [
    *project_urlpatterns,
    path("test-login/<str:token>", one_time_login),
    path("test-layout", layout_probe),
]
