"""The command line every bench shares: options, one JSON object out, exit codes.

Exit codes: 0 measured; 1 the daemon misbehaved (did not send, failed a request...);
3 an endpoint the bench needs is not served by this daemon (yet).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from bench.api import ApiMissing, BenchError

EXIT_FAILED = 1
EXIT_MISSING = 3


@dataclass(frozen=True)
class Options:
    smoke: bool
    database_url: str | None
    args: argparse.Namespace | None = None  # with a bench's own options (`add_options`)


BenchFunction = Callable[[Options], Coroutine[Any, Any, dict[str, Any]]]


def code_version() -> str | None:
    """The commit measured (`git describe`, `-dirty` with local changes), or BENCH_COMMIT
    when running from an exported copy without .git."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
            check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        described = ""
    return described or os.environ.get("BENCH_COMMIT")


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def background_busy_cores(seconds: float = 1.0) -> float:
    """How many cores something else keeps busy right now (before the bench starts)."""
    from bench.procstat import machine_busy_seconds

    before = machine_busy_seconds()
    time.sleep(seconds)
    return round((machine_busy_seconds() - before) / seconds, 2)


def summarise(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def main(name: str, bench: BenchFunction, description: str,
         add_options: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    if add_options is not None:
        add_options(parser)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds, for CI")
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL server to create the bench database on "
                             "(default: BENCH_DATABASE_URL, the machine's, or embedded)")
    args = parser.parse_args()
    options = Options(smoke=args.smoke, database_url=args.database_url, args=args)
    began = time.monotonic()
    document: dict[str, Any] = {
        "bench": name,
        "mode": "smoke" if options.smoke else "full",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "code": code_version(),
    }
    background = background_busy_cores(0.25 if options.smoke else 1.0)
    document["background_busy_cores"] = background
    if background > 0.3:
        print(f"bench {name}: warning: {background} cores already busy before the bench; "
              "timings will be skewed", file=sys.stderr)
    code = 0
    # SIGTERM (the driver or CI stopping us) unwinds like Ctrl-C: the harness then stops
    # the daemon and the gateway and drops the database.
    for signum in (signal.SIGTERM, signal.SIGINT):  # SIGINT may come in ignored (`cmd &`)
        signal.signal(signum, signal.default_int_handler)
    try:
        result = asyncio.run(bench(options))
    except ApiMissing as exc:
        document.update(ok=False, missing=str(exc))
        print(f"bench {name}: skipped, {exc}", file=sys.stderr)
        code = EXIT_MISSING
    except BenchError as exc:
        document.update(ok=False, error=str(exc))
        print(f"bench {name}: FAILED: {exc}", file=sys.stderr)
        code = EXIT_FAILED
    except KeyboardInterrupt:
        document.update(ok=False, error="interrupted")
        code = 130
    except Exception as exc:
        traceback.print_exc()
        document.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        code = EXIT_FAILED
    else:
        summary = result.pop("summary", [])
        document.update(ok=True, **result)
        summarise([f"bench {name} ({document['mode']}):", *("  " + s for s in summary)])
    document["seconds"] = round(time.monotonic() - began, 1)
    print(json.dumps(document, indent=2))
    sys.exit(code)
