"""Hostile templates through the real app: a create answers 201 or 422, never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.hostile_templates import TEMPLATES
from tests.integration.api.conftest import EMAIL_CONTENT, Api, campaign_body

NESTED_SUMS = "{{ " + "+".join(["context.a"] * 250) + " }}"


@pytest.mark.parametrize("source", [NESTED_SUMS, "{{ " + "(" * 300 + "1" + ")" * 300 + " }}"])
async def test_a_template_python_cannot_compile_is_422_naming_the_field(
    api: Api, source: str
) -> None:
    content = {**EMAIL_CONTENT, "text": source}
    problem = await api.json("POST", "/v1/campaigns", 422, json=campaign_body(content=content))
    assert problem["code"] == "validation_error"
    assert problem["errors"][0]["loc"] == "content.text"
    assert "too complex" in problem["errors"][0]["msg"] or "nested" in problem["errors"][0]["msg"]
    assert "Traceback" not in problem["detail"] and "def root" not in problem["detail"]


async def test_a_patch_with_such_a_template_is_422_too(api: Api) -> None:
    await api.json("POST", "/v1/campaigns", 201, json=campaign_body())
    problem = await api.json("PATCH", "/v1/campaigns/spring-sale", 422,
                             json={"content": {**EMAIL_CONTENT, "subject": NESTED_SUMS}})
    assert problem["errors"][0]["loc"] == "content.subject"


@pytest.mark.parametrize("source", [
    "{{ 'a'|center(2500000000) }}", "{{ '%03000000000d'|format(1) }}",
    "{{ 'a'|center(200000000) }}",
])
async def test_an_unbounded_constant_is_stored_not_evaluated(api: Api, source: str) -> None:
    content = {**EMAIL_CONTENT, "text": source}
    created = await api.json("POST", "/v1/campaigns", 201, json=campaign_body(content=content))
    assert created["content"]["text"] == source


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(source=TEMPLATES)
async def test_fuzzed_templates_are_201_or_422(api: Api, source: str) -> None:
    body: dict[str, Any] = campaign_body(content={**EMAIL_CONTENT, "html": source})
    del body["id"]  # each example its own campaign, on the one database of the test
    response = await api.request("POST", "/v1/campaigns", json=body)
    assert response.status in (201, 422), await response.text()
