"""What the HTTP client commands share: where the daemon is, the token, one request, errors.

The URL comes from `--url`, else the config (`http://{server.host}:{server.port}`);
the token from `--token`, else the admin-token file the daemon wrote under
`state_dir`. An API error is printed as one line (`409 campaign_not_live: ...`)
and the command exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from daemon.cli.common import add_config_argument, fail, load_config
from daemon.infra.bootstrap import admin_token_path

_ANY_HOST = ("", "0.0.0.0", "::")
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)


class ApiError(Exception):
    """The daemon answered with a problem."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body if isinstance(body, dict) else {}
        super().__init__(self.line())

    def line(self) -> str:
        code = self.body.get("code", "error")
        detail = self.body.get("detail") or self.body.get("title") or ""
        errors = self.body.get("errors") or []
        if errors and isinstance(errors[0], dict) and errors[0].get("loc"):
            first = errors[0]
            detail = f"{first.get('loc')}: {first.get('msg')}"
            if len(errors) > 1:
                detail += f" (and {len(errors) - 1} more)"
        return f"{self.status} {code}: {detail}"


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--url", help="the daemon's base URL (default: from the config)")
    parser.add_argument("--token", help="an API token (default: the admin-token file)")


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    token: str


def target(args: argparse.Namespace) -> Target:
    """The daemon's URL and the token, from the arguments or the config (exit on neither)."""
    url = args.url
    token = args.token
    if url is None or token is None:
        config = load_config(args)
        if url is None:
            host = config.server.host
            host = "127.0.0.1" if host in _ANY_HOST else host
            host = f"[{host}]" if ":" in host else host
            url = f"http://{host}:{config.server.port}"
        if token is None:
            path = admin_token_path(Path(config.state_dir))
            try:
                token = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                fail(f"no token: pass --token, or run where {path} is readable "
                     f"({exc.strerror})")
    return Target(url.rstrip("/"), token)


class Client:
    """One aiohttp session on the daemon, authenticated."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(
        self, method: str, path: str, *, body: Any = None,
        data: bytes | AsyncIterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None, params: Mapping[str, str] | None = None,
    ) -> Any:
        """The JSON answer (None for 204); raises ApiError on a 4xx/5xx."""
        sent = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        async with self.session.request(method, path, data=data, headers=sent,
                                        params=params) as response:
            text = await response.text()
            answer = answer_of(text)
            if response.status >= 400:
                raise ApiError(response.status, answer)
            return answer


def answer_of(text: str) -> Any:
    """An answer's body as JSON (None when empty; its start as `detail` when not JSON)."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {"detail": text[:200]}


def run(args: argparse.Namespace, work: Callable[[Client], Awaitable[int]]) -> int:
    """Run `work` with a client on the daemon; API and connection errors exit 1."""
    where = target(args)

    async def main() -> int:
        headers = {"Authorization": f"Bearer {where.token}"}
        async with aiohttp.ClientSession(where.url, headers=headers, timeout=TIMEOUT) as session:
            return await work(Client(session))

    try:
        return asyncio.run(main())
    except ApiError as exc:
        fail(exc.line())
    except aiohttp.ClientConnectionError as exc:
        fail(f"cannot reach the daemon at {where.url}: {exc}")
    except aiohttp.InvalidURL:
        fail(f"not a URL: {where.url}")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))
