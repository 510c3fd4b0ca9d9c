"""Service endpoints: health (anonymous) and Prometheus metrics (protected)."""

from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from drf_spectacular.views import SpectacularAPIView
from prometheus_client import CONTENT_TYPE_LATEST
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from btcloan import health, metrics
from btcloan.api.authentication import ApiKeyAuthentication, BearerTokenAuthentication
from btcloan.api.errors import error_responses
from btcloan.api.selectors import is_operator
from btcloan.api.throttling import MetricsRateThrottle
from btcloan.models import ApiKey


class ProbeSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "down"])
    critical = serializers.BooleanField()
    detail = serializers.CharField(allow_blank=True)
    data = serializers.DictField(help_text="Small figures: chain id, block height, lag.")
    duration_ms = serializers.IntegerField()


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=["ok", "degraded", "down"],
        help_text="down (HTTP 503) when a critical probe fails; degraded when only others do.",
    )
    probes = serializers.DictField(
        child=ProbeSerializer(),
        required=False,
        help_text="Operators only; anonymous callers get the status alone.",
    )


ANONYMOUS_HEALTH_KEY = "btcloan:health:anonymous"


class HealthApi(APIView):
    """Database, broker, EVM node, Bitcoin node and what the apps register (indexer lag).

    Anonymous callers (a load balancer) get the status alone, from a report at most
    HEALTH_ANONYMOUS_CACHE_SECONDS old, so they cannot make the desk call its nodes on demand;
    operators get every probe with its figures, measured now."""

    permission_classes = [AllowAny]
    authentication_classes = [BearerTokenAuthentication, ApiKeyAuthentication]

    @extend_schema(
        tags=["service"],
        summary="Health of the desk's dependencies",
        responses={
            200: HealthSerializer,
            503: OpenApiResponse(HealthSerializer, description="A critical probe failed."),
            **error_responses(401, 429),
        },
    )
    def get(self, request: Request) -> Response:
        if not is_operator(request.user):
            status, healthy = self._anonymous_status()
            return Response({"status": status}, status=200 if healthy else 503)
        report = self._fresh_report()
        body = {
            "status": report.status,
            "probes": {
                p.name: {
                    "status": "ok" if p.ok else "down",
                    "critical": p.critical,
                    "detail": p.detail,
                    "data": p.data,
                    "duration_ms": p.duration_ms,
                }
                for p in report.probes
            },
        }
        return Response(HealthSerializer(body).data, status=200 if report.healthy else 503)

    def _fresh_report(self) -> health.HealthReport:
        report = health.run_probes()
        cache.set(
            ANONYMOUS_HEALTH_KEY,
            (report.status, report.healthy),
            settings.HEALTH_ANONYMOUS_CACHE_SECONDS,
        )
        return report

    def _anonymous_status(self) -> tuple[str, bool]:
        cached = cache.get(ANONYMOUS_HEALTH_KEY)
        if cached is None:
            report = self._fresh_report()
            return report.status, report.healthy
        return str(cached[0]), bool(cached[1])


def _client_in(address: str, allowed: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in allowed:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


class CanScrapeMetrics(BasePermission):
    """Operators (session, token or operator API key), any API key (a `metrics` key is the
    usual choice for Prometheus), or a peer address in settings.METRICS_ALLOWED_IPS."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if is_operator(request.user) or isinstance(request.auth, ApiKey):
            return True
        peer = request.META.get("REMOTE_ADDR", "")
        return bool(settings.METRICS_ALLOWED_IPS) and _client_in(peer, settings.METRICS_ALLOWED_IPS)


class MetricsApi(APIView):
    authentication_classes = [
        ApiKeyAuthentication,
        BearerTokenAuthentication,
        SessionAuthentication,
    ]
    permission_classes = [CanScrapeMetrics]
    throttle_classes = [MetricsRateThrottle]  # per address; rendering reads the database

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        tags=["service"],
        summary="Prometheus metrics (text exposition format)",
        description="Gauges computed from the database at scrape time (watcher lag, events "
        "waiting, transactions by status, deadline margins, open alerts) and the process's "
        "own. For operators, an API key (`Authorization: Api-Key`), or METRICS_ALLOWED_IPS; "
        "deploy/ has the Grafana dashboard and the alerting rules over them.",
        responses={
            (200, "text/plain"): OpenApiResponse(OpenApiTypes.STR),
            **error_responses(401, 403, 429),
        },
    )
    def get(self, request: Request) -> HttpResponse:
        return HttpResponse(metrics.render(), content_type=CONTENT_TYPE_LATEST)


@extend_schema_view(
    get=extend_schema(
        tags=["service"],
        summary="This API's OpenAPI 3 schema",
        description=(
            "The machine-readable description of every endpoint here (YAML, or JSON with "
            "`?format=json`); /api/docs/ renders it. Generate a client from it."
        ),
        responses={200: OpenApiTypes.OBJECT},
    )
)
class SchemaApi(SpectacularAPIView):
    """drf-spectacular's schema view, with its own summary in the schema it serves."""
