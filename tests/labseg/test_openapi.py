"""The OpenAPI schema (drf-spectacular, labseg/openapi.py): served, valid, warning-free, complete,
and its Swagger UI served from this server's own static files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.contrib.staticfiles import finders
from django.core.management import call_command
from drf_spectacular.generators import EndpointEnumerator
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

from labseg import openapi
from labseg.openapi import deduplicate_trailing_slashes
from tests.factories import LabFactory, member_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def client() -> APIClient:
    client = APIClient()
    client.force_authenticate(member_of(LabFactory.create()))
    return client


def _schema(client: APIClient) -> dict[str, Any]:
    answer = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert answer.status_code == 200, answer.content[:500]
    return dict(answer.json())


def test_the_schema_is_openapi_3_and_valid(client: APIClient) -> None:
    schema = _schema(client)
    assert schema["openapi"].startswith("3.")
    validate_schema(schema)  # the OpenAPI 3 JSON schema; raises on any violation
    as_yaml = client.get("/api/schema/")
    assert as_yaml.status_code == 200 and yaml.safe_load(as_yaml.content)["paths"] == schema["paths"]


def test_the_schema_generates_without_a_warning_or_an_error(tmp_path: Path) -> None:
    # `manage.py spectacular --validate --fail-on-warn`: every plain APIView is described in
    # labseg/openapi.py (else "unable to guess serializer"), and no description names a view
    # that no longer exists.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert (tmp_path / "schema.yaml").stat().st_size > 10_000
    assert openapi.STALE == []


def test_every_api_url_pattern_and_method_is_in_the_schema(client: APIClient) -> None:
    paths = _schema(client)["paths"]
    # The URL patterns as DRF and drf-spectacular walk them, less the trailing-slash aliases.
    endpoints = deduplicate_trailing_slashes(EndpointEnumerator().get_api_endpoints())
    wanted = {
        (re.sub(r"\{pk\}", "{id}", path), method.lower())
        for path, _regex, method, _view in endpoints
        if path.startswith("/api/") and not path.startswith(("/api/schema/", "/api/docs/"))
    }
    listed = {(path, method) for path, operations in paths.items() for method in operations}
    assert len(wanted) >= 55
    assert wanted - listed == set()
    assert {"/api/scans/", "/api/scans/{id}/segment", "/api/uploads/{id}/", "/api/jobs/{id}/cancel"} <= set(
        paths
    )


def test_the_schema_and_its_docs_need_a_sign_in() -> None:
    assert APIClient().get("/api/schema/").status_code in (401, 403)
    assert APIClient().get("/api/docs/").status_code in (401, 403)


def test_the_docs_page_loads_swagger_ui_from_this_server_only(client: APIClient) -> None:
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), html[:2000]
    for asset in assets:
        assert asset.startswith("/static/"), f"{asset} is not served by this server"
        assert finders.find(asset.removeprefix("/static/")) is not None, f"{asset} is missing"
    assert "/api/schema/" in html
