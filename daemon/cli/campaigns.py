"""`campaignd campaigns create -f FILE | list | show ID | activate ID | stop ID`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import quote

from daemon.cli.client import Client, add_client_arguments, print_json, run
from daemon.cli.common import fail
from daemon.models import CampaignStatus


def _plain(value: Any) -> Any:
    """TOML values as JSON ones: dates and times become RFC 3339 strings."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return value


def read_definition(path: Path) -> Any:
    """A campaign body from a .json or .toml file (exit 1 with the reason if unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc}")
    try:
        if path.suffix.lower() == ".toml":
            return _plain(tomllib.loads(text))
        return json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        fail(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {exc}")


def _path(campaign_id: str, action: str = "") -> str:
    return f"/v1/campaigns/{quote(campaign_id, safe='')}{action}"


def _create(args: argparse.Namespace) -> int:
    definition = read_definition(args.file)

    async def work(client: Client) -> int:
        print_json(await client.call("POST", "/v1/campaigns", body=definition))
        return 0

    return run(args, work)


def _list(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        params: dict[str, str] = {"limit": "1000"}
        if args.status:
            params["status"] = args.status
        print(f"{'ID':32} {'STATUS':10} {'CHANNEL':8} NAME")
        while True:
            page = await client.call("GET", "/v1/campaigns", params=params)
            for item in page["items"]:
                print(f"{item['id']:32} {item['status']:10} {item['channel']:8} {item['name']}")
            if not page["next_cursor"]:
                return 0
            params["cursor"] = page["next_cursor"]

    return run(args, work)


def _show(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        print_json(await client.call("GET", _path(args.id)))
        return 0

    return run(args, work)


def _transition(action: str, done: str) -> Any:
    def command(args: argparse.Namespace) -> int:
        async def work(client: Client) -> int:
            campaign = await client.call("POST", _path(args.id, f"/{action}"))
            print(f"{campaign['id']}: {done} (status {campaign['status']})")
            return 0

        return run(args, work)

    return command


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("campaigns", help="create, list, show, activate and stop campaigns")
    actions = parser.add_subparsers(dest="campaigns_command", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a draft campaign from a JSON/TOML file")
    create.add_argument("-f", "--file", type=Path, required=True,
                        help="the campaign definition (.json or .toml)")
    create.set_defaults(func=_create)
    listing = actions.add_parser("list", help="list campaigns")
    listing.add_argument("--status", choices=[s.value for s in CampaignStatus])
    listing.set_defaults(func=_list)
    show = actions.add_parser("show", help="print a campaign")
    show.add_argument("id")
    show.set_defaults(func=_show)
    activate = actions.add_parser("activate", help="draft -> live")
    activate.add_argument("id")
    activate.set_defaults(func=_transition("activate", "activated"))
    stop = actions.add_parser("stop", help="stop a live campaign and cancel its runs")
    stop.add_argument("id")
    stop.set_defaults(func=_transition("stop", "stopped"))
    for command in (create, listing, show, activate, stop):
        add_client_arguments(command)
