"""`/openapi.json`: the OpenAPI 3.1 document, generated from the operations and their models.

Every route registered through `operations.register` is described from its
`Operation`; the routes other modules add directly (probes, metrics,
unsubscribe) are described here. Every operation lists its error answers
(problem+json) and its security (bearer token, or Standard Webhooks signature).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from daemon import __version__
from daemon.api import people_schemas, schemas
from daemon.api.operations import OPERATIONS, Operation, Reply, json_answer
from daemon.api.problems import PROBLEM_CONTENT_TYPE
from daemon.models import ID_PATTERN

REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"{(\w+)}")
_ERROR_TEXT = {
    400: "Malformed JSON (`malformed_json`), a body cut short, or a request the HTTP layer "
    "cannot parse (a request line or header over 8 KiB: plain text).",
    401: "No or invalid credentials (`unauthorized`, `invalid_signature`).",
    403: "The token's scope does not allow this (`forbidden`).",
    404: "No such resource (`not_found`).",
    405: "Method not allowed.",
    409: "State conflict: see `code`.",
    413: "Body too large (`body_too_large`).",
    415: "Unsupported Content-Type (`unsupported_media_type`).",
    422: "Validation failed (`validation_error`, `idempotency_key_reused`): see `errors`.",
    503: "Not ready or shutting down (`shutting_down`, `database_unavailable`).",
}
_PATH_PATTERNS = {"id": ID_PATTERN, "profile_id": ID_PATTERN}
_RUN_ID_PATTERN = r"^run_[0-9A-Za-z]{1,64}$"
# Models every document carries, besides those operations name.
_EXTRA_MODELS: list[type[BaseModel]] = [
    schemas.EmailContent, schemas.SmsContent, schemas.PushContent, people_schemas.ProfileLine,
    people_schemas.MemberLine,
]


class _Document:
    """Built on first request (every route module has registered by then), then kept."""

    def __init__(self) -> None:
        self.content: dict[str, Any] | None = None


DOCUMENT = web.AppKey("campaignd.openapi", _Document)


def _no_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without the `null` branch of an optional field."""
    options = schema.get("anyOf")
    if options:
        kept = [option for option in options if option.get("type") != "null"]
        if len(kept) == 1:
            merged = {k: v for k, v in schema.items() if k != "anyOf"}
            return {**kept[0], **merged}
    return schema


def _path_parameters(path: str) -> list[dict[str, Any]]:
    parameters = []
    for name in _PARAM.findall(path):
        pattern = _RUN_ID_PATTERN if path.startswith("/v1/runs/") else _PATH_PATTERNS.get(name)
        schema: dict[str, Any] = {"type": "string", "minLength": 1}
        if pattern:
            schema["pattern"] = pattern
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return parameters


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required,
         "schema": _no_null(property_schema)}
        for name, property_schema in schema.get("properties", {}).items()
    ]


FORM = "application/x-www-form-urlencoded"


def _stream_schema(media: str, text: str) -> dict[str, Any]:
    """A body read as a stream: a string, except a form, which OpenAPI describes as the
    object of its fields (a generator given a string for a form can make almost nothing
    encodable of it: schemathesis failed its health check on the Twilio receipts)."""
    if media == FORM:
        return {"type": "object", "additionalProperties": {"type": "string"},
                "description": text}
    return {"type": "string", "description": text}


def _problem_reply(status: int) -> dict[str, Any]:
    content: dict[str, Any] = {
        PROBLEM_CONTENT_TYPE: {"schema": {"$ref": REF.format(model="ProblemBody")}}
    }
    if status == 400:  # the HTTP layer refuses unparsable requests in plain text
        content["text/plain"] = {"schema": {"type": "string"}}
    return {"description": _ERROR_TEXT.get(status, "Error."), "content": content}


