"""Profiles: upsert, read, erase; the streamed NDJSON/CSV import."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.api.conftest import Api

NDJSON = {"Content-Type": "application/x-ndjson"}
CSV = {"Content-Type": "text/csv"}


async def test_put_creates_then_replaces_keeping_unsent_subscriptions(api: Api) -> None:
    response = await api.put("/v1/profiles/p1", json={
        "email": "a@example.com", "phone": "+33612345678", "push_tokens": ["t"],
        "attributes": {"first_name": "Ann"}, "subscriptions": {"sms": False},
    })
    assert response.status == 201
    assert response.headers["Location"] == "/v1/profiles/p1"
    created = await response.json()
    assert created["subscriptions"] == {"email": True, "sms": False, "push": True}
    replaced = await api.json("PUT", "/v1/profiles/p1", 200, json={"email": "b@example.com"})
    assert replaced["email"] == "b@example.com"
    assert replaced["phone"] is None
    assert replaced["push_tokens"] == []
    assert replaced["attributes"] == {}
    assert replaced["subscriptions"] == {"email": True, "sms": False, "push": True}
    assert await api.json("GET", "/v1/profiles/p1", 200) == replaced


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"email": "nope"}, "email"),
        ({"phone": "0612345678"}, "phone"),
        ({"push_tokens": "t"}, "push_tokens"),
        ({"attributes": {"x": "y" * 70_000}}, "attributes"),
        ({"subscriptions": {"email": "no"}}, "subscriptions.email"),
        ({"id": "other"}, "id"),
        ({"attributes": {"k\u0000": 1}}, "attributes"),
    ],
)
async def test_put_refuses_invalid_profiles(api: Api, body: dict[str, Any], loc: str) -> None:
    problem = await api.json("PUT", "/v1/profiles/p1", 422, json=body)
    assert problem["errors"][0]["loc"] == loc


async def test_delete_erases_profile_and_memberships(api: Api) -> None:
    await api.audience("a", "p1", "p2")
    await api.json("DELETE", "/v1/profiles/p1", 204)
    await api.json("GET", "/v1/profiles/p1", 404)
    await api.json("DELETE", "/v1/profiles/p1", 404)
    assert (await api.json("GET", "/v1/audiences/a", 200))["size"] == 1


async def test_profiles_need_admin(api: Api) -> None:
    await api.json("GET", "/v1/profiles/p1", 403, token="trigger")
    await api.json("GET", "/v1/profiles/p1", 401, token=None)


async def _chunks(text: str, size: int) -> AsyncIterator[bytes]:
    data = text.encode()
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def test_ndjson_import_reports_bad_lines_and_keeps_good_ones(api: Api) -> None:
    await api.put("/v1/profiles/old", json={"email": "old@example.com", "phone": "+3361",
                                            "attributes": {"a": 1, "b": 1}})
    lines = [
        {"id": "p1", "email": "p1@example.com", "attributes": {"plan": "pro"}},
        "not json",
        {"id": "bad id"},
        {"id": "old", "attributes": {"b": 2}, "subscriptions": {"email": False}},
        [1, 2],
        {"id": "p2", "push_tokens": ["t1"], "extra": True},
        {"id": "p3", "phone": "+14155550100"},
        {"id": "p1", "email": "again@example.com"},
    ]
    body = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n\n"
    # Tiny chunks: lines are cut anywhere, and must be put back together.
    result = await api.json("POST", "/v1/profiles/import", 200, data=_chunks(body, 7),
                            headers=NDJSON)
    assert result["received"] == 8
    assert result["imported"] == 4
    assert result["rejected"] == 4
    assert [e["line"] for e in result["errors"]] == [2, 3, 5, 6]
    assert "extra" in result["errors"][3]["reason"]
    assert (result["created"], result["updated"]) == (2, 1)
    p1 = await api.json("GET", "/v1/profiles/p1", 200)
    assert p1["email"] == "again@example.com"  # the last line of an id wins
    old = await api.json("GET", "/v1/profiles/old", 200)
    assert old["email"] == "old@example.com"  # absent: kept
    assert old["attributes"] == {"a": 1, "b": 2}  # merged
    assert old["subscriptions"]["email"] is False


async def test_csv_import_with_quotes_newlines_and_attribute_columns(api: Api) -> None:
    body = (
        'id,email,phone,push_token,first_name,note\r\n'
        'c1,c1@example.com,,tok1,Ann,"multi\nline, with ""quotes"""\r\n'
        'c2,,+33612345678,,Bob,\r\n'
        'c3,not-an-email,,,,\r\n'
        'c4,too,many,cells,here,x,y\r\n'
        ',c5@example.com,,,,\r\n'
    )
    result = await api.json("POST", "/v1/profiles/import", 200, data=body, headers=CSV)
    assert (result["received"], result["imported"], result["rejected"]) == (5, 2, 3)
    # Line numbers are physical: the quoted newline makes c1's record lines 2 and 3.
    assert [e["line"] for e in result["errors"]] == [5, 6, 7]
    c1 = await api.json("GET", "/v1/profiles/c1", 200)
    assert c1["push_tokens"] == ["tok1"]
    assert c1["attributes"] == {"first_name": "Ann", "note": 'multi\nline, with "quotes"'}
    c2 = await api.json("GET", "/v1/profiles/c2", 200)
    assert (c2["email"], c2["phone"], c2["attributes"]) == (None, "+33612345678",
                                                            {"first_name": "Bob"})


