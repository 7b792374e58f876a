"""`campaignd runs show RUN`, `campaignd runs watch RUN` (a live progress bar) and
`campaignd runs rerun RUN --only time_cap,failed [--dry-run]`."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any, TextIO
from urllib.parse import quote
from zoneinfo import ZoneInfo

from daemon.cli import export
from daemon.cli.client import Client, add_client_arguments, print_json, run
from daemon.infra.clock import SystemClock

TERMINAL = frozenset({"completed", "cancelled", "failed"})
BAR_WIDTH = 30


def _path(run_id: str) -> str:
    return f"/v1/runs/{quote(run_id, safe='')}"


def _show(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        print_json(await client.call("GET", _path(args.run)))
        return 0

    return run(args, work)


def progress_line(report: dict[str, Any], rate: float | None) -> str:
    """One line: bar, counts, achieved rate, ETA and deadline."""
    counts = report["counts"]
    excluded = sum(counts["excluded"].values())
    targeted = counts["targeted"]
    done = counts["sent"] + counts["failed"] + excluded
    filled = int(BAR_WIDTH * done / targeted) if targeted else 0
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    parts = [
        f"[{bar}] {done}/{targeted}",
        f"sent {counts['sent']}",
        f"failed {counts['failed']}",
        f"excluded {excluded}",
        f"pending {counts['pending']}",
    ]
    if rate is not None:
        parts.append(f"{rate:.1f}/s")
        if rate > 0 and counts["pending"]:
            parts.append(f"ETA {_duration(counts['pending'] / rate)}")
    if report.get("deadline"):
        parts.append(f"deadline {report['deadline']}")
    waiting = window_wait(report.get("send_window"))
    if waiting:
        parts.append(waiting)
    return f"{report['status']:9} " + " | ".join(parts)


def window_wait(state: dict[str, Any] | None) -> str | None:
    """"waiting for window (opens Mon 08:00 Europe/Paris)" while a send window is closed."""
    if not state or state["open"] or not state.get("next_opening"):
        return None
    zone = state["timezone"]
    opening = datetime.fromisoformat(state["next_opening"].replace("Z", "+00:00"))
    local = opening.astimezone(ZoneInfo(zone))
    return f"waiting for window (opens {local:%a %H:%M} {zone})"


def summary_line(report: dict[str, Any]) -> str:
    counts = report["counts"]
    reasons = ", ".join(f"{k} {v}" for k, v in counts["excluded"].items() if v) or "none"
    took = ""
    if report.get("started_at") and report.get("finished_at"):
        started = datetime.fromisoformat(report["started_at"].replace("Z", "+00:00"))
        finished = datetime.fromisoformat(report["finished_at"].replace("Z", "+00:00"))
        took = f" in {_duration((finished - started).total_seconds())}"
    return (f"{report['id']} {report['status']} ({report.get('end_reason')}){took}: "
            f"targeted {counts['targeted']}, sent {counts['sent']}, failed {counts['failed']}, "
            f"excluded: {reasons}")


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


async def watch(client: Client, run_id: str, interval: float, out: TextIO) -> dict[str, Any]:
    """Poll the run until it ends, drawing progress; returns the final report."""
    clock = SystemClock()
    tty = out.isatty()
    previous: tuple[float, int] | None = None
    rate: float | None = None
    while True:
        report: dict[str, Any] = await client.call("GET", _path(run_id))
        counts = report["counts"]
        attempted = counts["sent"] + counts["failed"]
        now = clock.monotonic()
        if previous is not None and now > previous[0]:
            rate = (attempted - previous[1]) / (now - previous[0])
        previous = (now, attempted)
        line = progress_line(report, rate)
        out.write(("\r\x1b[2K" + line) if tty else line + "\n")
        out.flush()
        if report["status"] in TERMINAL:
            if tty:
                out.write("\n")
            out.write(summary_line(report) + "\n")
            return report
        await clock.sleep(interval)


def _watch(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        report = await watch(client, args.run, args.interval, sys.stdout)
        return 0 if report["status"] == "completed" else 1

    return run(args, work)


def _rerun(args: argparse.Namespace) -> int:
    only = [value.strip() for value in args.only.split(",") if value.strip()]

    async def work(client: Client) -> int:
        headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
        params = {"dry_run": "true"} if args.dry_run else None
        print_json(await client.call("POST", _path(args.run) + "/rerun", body={"only": only},
                                     headers=headers, params=params))
        return 0

    return run(args, work)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("runs", help="show, watch, rerun or export a run")
    actions = parser.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the run report (JSON)")
    show.add_argument("run", help="the run id (run_...)")
    add_client_arguments(show)
    show.set_defaults(func=_show)
    watching = actions.add_parser(
        "watch", help="a live progress bar until the run ends (exit 1 unless completed)"
    )
    watching.add_argument("run", help="the run id (run_...)")
    watching.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    add_client_arguments(watching)
    watching.set_defaults(func=_watch)
    rerun = actions.add_parser(
        "rerun", help="a new run of a finished run's excluded or failed recipients")
    rerun.add_argument("run", help="the source run id (run_...)")
    rerun.add_argument("--only", required=True,
                       help="comma-separated: time_cap, campaign_end, cancelled, failed")
    rerun.add_argument("--dry-run", action="store_true",
                       help="count the recipients by reason; create nothing")
    rerun.add_argument("--idempotency-key", help="the same key gives the same rerun")
    add_client_arguments(rerun)
    rerun.set_defaults(func=_rerun)
    export.register(actions)