def _reply(reply: Reply, refs: dict[Any, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": reply.description}
    if reply.model is not None:
        answer["content"] = {"application/json": {"schema": refs[(reply.model, "serialization")]}}
    for media, text in reply.media.items():
        answer.setdefault("content", {})[media] = {
            "schema": {"type": "string", "description": text}}
    if reply.headers:
        answer["headers"] = {name: {"schema": {"type": "string"}} for name in reply.headers}
    if reply.links:
        answer["links"] = {
            target: {"operationId": target, "parameters": {"id": expression}}
            for target, expression in reply.links
        }
    return answer


def _operation(operation: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    parameters = _path_parameters(operation.path)
    if operation.query is not None:
        parameters += _query_parameters(operation.query)
    parameters += [
        {"name": header.name, "in": "header", "required": False, "description": header.description,
         "schema": {"type": "string", "minLength": 1, "maxLength": header.max_length}}
        for header in operation.headers
    ]
    document: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
        "parameters": parameters,
        "responses": {str(status): _reply(reply, refs)
                      for status, reply in sorted(operation.replies.items())},
    }
    if operation.description:
        document["description"] = operation.description
    if operation.body is not None:
        document["requestBody"] = {
            "required": operation.body_required,
            "content": {"application/json": {"schema": refs[(operation.body, "validation")]}},
        }
    elif operation.stream_types:
        document["requestBody"] = {"required": True, "content": {
            media: {"schema": _stream_schema(media, text)}
            for media, text in operation.stream_types.items()
        }}
    errors = set(operation.errors) | {400, 503}
    if operation.scope is not None:
        errors |= {401, 403}
        document["security"] = [{"bearerAuth": []}]
        if operation.signed:
            document["security"].append({"webhookSignature": []})
    else:
        document["security"] = []
    for status in sorted(errors):
        document["responses"][str(status)] = _problem_reply(status)
    return document


def _static_paths() -> dict[str, Any]:
    """Routes added outside `operations.register` (health, metrics, unsubscribe, this one)."""
    json_object = {"application/json": {"schema": {"type": "object"}}}
    html = {"text/html": {"schema": {"type": "string"}}}
    token = [{"name": "token", "in": "path", "required": True,
              "schema": {"type": "string", "minLength": 1}}]
    probe = {"description": "Alive.", "content": json_object}
    return {
        "/healthz": {"get": {"operationId": "healthz", "summary": "Liveness", "tags": ["ops"],
                             "security": [], "responses": {"200": probe}}},
        "/readyz": {"get": {"operationId": "readyz", "tags": ["ops"], "security": [],
                            "summary": "Readiness: database reachable, migrations applied",
                            "responses": {"200": {"description": "Ready.",
                                                  "content": json_object},
                                          "503": _problem_reply(503)}}},
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics",
                             "description": "An admin token, unless `server.public_metrics` "
                             "is true (then no credential).",
                             "tags": ["ops"], "security": [{"bearerAuth": []}, {}], "responses": {
                                 "200": {"description": "Prometheus text format.",
                                         "content": {"text/plain": {"schema": {
                                             "type": "string"}}}},
                                 "401": _problem_reply(401), "403": _problem_reply(403)}}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                  "tags": ["ops"], "security": [], "responses": {
                                      "200": {"description": "OpenAPI 3.1.",
                                              "content": json_object},
                                      "503": _problem_reply(503)}}},
        "/v1/unsubscribe/{token}": {
            "get": {"operationId": "unsubscribePage", "tags": ["unsubscribe"], "security": [],
                    "summary": "Confirmation page (changes nothing)", "parameters": token,
                    "responses": {"200": {"description": "The page.", "content": html},
                                  "404": {"description": "Invalid link.", "content": html},
                                  "503": _problem_reply(503)}},
            "post": {"operationId": "unsubscribe", "tags": ["unsubscribe"], "security": [],
                     "summary": "One-click unsubscribe (RFC 8058)", "parameters": token,
                     "responses": {"200": {"description": "Unsubscribed (idempotent).",
                                           "content": {**json_object, **html}},
                                   "404": _problem_reply(404), "503": _problem_reply(503)}},
        },
    }


def _with_bad_request(paths: dict[str, Any]) -> dict[str, Any]:
    for item in paths.values():
        for operation in item.values():
            operation["responses"].setdefault("400", _problem_reply(400))
    return paths


def build(operations: list[Operation]) -> dict[str, Any]:
    """The whole document for these operations."""
    keys: list[tuple[type[BaseModel], Any]] = [(schemas.ProblemBody, "serialization")]
    keys += [(model, "validation") for model in _EXTRA_MODELS]
    for operation in operations:
        if operation.body is not None:
            keys.append((operation.body, "validation"))
        keys += [(reply.model, "serialization") for reply in operation.replies.values()
                 if reply.model is not None]
    refs, definitions = models_json_schema(list(dict.fromkeys(keys)), ref_template=REF)
    paths: dict[str, Any] = _with_bad_request(_static_paths())
    for operation in operations:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(
            operation, refs
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": "campaignd", "version": __version__,
                 "description": "API-triggered messaging campaigns (email, SMS, push)."},
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "A token from `campaignd tokens create`; "
                               "scope `admin` (everything) or `trigger`."},
                "webhookSignature": {
                    "type": "apiKey", "in": "header", "name": "webhook-signature",
                    "description": "Standard Webhooks: `webhook-id`, `webhook-timestamp` and "
                    "`webhook-signature: v1,<base64 HMAC-SHA256>` with a secret of "
                    "`auth.webhook_secrets` (triggers only). A `webhook-id` is good for one "
                    "campaign; a secret bound to campaigns triggers only those (403 "
                    "`campaign_not_allowed`)."},
            },
        },
    }


async def openapi(request: web.Request) -> web.Response:
    document = request.app[DOCUMENT]
    if document.content is None:
        document.content = build(request.app.get(OPERATIONS, []))
    return json_answer(document.content)


def add_routes(app: web.Application) -> None:
    app[DOCUMENT] = _Document()
    app.router.add_get("/openapi.json", openapi, allow_head=False)
