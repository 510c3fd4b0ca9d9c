from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView

from btcloan.api.apis import (
    AuthLoginApi,
    AuthLogoutApi,
    AuthMeApi,
    AuthNonceApi,
    AuthOperatorLoginApi,
)
from btcloan.apis import HealthApi, MetricsApi, SchemaApi

# Django-level errors under /api/ (and /metrics) answer in the API's JSON error shape.
handler404 = "btcloan.api.errors.json_404"
handler500 = "btcloan.api.errors.json_500"

# The docs pages run only what this origin serves (drf-spectacular-sidecar's bundles): ReDoc
# would otherwise fetch its vendor's logo from a third party on every visit.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'"
)


def _self_contained(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response["Content-Security-Policy"] = DOCS_CSP
        return response

    return wrapped


urlpatterns = [
    # The operators' dashboard (loans' admin pages; by name: the project imports no app).
    path("admin/dashboard/", include("loans.admin_urls")),
    path("admin/", admin.site.urls),
    path("api/schema/", SchemaApi.as_view(), name="schema"),
    path(
        "api/docs/",
        _self_contained(SpectacularSwaggerView.as_view(url_name="schema")),
        name="api-docs",
    ),
    path(
        "api/redoc/",
        # Our template: the stock one loads web fonts from a third party.
        _self_contained(
            SpectacularRedocView.as_view(url_name="schema", template_name="btcloan/redoc.html")
        ),
        name="api-redoc",
    ),
    path("api/v1/health", HealthApi.as_view(), name="health"),
    path("api/v1/auth/nonce", AuthNonceApi.as_view(), name="auth-nonce"),
    path("api/v1/auth/login", AuthLoginApi.as_view(), name="auth-login"),
    path("api/v1/auth/operator-login", AuthOperatorLoginApi.as_view(), name="auth-operator-login"),
    path("api/v1/auth/logout", AuthLogoutApi.as_view(), name="auth-logout"),
    path("api/v1/auth/me", AuthMeApi.as_view(), name="auth-me"),
    path("metrics", MetricsApi.as_view(), name="metrics"),
    path("api/v1/", include("loans.urls")),
]
