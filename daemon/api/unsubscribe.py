"""`/v1/unsubscribe/{token}`: one-click unsubscribe (RFC 8058), no credential but the token.

- `POST` turns the channel off for the profile the token names and suppresses the
  address (store.suppressions), also for a profile erased since: 200, idempotent.
  Mailbox providers POST `List-Unsubscribe=One-Click`; the confirmation page's
  button POSTs too. The answer is JSON, or a small HTML page for a browser
  (`Accept: text/html`).
- `GET` shows a confirmation page with that button and changes nothing: mail
  scanners and link previews fetch URLs, and must not unsubscribe anyone.
- A token that does not verify: 404 `invalid_token` (problem+json; an HTML page
  for GET). 404 rather than 400: the token is the resource's name, and a bad
  one names nothing.
"""

from __future__ import annotations

import asyncio
import html

from aiohttp import web

from daemon import unsubscribe
from daemon.api.context import context
from daemon.api.problems import problem
from daemon.infra.logs import get_logger
from daemon.models import Channel
from daemon.store import Executor, profiles_tokens

log = get_logger(__name__)

PATH = "/v1/unsubscribe/{token}"
_CHANNEL_WORDS = {
    Channel.EMAIL: "emails",
    Channel.SMS: "text messages",
    Channel.PUSH: "push notifications",
}
# The token is in the URL: keep it out of Referer headers, caches and frames.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
}
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font-size:1rem;padding:.6rem 1.2rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""


class SigningKey:
    """The installation's unsubscribe key, loaded from the database once, on first need."""

    def __init__(self) -> None:
        self._key: bytes | None = None
        self._lock = asyncio.Lock()

    async def get(self, executor: Executor) -> bytes:
        if self._key is None:
            async with self._lock:
                if self._key is None:
                    self._key = await unsubscribe.load_key(executor)
        return self._key


SIGNING_KEY = web.AppKey("campaignd.unsubscribe_key", SigningKey)


async def _target(request: web.Request) -> unsubscribe.Target | None:
    key = await request.app[SIGNING_KEY].get(context(request).pool)
    return unsubscribe.verify(key, request.match_info["token"])


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = _PAGE.format(title=html.escape(title), body=body)
    return web.Response(
        status=status,
        text=text,
        content_type="text/html",
        charset="utf-8",
        headers=_PAGE_HEADERS,
    )


def _invalid_page() -> web.Response:
    return _page(
        "This link is not valid",
        "<p>The unsubscribe link is incomplete or was altered. "
        "Copy the whole link from the message and try again.</p>",
        status=404,
    )


async def confirm_page(request: web.Request) -> web.Response:
    """GET: a confirmation page with a button; nothing changes until it is pressed."""
    target = await _target(request)
    if target is None:
        return _invalid_page()
    words = _CHANNEL_WORDS[target.channel]
    # Posting to the same URL: the form carries the RFC 8058 body, like a mailbox provider.
    body = (
        f"<p>Stop receiving {words} from us?</p>"
        '<form method="post">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        f'<button type="submit">Unsubscribe from {words}</button></form>'
    )
    return _page("Unsubscribe", body)


def _wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


async def unsubscribe_now(request: web.Request) -> web.Response:
    """POST: turn the channel off for the profile; 200 whether or not it was already off."""
    target = await _target(request)
    if target is None:
        raise problem(404, "invalid_token", "this unsubscribe link is not valid")
    ctx = context(request)
    done = await profiles_tokens.unsubscribe(ctx.pool, target.profile_id, target.channel,
                                             target.address_sha256)
    if done.changed:
        log.info("profile.unsubscribed", profile_id=target.profile_id, channel=target.channel.value)
    if done.suppressed:
        # Also when the profile is gone (erased): its address stays unsubscribed.
        log.info("suppression.added", profile_id=target.profile_id,
                 channel=target.channel.value, addresses=done.suppressed)
    if _wants_html(request):
        words = _CHANNEL_WORDS[target.channel]
        return _page(
            "You are unsubscribed", f"<p>You will not receive {words} from us any more.</p>"
        )
    return web.json_response({"unsubscribed": True, "channel": target.channel.value})


def add_routes(app: web.Application) -> None:
    app[SIGNING_KEY] = SigningKey()
    app.router.add_get(PATH, confirm_page)
    app.router.add_post(PATH, unsubscribe_now)
