"""The researcher API's OpenAPI document (/api/openapi.json) and docs page (/api/docs): who may read them, and that
they describe the API as it answers (the old paths, both ways in, JSON refusals)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from core.api_tokens import issue_api_token

pytestmark = pytest.mark.django_db

OPERATIONS = {
    ("get", "/annotation/api/campaigns/"),
    ("post", "/annotation/api/campaigns/"),
    ("get", "/annotation/api/campaigns/{pk}/"),
    *{("post", f"/annotation/api/campaigns/{{pk}}/{action}/") for action in ("launch", "pause", "resume", "close")},
    ("get", "/annotation/api/campaigns/{pk}/invite-links/"),
    ("post", "/annotation/api/campaigns/{pk}/invite-links/"),
    ("get", "/annotation/api/campaigns/{pk}/raters/"),
    ("post", "/annotation/api/campaigns/{pk}/raters/{participation_pk}/exclude/"),
    ("get", "/analysis/api/campaigns/{pk}/report"),
}


@pytest.fixture
def staff():
    return get_user_model().objects.create_user("researcher", password="pw-long-enough-1", is_staff=True)


def test_the_document_lists_every_endpoint_with_its_schemas_and_both_ways_in(staff):
    response = Client(headers={"Authorization": f"Bearer {issue_api_token(staff)}"}).get("/api/openapi.json")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/json")
    document = response.json()
    assert document["openapi"].startswith("3.")
    operations = {(method, path): op for path, item in document["paths"].items() for method, op in item.items()}
    assert set(operations) == OPERATIONS
    assert len({op["operationId"] for op in operations.values()}) == len(OPERATIONS)
    assert set(document["components"]["securitySchemes"]) == {"BearerToken", "StaffSession"}
    assert document["components"]["securitySchemes"]["BearerToken"] == {"type": "http", "scheme": "bearer"}
    for (method, path), op in operations.items():
        assert op["security"] == [{"BearerToken": []}, {"StaffSession": []}], path
        assert {"400", "401", "403", "404"} <= set(op["responses"]), (method, path)
        assert op["responses"]["404"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorOut"
        }
    create = operations["post", "/annotation/api/campaigns/"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["allOf"] == [
        {"$ref": "#/components/schemas/CampaignIn"}
    ]
    assert "201" in create["responses"]
    assert document["components"]["schemas"]["CampaignIn"]["additionalProperties"] is False
    report = operations["get", "/analysis/api/campaigns/{pk}/report"]
    assert {"application/json", "text/csv; charset=utf-8", "application/pdf"} <= set(
        report["responses"]["200"]["content"]
    )


def test_the_document_and_the_docs_page_are_for_researchers_only(staff, client):
    assert client.get("/api/openapi.json").status_code == 401
    assert "error" in client.get("/api/docs").json()
    client.force_login(get_user_model().objects.create_user("member", password="pw-long-enough-2"))
    assert client.get("/api/openapi.json").json() == {"error": "Only staff accounts may use the campaign API."}
    assert client.get("/api/nothing-here").json()["error"].startswith("No such endpoint")

    client.force_login(staff)
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.content.decode()
    assert "/static/ninja/swagger-ui-bundle.js" in html and "/api/openapi.json" in html
    assert "cdn" not in html.lower() and "https://" not in html  # works offline: nothing from a CDN
