"""The OpenAPI document: public, complete (every route), and true to what the API answers."""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs

from tests.integration.api.conftest import Api, campaign_body

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


async def _document(api: Api) -> dict[str, Any]:
    document: dict[str, Any] = await api.json("GET", "/openapi.json", 200, token=None)
    return document


async def test_every_route_of_the_app_is_documented(api: Api) -> None:
    document = await _document(api)
    assert document["openapi"] == "3.1.0"
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in api.client.app.router.routes()
        if route.method in METHODS and route.resource is not None
        and not route.resource.canonical.startswith("/ui")  # the pages: not an API
    }
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert routes - documented == set()
    assert documented - routes == set()


async def test_every_operation_documents_its_errors_and_security(api: Api) -> None:
    document = await _document(api)
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["webhookSignature"]["in"] == "header"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "503" in responses or path in ("/healthz", "/metrics"), (method, path)
            if operation["security"]:
                assert {"401", "403"} <= set(responses), (method, path)
            for status, answer in responses.items():
                if int(status) >= 400 and "application/problem+json" in answer.get("content", {}):
                    ref = answer["content"]["application/problem+json"]["schema"]["$ref"]
                    assert ref.endswith("/ProblemBody")
    trigger = document["paths"]["/v1/campaigns/{id}/triggers"]["post"]
    assert trigger["security"] == [{"bearerAuth": []}, {"webhookSignature": []}]


def _validator(document: dict[str, Any], name: str) -> Any:
    """A JSON Schema 2020-12 validator (schemathesis's own) for one component."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema_rs.Draft202012Validator(schema)


async def test_answers_conform_to_the_document(api: Api) -> None:
    document = await _document(api)
    created = await api.json("POST", "/v1/campaigns", 201, json=campaign_body(
        audience="a", schedule={"end_at": "2026-04-01T00:00:00Z"}))
    _validator(document, "Campaign").validate(created)
    await api.json("POST", "/v1/campaigns/spring-sale/activate", 200)
    await api.audience("a", "p1")
    preview = await api.json("POST", "/v1/campaigns/spring-sale/triggers?dry_run=true", 200)
    _validator(document, "TriggerPreview").validate(preview)
    accepted = await api.json("POST", "/v1/campaigns/spring-sale/triggers", 202)
    _validator(document, "TriggerAccepted").validate(accepted)
    report = await api.json("GET", accepted["links"]["run"], 200)
    _validator(document, "RunReport").validate(report)
    campaign_report = await api.json("GET", "/v1/campaigns/spring-sale/report", 200)
    _validator(document, "CampaignReport").validate(campaign_report)
    page = await api.json("GET", "/v1/campaigns", 200)
    _validator(document, "CampaignPage").validate(page)
    profile = await api.json("GET", "/v1/profiles/p1", 200)
    _validator(document, "Profile").validate(profile)
    audience = await api.json("GET", "/v1/audiences/a", 200)
    _validator(document, "Audience").validate(audience)
    recipients = await api.json("GET", accepted["links"]["run"] + "/recipients", 200)
    _validator(document, "RecipientPage").validate(recipients)
    imported = await api.json("POST", "/v1/profiles/import", 200, data='{"id": "p2"}\nx\n',
                              headers={"Content-Type": "application/x-ndjson"})
    _validator(document, "ImportResult").validate(imported)
    problem = await api.json("GET", "/v1/campaigns/nope", 404)
    _validator(document, "ProblemBody").validate(problem)


async def test_path_patterns_match_the_handlers(api: Api) -> None:
    document = await _document(api)
    parameters = document["paths"]["/v1/runs/{id}"]["get"]["parameters"]
    pattern = parameters[0]["schema"]["pattern"]
    assert re.match(pattern, "run_01KJMMA2G0V58DBK0ZGH2VEVHJ")


async def test_a_form_body_is_documented_as_the_object_of_its_fields(api: Api) -> None:
    """A form described as a string leaves a generator almost nothing it can encode as a form
    (schemathesis failed its health check on the Twilio receipts)."""
    document = await _document(api)
    body = document["paths"]["/v1/receipts/twilio/{provider}"]["post"]["requestBody"]
    schema = body["content"]["application/x-www-form-urlencoded"]["schema"]
    assert schema["type"] == "object"
    assert schema["additionalProperties"] == {"type": "string"}
    webhook = document["paths"]["/v1/receipts/webhook/{provider}"]["post"]["requestBody"]
    assert webhook["content"]["application/x-ndjson"]["schema"]["type"] == "string"
