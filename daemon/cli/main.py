"""The `campaignd` command: run, migrate, check-config, tokens (and the HTTP client commands)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import warnings
from collections.abc import Callable
from typing import Literal

from daemon import __version__
from daemon.cli import admin, campaigns, notifications, profiles, runs, trigger
from daemon.cli.common import add_config_argument, fail, load_config
from daemon.errors import CampaigndError
from daemon.infra import logs

# Modules that add subcommands: each has `register(subparsers)`; each command sets
# `func` (args -> exit code) on its parser.
COMMAND_MODULES: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    admin.register,
    campaigns.register,
    trigger.register,
    profiles.register,
    runs.register,
    notifications.register,
]


LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def event_loop(choice: Literal["auto", "uvloop", "asyncio"]) -> tuple[LoopFactory | None, str]:
    """The loop factory for `engine.event_loop` (None: asyncio's default) and its name.
    "auto" is uvloop when it is installed (a dependency on Linux and macOS)."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise CampaigndError(
                    'engine.event_loop = "uvloop", but uvloop is not installed') from None
        else:
            return uvloop.new_event_loop, "uvloop"
    return None, "asyncio"


def _run(args: argparse.Namespace) -> int:
    config = load_config(args)
    logs.configure(config.log.level, config.log.format)
    # The cyclic GC's gen-2 passes stall the loop for tens of ms once many objects are
    # live (machine-limits.md §6); a higher gen-0 threshold removes the stalls.
    gc.set_threshold(100_000, 20, 20)
    from daemon.service import Daemon
    from daemon.stages import default_stages

    daemon = Daemon(config, apply_migrations=not args.no_migrate,
                    stage_factories=default_stages())
    try:
        factory, name = event_loop(config.engine.event_loop)
        logs.get_logger(__name__).info("event_loop.chosen", loop=name)
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(daemon.run())
    except CampaigndError as exc:
        logs.get_logger(__name__).error("daemon.failed", error=str(exc))
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="campaignd", description="API-triggered messaging campaigns, at an exact rate."
    )
    parser.add_argument("--version", action="version", version=f"campaignd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the daemon")
    add_config_argument(run)
    run.add_argument("--no-migrate", action="store_true", help="do not apply pending migrations")
    run.set_defaults(func=_run)
    for register in COMMAND_MODULES:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # platformdirs (under pgserver) warns when XDG_RUNTIME_DIR is unset, as under a plain
    # root shell; it then uses /tmp, which is fine for the lock file it wants.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except CampaigndError as exc:
        fail(str(exc))
    return code
