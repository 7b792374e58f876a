"""`campaignd notifications list [--failed] [--limit N]`: the outbox, read from the database."""

from __future__ import annotations

import argparse
from datetime import datetime

from daemon.cli.admin import with_pool
from daemon.cli.common import add_config_argument, load_config
from daemon.infra.database import Pool
from daemon.store import notifications


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _list(args: argparse.Namespace) -> int:
    config = load_config(args)

    async def work(pool: Pool) -> int:
        rows = await notifications.listing(pool, failed_only=args.failed, limit=args.limit)
        print(f"{'WEBHOOK ID':36} {'TYPE':18} {'STATUS':9} {'ATTEMPTS':>8} {'CREATED':19} "
              f"{'NEXT/DONE':19} {'RUN':24} LAST ERROR")
        for row in rows:
            done = row.finished_at if row.finished_at else row.next_attempt_at
            print(f"{row.webhook_id:36} {row.type:18} {row.status.value:9} {row.attempts:>8} "
                  f"{_when(row.created_at):19} {_when(done):19} "
                  f"{row.run_id or row.campaign_id:24} {row.last_error or '-'}")
        return 0

    return with_pool(config, work)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("notifications", help="the lifecycle notification outbox")
    actions = parser.add_subparsers(dest="notifications_command", metavar="ACTION",
                                    required=True)
    listing = actions.add_parser("list", help="the latest notifications, newest first")
    listing.add_argument("--failed", action="store_true",
                         help="only those given up after the retry period")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    add_config_argument(listing)
    listing.set_defaults(func=_list)
