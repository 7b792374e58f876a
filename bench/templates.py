"""How long a hostile template holds the event loop: `python -m bench.templates [--smoke]`.

Renders each template of docs/security.md's list (and an ordinary one) in this process,
on the daemon's own code, and prints JSON: per case its outcome, the median and the longest
of its renders in milliseconds; `worst_ms` is the largest median. No daemon, no database.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from daemon.models import Channel
from daemon.templates import CompiledContent, RenderError, TemplateProblem

VARIABLES: dict[str, Any] = {
    "profile": {"id": "p1", "attributes": {"name": "Ann"}}, "context": {"a": "x"},
    "campaign": {"id": "c1"}, "run": {"id": "run_1"}, "unsubscribe_url": None,
}
ORDINARY = ("<ul>{% for n in range(100) %}<li>{{ loop.index }}. {{ profile.attributes.name }}"
            " {{ '%.2f'|format(n * 1.5) }}{% if n > 10 %} (sale){% endif %}</li>{% endfor %}"
            "</ul>")
CASES = {
    "ordinary": ORDINARY,
    "center_2500000000": "{{ 'a'|center(2500000000) }}",
    "format_width": "{{ '%03000000000d'|format(1) }}",
    "nested_sums_250": "{{ " + "+".join(["context.a"] * 250) + " }}",
    "loops_100000x3000": "{% for i in range(100000) %}{% for j in range(3000) %}{% endfor %}"
                         "{% endfor %}x",
    "loops_1000x1000_output": "{% for i in range(1000) %}{% for j in range(1000) %}{{ i }}"
                              "{% endfor %}{% endfor %}",
    "output_3000x100000": "{% for i in range(3000) %}{{ 'a' * 100000 }}{% endfor %}",
    "ljust_2000000000": "{{ 'a'.ljust(2000000000) }}",
    "filtered_loops": "{% for i in range(100000) %}{% for j in range(100000) if j < 0 %}"
                      "{% endfor %}{% endfor %}",
    "macro_fibonacci": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}"
                       "{% endmacro %}{{ f(25) }}",
    "recursive_loop": "{% for x in [1, 2] recursive %}x{{ loop([1, 2]) }}{% endfor %}",
    "join_separator": "{{ range(100000)|join('a' * 100000) }}",
    "fromkeys": "{{ {}.fromkeys(range(100000), 'a' * 100000) }}",
    "doubling_concat": "{% set s = 'a' * 100000 %}" + "{% set s = s ~ s %}" * 12 + "{{ s }}",
}


def measure(source: str, repeat: int) -> dict[str, Any]:
    try:
        began = time.perf_counter()
        content = CompiledContent.compile(Channel.SMS, {"body": source})
        compile_ms = (time.perf_counter() - began) * 1000
    except TemplateProblem as problem:
        return {"outcome": f"422: {problem.message}", "render_ms": 0.0, "render_max_ms": 0.0}
    outcome, times = "rendered", []
    for _ in range(repeat):
        began = time.perf_counter()
        try:
            content.render(VARIABLES)
        except RenderError as error:
            outcome = f"failed: {error.reason}"
        times.append((time.perf_counter() - began) * 1000)
    return {"outcome": outcome, "compile_ms": round(compile_ms, 3),
            "render_ms": round(statistics.median(times), 3),
            "render_max_ms": round(max(times), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="one render per case")
    options = parser.parse_args()
    repeat = 1 if options.smoke else 20
    cases = {name: measure(source, repeat) for name, source in CASES.items()}
    worst = max(case["render_ms"] for case in cases.values())
    json.dump({"bench": "templates", "ok": True, "repeat": repeat, "worst_ms": worst,
               "cases": cases}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
