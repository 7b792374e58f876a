"""`campaignd campaigns create -f FILE | list | show ID | activate ID | pause ID | resume ID
| set-rate ID RATE [--dry-run] | stop ID`."""

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


def _print_replans(replans: list[dict[str, Any]]) -> None:
    """One line per running run: what its re-plan does (or would do)."""
    if not replans:
        print("no running run to re-plan")
        return
    print(f"{'RUN':24} {'CAPACITY':>10} {'PENDING':>17} {'EXCLUDED':>17} {'BACK':>8} {'OUT':>8}")
    for item in replans:
        before, after = item["before"], item["after"]
        excluded = (before["excluded"]["time_cap"] + before["excluded"]["campaign_end"],
                    after["excluded"]["time_cap"] + after["excluded"]["campaign_end"])
        print(f"{item['run_id']:24} {item['capacity']:>10} "
              f"{before['pending']:>8}→{after['pending']:<8} "
              f"{excluded[0]:>8}→{excluded[1]:<8} {item['reinstated']:>8} {item['excluded']:>8}")


def _resume(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        if args.dry_run:
            answer = await client.call("POST", _path(args.id, "/resume"),
                                       params={"dry_run": "true"})
            print(f"{args.id}: would resume; the re-plan (nothing changed):")
            _print_replans(answer["replans"])
            return 0
        campaign = await client.call("POST", _path(args.id, "/resume"))
        print(f"{campaign['id']}: resumed (status {campaign['status']})")
        return 0

    return run(args, work)


def _set_rate(args: argparse.Namespace) -> int:
    if args.rate < 1:
        fail(f"RATE must be a positive integer, not {args.rate}")
    body = {"throttle": {"rate_per_second": args.rate}}

    async def work(client: Client) -> int:
        if args.dry_run:
            answer = await client.call("PATCH", _path(args.id), body=body,
                                       params={"dry_run": "true"})
            print(f"{args.id}: at {args.rate}/s, the re-plan would be (nothing changed):")
            _print_replans(answer["replans"])
            return 0
        campaign = await client.call("PATCH", _path(args.id), body=body)
        print(f"{campaign['id']}: rate {campaign['throttle']['rate_per_second']}/s "
              f"(status {campaign['status']}); running runs are re-planned by their daemon")
        return 0

    return run(args, work)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("campaigns", help="create, list, show, activate, pause, resume, "
                            "re-rate and stop campaigns")
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
    pause = actions.add_parser("pause", help="live -> paused (no call starts; nothing excluded)")
    pause.add_argument("id")
    pause.set_defaults(func=_transition("pause", "paused"))
    resume = actions.add_parser("resume", help="paused -> live (running runs re-planned)")
    resume.add_argument("id")
    resume.add_argument("--dry-run", action="store_true", help="print the re-plan, change nothing")
    resume.set_defaults(func=_resume)
    set_rate = actions.add_parser("set-rate", help="change a live or paused campaign's rate")
    set_rate.add_argument("id")
    set_rate.add_argument("rate", type=int, metavar="RATE", help="messages per second")
    set_rate.add_argument("--dry-run", action="store_true",
                          help="print the re-plan, change nothing")
    set_rate.set_defaults(func=_set_rate)
    stop = actions.add_parser("stop", help="stop a live or paused campaign and cancel its runs")
    stop.add_argument("id")
    stop.set_defaults(func=_transition("stop", "stopped"))
    for command in (create, listing, show, activate, pause, resume, set_rate, stop):
        add_client_arguments(command)
