"""The project's URLs plus a few views that exist only to test the cross-cutting API parts."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path
from rest_framework import serializers
from rest_framework.generics import ListAPIView, RetrieveAPIView
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from btcloan.api.permissions import IsBorrowerOrOperator, IsOperator
from btcloan.api.selectors import wallet_address_of
from btcloan.models import Alert
from btcloan.urls import handler404, handler500
from btcloan.urls import urlpatterns as project_urlpatterns

__all__ = ["handler404", "handler500", "urlpatterns"]


class OperatorOnly(APIView):
    permission_classes = [IsOperator]

    def get(self, request: Request) -> Response:
        return Response({"ok": True})


class BorrowerOrOperator(APIView):
    permission_classes = [IsBorrowerOrOperator]

    def get(self, request: Request) -> Response:
        return Response({"address": wallet_address_of(request.user)})


class EchoSerializer(serializers.Serializer):
    amount_sats = serializers.IntegerField(min_value=1)
    address = serializers.CharField(max_length=10)


class Echo(APIView):
    permission_classes = [AllowAny]

    def post(self, request: Request) -> Response:
        payload = EchoSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        return Response(payload.validated_data)


class Explodes(APIView):
    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        raise RuntimeError(f"cannot sign with {settings.LENDER_EVM_PRIVATE_KEY}")


def django_explodes(request: HttpRequest) -> HttpResponse:
    raise RuntimeError(f"plain Django view failed with {settings.LENDER_EVM_PRIVATE_KEY}")


class AlertSerializer(serializers.ModelSerializer):
    class Meta:
        model = Alert
        fields = ["id", "key", "severity"]


class AlertList(ListAPIView):
    permission_classes = [IsOperator]
    serializer_class = AlertSerializer
    queryset = Alert.objects.order_by("id")
    filterset_fields = ["severity"]


class AlertDetail(RetrieveAPIView):
    permission_classes = [IsOperator]
    serializer_class = AlertSerializer
    queryset = Alert.objects.all()


urlpatterns = [
    *project_urlpatterns,
    path("api/test/operator-only", OperatorOnly.as_view()),
    path("api/test/borrower-or-operator", BorrowerOrOperator.as_view()),
    path("api/test/echo", Echo.as_view()),
    path("api/test/explodes", Explodes.as_view()),
    path("api/test/django-explodes", django_explodes),
    path("api/test/alerts", AlertList.as_view()),
    path("api/test/alerts/<int:pk>", AlertDetail.as_view()),
]
