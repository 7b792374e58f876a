"""Commands that work on the database directly: migrate, check-config, tokens."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

from daemon.cli.common import add_config_argument, fail, load_config
from daemon.infra import logs, migrate
from daemon.infra.config import Config
from daemon.infra.database import Pool, open_database
from daemon.models import TokenScope
from daemon.store import tokens


def with_pool(config: Config, work: Callable[[Pool], Awaitable[int]]) -> int:
    # Logs of these short commands go to stderr, so stdout carries only their answer.
    logs.configure("warning", "console", stream=sys.stderr)

    async def main() -> int:
        async with open_database(config, max_size=2) as pool:
            return await work(pool)

    return asyncio.run(main())


def _migrate(args: argparse.Namespace) -> int:
    config = load_config(args)

    async def work(pool: Pool) -> int:
        applied = await migrate.apply(pool)
        for migration in applied:
            print(f"applied {migration.version:04d}_{migration.name}")
        if not applied:
            print("the database is up to date")
        return 0

    return with_pool(config, work)


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args)
    problems = _provider_problems(config)
    if args.probe:
        problems += _probe(config)
    if problems:
        fail("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems), 2)
    source = config.source or "(defaults and environment)"
    print(f"configuration OK: {source}")
    return 0


def _provider_problems(config: Config) -> list[str]:
    try:
        from daemon.providers import registry
    except ImportError:  # pragma: no cover - the registry lands with the providers
        return []
    return registry.check(config)


def _probe(config: Config) -> list[str]:
    from daemon.providers import registry

    logs.configure("warning", "console", stream=sys.stderr)
    results = asyncio.run(registry.probe(config))
    problems = []
    for name, error in results:
        if error is None:
            print(f"provider {name}: OK")
        else:
            problems.append(f"providers.{name}: probe failed: {error}")
    return problems


def _tokens_create(args: argparse.Namespace) -> int:
    config = load_config(args)

    async def work(pool: Pool) -> int:
        try:
            token = await tokens.create(pool, args.name, TokenScope(args.scope))
        except tokens.TokenNameTaken:
            fail(f"a token named {args.name!r} exists already")
        print(token)
        return 0

    return with_pool(config, work)


def _tokens_list(args: argparse.Namespace) -> int:
    config = load_config(args)

    async def work(pool: Pool) -> int:
        print(f"{'NAME':24} {'SCOPE':8} {'CREATED':20} {'LAST USED':20} STATE")
        for info in await tokens.list_all(pool):
            state = "revoked" if info.revoked_at else "active"
            used = info.last_used_at.strftime("%Y-%m-%d %H:%M:%S") if info.last_used_at else "-"
            created = info.created_at.strftime("%Y-%m-%d %H:%M:%S")
            print(f"{info.name:24} {info.scope.value:8} {created:20} {used:20} {state}")
        return 0

    return with_pool(config, work)


def _tokens_revoke(args: argparse.Namespace) -> int:
    config = load_config(args)

    async def work(pool: Pool) -> int:
        if not await tokens.revoke(pool, args.name):
            fail(f"no active token named {args.name!r}")
        print(f"revoked {args.name}")
        return 0

    return with_pool(config, work)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate_parser = sub.add_parser("migrate", help="apply pending database migrations")
    add_config_argument(migrate_parser)
    migrate_parser.set_defaults(func=_migrate)

    check = sub.add_parser("check-config", help="validate the configuration without starting")
    add_config_argument(check)
    check.add_argument("--probe", action="store_true",
                       help="also connect to each provider (no message is sent)")
    check.set_defaults(func=_check_config)

    tokens_parser = sub.add_parser("tokens", help="create, list and revoke API tokens")
    tokens_sub = tokens_parser.add_subparsers(dest="tokens_command", metavar="ACTION",
                                              required=True)
    create = tokens_sub.add_parser("create", help="create a token and print it (once)")
    create.add_argument("name")
    create.add_argument("--scope", choices=[s.value for s in TokenScope], default="trigger")
    add_config_argument(create)
    create.set_defaults(func=_tokens_create)
    listing = tokens_sub.add_parser("list", help="list tokens (never their values)")
    add_config_argument(listing)
    listing.set_defaults(func=_tokens_list)
    revoke = tokens_sub.add_parser("revoke", help="revoke a token by name")
    revoke.add_argument("name")
    add_config_argument(revoke)
    revoke.set_defaults(func=_tokens_revoke)
