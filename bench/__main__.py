"""Run the benches: `python -m bench all [--smoke] [--repeat 3]`, or one: `python -m bench rate`.

Each bench runs in its own process (`python -m bench.<name>`); its JSON object goes
into one combined object on stdout, its human summary to stderr as it goes. With
`--repeat N` each bench runs N times and every number is the median of the N.
Exit 0 when every bench measured; in smoke mode a bench whose endpoints this daemon
does not serve yet counts as skipped, not failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.runner import EXIT_MISSING, background_busy_cores, code_version, machine

BENCHES = ["rate", "throughput", "concurrent", "ingest", "start", "size", "recovery",
           "receipts", "pools", "dbcost"]
FULL_BUDGET_S = 600


def median_of(values: list[Any]) -> Any:
    """Numbers -> their median; dicts and equal-length lists -> element-wise; else the first."""
    first = values[0]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        middle = statistics.median(values)
        return round(middle, 6) if isinstance(middle, float) else middle
    if all(isinstance(v, dict) for v in values):
        return {key: median_of([v[key] for v in values if key in v]) for key in first}
    if all(isinstance(v, list) and len(v) == len(first) for v in values):
        return [median_of(list(items)) for items in zip(*values, strict=True)]
    return first


def wait_quiet(cores: float, patience: float) -> None:
    """Return once the machine's busy cores (over 2 s) fall below `cores`, or after
    `patience` seconds."""
    began = time.monotonic()
    while time.monotonic() - began < patience:
        busy = background_busy_cores(2.0)
        if busy < cores:
            return
        print(f"== waiting for a quiet machine: {busy} cores busy", file=sys.stderr, flush=True)
        time.sleep(8.0)


def run_one(name: str, smoke: bool, database_url: str | None) -> tuple[int, dict[str, Any]]:
    command = [sys.executable, "-m", f"bench.{name}"]
    if smoke:
        command.append("--smoke")
    if database_url:
        command += ["--database-url", database_url]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        try:
            stdout, _ = child.communicate()
        except BaseException:  # interrupted: let the bench tear down its processes first
            child.send_signal(signal.SIGTERM)  # the bench unwinds on it (bench/runner.py)
            child.wait(timeout=60)
            raise
    completed = subprocess.CompletedProcess(command, child.returncode, stdout)
    try:
        document: dict[str, Any] = json.loads(completed.stdout)
    except ValueError:
        document = {"bench": name, "ok": False, "error": "no JSON output",
                    "stdout": completed.stdout[-2000:]}
    return completed.returncode, document


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="?", default="all", choices=["all", "list", *BENCHES])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds each (CI)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per bench; medians")
    parser.add_argument("--only", default=None, help="comma-separated subset of the benches")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--save", default=None, metavar="DIR",
                        help="also write each run's JSON to DIR/<bench>-<n>.json as it ends")
    parser.add_argument("--quiet-below", type=float, default=None, metavar="CORES",
                        help="before each bench, wait until fewer than CORES cores are busy "
                             "(up to --patience s): on a shared box, measure in the quiet")
    parser.add_argument("--patience", type=float, default=180.0,
                        help="seconds --quiet-below waits at most (default 180)")
    args = parser.parse_args()
    for signum in (signal.SIGTERM, signal.SIGINT):  # SIGINT may come in ignored (`cmd &`)
        signal.signal(signum, signal.default_int_handler)
    if args.which == "list":
        print("\n".join(BENCHES))
        return
    names = BENCHES if args.which == "all" else [args.which]
    if args.only:
        names = [name for name in names if name in args.only.split(",")]
    began = time.monotonic()
    results: dict[str, Any] = {}
    failed: list[str] = []
    skipped: list[str] = []
    for name in names:
        documents = []
        for attempt in range(args.repeat):
            print(f"== bench {name} ({attempt + 1}/{args.repeat})", file=sys.stderr, flush=True)
            if args.quiet_below is not None:
                wait_quiet(args.quiet_below, args.patience)
            code, document = run_one(name, args.smoke, args.database_url)
            documents.append(document)
            if args.save:
                folder = Path(args.save)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{name}-{attempt + 1}.json").write_text(json.dumps(document, indent=2))
            if code == EXIT_MISSING and args.smoke:
                skipped.append(name)
                break
            if code != 0:
                failed.append(name)
                break
        ok = [d for d in documents if d.get("ok")]
        results[name] = median_of(ok) if len(ok) == len(documents) else documents[-1]
        results[name]["repeats"] = len(documents)
    seconds = round(time.monotonic() - began, 1)
    combined = {
        "mode": "smoke" if args.smoke else "full",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "code": code_version(),
        "ok": not failed,
        "failed": failed,
        "skipped": skipped,
        "seconds": seconds,
        "benches": results,
    }
    print(json.dumps(combined, indent=2))
    per_run = seconds / max(1, args.repeat)
    print(f"== {len(names)} benches in {seconds} s"
          + (f" ({per_run:.0f} s a round)" if args.repeat > 1 else "")
          + (f"; FAILED: {', '.join(failed)}" if failed else "")
          + (f"; skipped (endpoints missing): {', '.join(skipped)}" if skipped else ""),
          file=sys.stderr)
    if not args.smoke and per_run > FULL_BUDGET_S:
        print(f"== over the {FULL_BUDGET_S} s budget", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