async def test_csv_without_id_column_rejects_the_header(api: Api) -> None:
    result = await api.json("POST", "/v1/profiles/import", 200, data="email\na@b.co\n",
                            headers=CSV)
    assert result["imported"] == 0
    assert result["errors"][0]["line"] == 1
    assert "id" in result["errors"][0]["reason"]


async def test_import_reports_only_the_first_hundred_errors(api: Api) -> None:
    body = "".join(f'{{"id": "ok{i}"}}\nbad\n' for i in range(150))
    result = await api.json("POST", "/v1/profiles/import", 200, data=body, headers=NDJSON)
    assert (result["imported"], result["rejected"]) == (150, 150)
    assert len(result["errors"]) == 100
    assert result["errors"][-1]["line"] == 200


async def test_import_into_an_audience_keeps_line_order(api: Api) -> None:
    await api.json("PUT", "/v1/audiences/a", 201, json={})
    body = "".join(json.dumps({"id": pid}) + "\n" for pid in ["z", "b", "m", "b"])
    result = await api.json("POST", "/v1/profiles/import?audience=a", 200, data=body,
                            headers=NDJSON)
    assert result["added_to_audience"] == 3
    order = await api.pool.fetch(
        "SELECT profile_id FROM audience_members WHERE audience_id = 'a' ORDER BY position")
    assert [r["profile_id"] for r in order] == ["z", "b", "m"]
    problem = await api.json("POST", "/v1/profiles/import?audience=none", 404, data=body,
                             headers=NDJSON)
    assert problem["code"] == "not_found"


async def test_import_refuses_other_content_types(api: Api) -> None:
    await api.json("POST", "/v1/profiles/import", 415, data="{}",
                   headers={"Content-Type": "application/json"})


async def test_import_skips_overlong_and_non_utf8_lines(api: Api) -> None:
    body = (b'{"id": "a"}\n' + b'{"id": "' + b"x" * (1024 * 1024 + 10) + b'"}\n'
            + b'{"id": "\xff"}\n{"id": "b"}')
    result = await api.json("POST", "/v1/profiles/import", 200, data=_bytes(body),
                            headers=NDJSON)
    assert (result["imported"], result["rejected"]) == (2, 2)
    assert [e["line"] for e in result["errors"]] == [2, 3]


async def _bytes(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 65536):
        yield data[start:start + 65536]
