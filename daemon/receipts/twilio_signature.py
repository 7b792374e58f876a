"""Twilio's request signature (`X-Twilio-Signature`), as Twilio documents it.

https://www.twilio.com/docs/usage/security#validating-requests: take the full URL Twilio
requested (as configured: scheme, host, path and query string), append each POST
parameter's name and value with no delimiter, the names sorted (case-sensitive, by code
point), sign the string with HMAC-SHA1 keyed by the account's auth token, base64 it, and
compare with the header. As Twilio's own validator does, a name given several times
contributes each distinct value in sorted order, and the URL is tried with and without
its default port (Twilio's signing is not consistent about it). Comparisons are
constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

HEADER = "X-Twilio-Signature"


def signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """The base64 HMAC-SHA1 Twilio sends for a POST of `params` to `url`."""
    values: dict[str, set[str]] = {}
    for name, value in params:
        values.setdefault(name, set()).add(value)
    signed = url + "".join(name + value for name in sorted(values)
                           for value in sorted(values[name]))
    digest = hmac.digest(auth_token.encode(), signed.encode(), hashlib.sha1)
    return base64.b64encode(digest).decode("ascii")


def url_variants(url: str) -> list[str]:
    """`url` as given, and with its default port added or removed."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if parts.port is None and default is not None:
        other = parts._replace(netloc=f"{prefix}{host}:{default}")
    elif parts.port is not None and parts.port == default:
        other = parts._replace(netloc=f"{prefix}{host}")
    else:
        return [url]
    return [url, urlunsplit(other)]


def valid(auth_token: str, url: str, params: list[tuple[str, str]], given: str) -> bool:
    """Whether `given` (the header's value) signs this request."""
    if not given:
        return False
    candidate = given.strip().encode()
    matches = [hmac.compare_digest(signature(auth_token, variant, params).encode(), candidate)
               for variant in url_variants(url)]
    return any(matches)
