"""The results table (Markdown) from the JSON of `python -m bench all [--repeat 3]`.

    python -m bench all --repeat 3 > results.json
    python -m bench.table results.json

One row per figure: the daemon's value, its denominator (the bare part on the same
machine, or the goal of issue 6) and the ratio. With --repeat, each value is the median
of the runs (bench/__main__.py takes the median of every number separately).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _get(document: dict[str, Any], path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(numerator: Any, denominator: Any) -> str:
    if not isinstance(numerator, int | float) or not isinstance(denominator, int | float):
        return "–"
    if not denominator:
        return "–"
    return f"{numerator / denominator:.4g}"


def rows(benches: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, daemon, denominator or goal, ratio) rows."""
    out: list[tuple[str, str, str, str]] = []
    rate = benches.get("rate", {})
    for configured in ("1", "165", "2000"):
        profile = _get(rate, f"rates.{configured}") or {}
        out.append((f"rate {configured}/s: achieved / configured",
                    _fmt(profile.get("ratio"), 4), "goal ≥ 0.99", _fmt(profile.get("ratio"), 4)))
        goal_1s = int(configured) + 1
        goal_100 = 0.15 * int(configured) + 1
        out.append((f"rate {configured}/s: max in a sliding 1 s / 100 ms window",
                    f"{_fmt(profile.get('max_1s_window'))} / "
                    f"{_fmt(profile.get('max_100ms_window'))}",
                    f"goal ≤ {goal_1s} / ≤ {goal_100:g}",
                    f"{_ratio(profile.get('max_1s_window'), goal_1s)} / "
                    f"{_ratio(profile.get('max_100ms_window'), goal_100)}"))
    cpu = _get(rate, "cpu_s_per_1000_at_2000") or {}
    baseline = rate.get("baseline_cpu_s_per_1000_at_2000")
    out.append(("CPU s / 1,000 msgs at 2,000/s: daemon (+ database)",
                f"{_fmt(cpu.get('daemon'))} (+ {_fmt(cpu.get('database'))})",
                f"bare paced client {_fmt(baseline)}; goal ≤ 2×",
                f"{_ratio(cpu.get('daemon'), baseline)} ({_ratio(cpu.get('total'), baseline)})"))
    tp = benches.get("throughput", {})
    out.append(("unthrottled 200,000: msgs/s", _fmt(tp.get("daemon_per_s")),
                f"bare client {_fmt(tp.get('baseline_per_s'))}; goal ≥ 0.7×",
                _ratio(tp.get("daemon_per_s"), tp.get("baseline_per_s"))))
    cpu = tp.get("cpu_s_per_1000") or {}
    out.append(("unthrottled: CPU s / 1,000 msgs, daemon (+ database)",
                f"{_fmt(cpu.get('daemon'))} (+ {_fmt(cpu.get('database'))})",
                f"bare client {_fmt(tp.get('baseline_cpu_s_per_1000'))}",
                f"{_ratio(cpu.get('daemon'), tp.get('baseline_cpu_s_per_1000'))} "
                f"({_ratio(cpu.get('total'), tp.get('baseline_cpu_s_per_1000'))})"))
    conc = benches.get("concurrent", {})
    out.append(("4 campaigns × 2,000/s: total msgs/s (worst campaign's ratio)",
                f"{_fmt(conc.get('total_per_s'))} ({_fmt(conc.get('min_ratio'), 3)})",
                "goal 8,000", _fmt(conc.get("total_ratio"), 3)))
    ing = benches.get("ingest", {})
    out.append(("triggers/s sustained (open loop, p99 ≤ 100 ms)",
                _fmt(ing.get("sustained_per_s")),
                f"bare handler {_fmt(ing.get('bare_sustained_per_s'))}",
                _ratio(ing.get("sustained_per_s"), ing.get("bare_sustained_per_s"))))
    out.append(("triggers at 1,000/s: p50 / p99 ms",
                f"{_fmt(ing.get('p50_ms'))} / {_fmt(ing.get('p99_ms'))}",
                f"bare {_fmt(ing.get('bare_p50_ms'))} / {_fmt(ing.get('bare_p99_ms'))}; "
                "goal p99 < 50", _ratio(ing.get("p99_ms"), 50)))
    out.append(("triggers/s, closed loop (64 workers)", _fmt(ing.get("closed_per_s")),
                f"bare handler {_fmt(ing.get('bare_closed_per_s'))}",
                _ratio(ing.get("closed_per_s"), ing.get("bare_closed_per_s"))))
    start = benches.get("start", {})
    late = start.get("lateness") or {}
    out.append((f"start lateness over {_fmt(start.get('runs'))} runs: p50 / p99 / max ms",
                f"{_fmt(late.get('p50_ms'))} / {_fmt(late.get('p99_ms'))} / "
                f"{_fmt(late.get('max_ms'))}",
                "goal p99 < 20", _ratio(late.get("p99_ms"), 20)))
    size = benches.get("size", {})
    out.append(("import 1,000,000 profiles: profiles/s", _fmt(size.get("import_per_s")),
                "goal ≥ 100,000", _ratio(size.get("import_per_s"), 100_000)))
    for label in ("100k", "1M"):
        run = _get(size, f"runs.{label}") or {}
        out.append((f"{label} audience: trigger → first send s / peak RSS MB",
                    f"{_fmt(run.get('trigger_to_first_send_s'))} / "
                    f"{_fmt(run.get('peak_rss_mb'))}",
                    "goal < 5 / < 200",
                    f"{_ratio(run.get('trigger_to_first_send_s'), 5)} / "
                    f"{_ratio(run.get('peak_rss_mb'), 200)}"))
    recovery = benches.get("recovery", {})
    out.append(("kill -9: restart → ready / ready → first send s",
                f"{_fmt(recovery.get('restart_to_ready_s'))} / "
                f"{_fmt(recovery.get('ready_to_first_send_s'))}",
                "goal resume < 2", _ratio(recovery.get("ready_to_first_send_s"), 2)))
    out.append(("kill -9: duplicates / lost",
                f"{_fmt(recovery.get('duplicates'))} / {_fmt(recovery.get('lost'))}",
                f"bound {_fmt(recovery.get('duplicate_bound'))} (the engine's stated "
                "bound); 0 lost",
                _ratio(recovery.get("duplicates"), recovery.get("duplicate_bound"))))
    return out


def render(document: dict[str, Any]) -> str:
    benches = document.get("benches", {})
    machine = document.get("machine", {})
    background = {name: bench.get("background_busy_cores") for name, bench in benches.items()}
    lines = [
        f"{document.get('date', '?')[:10]}, code {document.get('code')}, "
        f"{machine.get('cpus')} × {machine.get('cpu_model')}, Python {machine.get('python')}, "
        f"median of {max((b.get('repeats', 1) for b in benches.values()), default=1)} runs "
        f"per bench. Cores already busy before each bench (other work on the box): "
        + ", ".join(f"{name} {_fmt(value)}" for name, value in background.items()) + ".",
        "",
        "| figure | campaignd | denominator / goal | ratio |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(benches)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="JSON of `python -m bench all`")
    args = parser.parse_args()
    print(render(json.loads(args.file.read_text())))


if __name__ == "__main__":
    main()
