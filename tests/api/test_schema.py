"""Every cross-cutting endpoint is in the OpenAPI schema with its request and responses."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

ENDPOINTS = {
    ("/api/v1/auth/nonce", "post"): {"200", "400", "429"},
    ("/api/v1/auth/login", "post"): {"200", "400", "401", "429"},
    ("/api/v1/auth/operator-login", "post"): {"200", "400", "401", "429"},
    ("/api/v1/auth/logout", "post"): {"204", "401"},
    ("/api/v1/auth/me", "get"): {"200", "401"},
    ("/api/v1/health", "get"): {"200", "503"},
    ("/metrics", "get"): {"200", "401", "403"},
}


def test_schema_documents_every_endpoint(settings) -> None:
    settings.ROOT_URLCONF = "btcloan.urls"
    response = APIClient().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    for (path, method), statuses in ENDPOINTS.items():
        operation = schema["paths"][path][method]
        assert statuses <= set(operation["responses"]), (path, operation["responses"])
        if method == "post" and path != "/api/v1/auth/logout":
            assert "requestBody" in operation, path
    login = schema["paths"]["/api/v1/auth/login"]["post"]
    assert login["responses"]["401"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert {"bearerToken", "apiKey"} <= set(schema["components"]["securitySchemes"])
    # The sign-in endpoints need no credentials; the rest do.
    assert login.get("security") in (None, [], [{}])
    assert {"bearerToken": []} in schema["paths"]["/api/v1/auth/me"]["get"]["security"]


def test_every_operation_has_a_summary_and_a_description(settings) -> None:
    """A dApp's developer reads /api/docs/: each operation says what it is for."""
    settings.ROOT_URLCONF = "btcloan.urls"
    schema = APIClient().get("/api/schema/", {"format": "json"}).json()
    operations = {
        f"{method.upper()} {path}": operation
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    }
    assert len(operations) >= 16  # the loan endpoints, sign-in, health, metrics, the schema
    assert "GET /api/v1/loans/{id}/" in operations
    lacking = {
        name: [part for part in ("summary", "description") if not op.get(part, "").strip()]
        for name, op in operations.items()
        if not (op.get("summary", "").strip() and op.get("description", "").strip())
    }
    assert not lacking, lacking
    too_long = [name for name, op in operations.items() if len(op["summary"]) > 80]
    assert not too_long, "a summary is one line"
