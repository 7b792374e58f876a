"""`campaignd trigger CAMPAIGN [--context JSON] [--audience ID] [--idempotency-key K]`."""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from daemon.cli.client import Client, add_client_arguments, print_json, run
from daemon.cli.common import fail


def _context(text: str | None) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        fail(f"--context is not JSON: {exc}")
    if not isinstance(value, dict):
        fail("--context must be a JSON object")
    return value


def _trigger(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    context = _context(args.context)
    if context is not None:
        body["context"] = context
    if args.audience:
        body["audience"] = args.audience
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    params = {"dry_run": "true"} if args.dry_run else None

    async def work(client: Client) -> int:
        path = f"/v1/campaigns/{quote(args.campaign, safe='')}/triggers"
        print_json(await client.call("POST", path, body=body, headers=headers, params=params))
        return 0

    return run(args, work)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("trigger", help="trigger a live campaign (prints the run)")
    parser.add_argument("campaign", help="the campaign id")
    parser.add_argument("--context", help="a JSON object templates see as `context`")
    parser.add_argument("--audience", help="a stored audience (default: the campaign's)")
    parser.add_argument("--idempotency-key", help="repeat-safe: the same key gives the same run")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and preview; create nothing")
    add_client_arguments(parser)
    parser.set_defaults(func=_trigger)
