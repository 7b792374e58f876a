"""The package's import graph: no cycle anywhere in `daemon/`, the layers point one way
(the store and the pure planning arithmetic import nothing from the API or the engine),
and so do the campaign worker's (worker → parts → state: no part imports the worker, the
state imports no part).

Read from the source with `ast`, so imports under `if TYPE_CHECKING:` and inside functions
count too: a cycle hidden there is still a cycle for the reader."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "daemon"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import mod` imports the module `pkg.mod` when there is one.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def _package_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else module


def test_the_graph_sees_the_imports() -> None:
    graph = _graph()
    assert "daemon.planning.planner" in graph["daemon.store.engine"]
    assert "daemon.engine.worker" in graph["daemon.engine.stage"] or any(
        "daemon.engine.worker" in graph[m] for m in graph if m.startswith("daemon.engine"))


def test_a_cycle_is_found_when_there_is_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package() -> None:
    assert _cycle(_graph()) is None


def test_the_store_and_planning_import_nothing_from_the_api_or_the_engine() -> None:
    graph = _graph()
    for module, imports in graph.items():
        if _package_of(module) in ("store", "planning"):
            upward = sorted(t for t in imports if _package_of(t) in ("api", "engine", "cli"))
            assert upward == [], f"{module} imports {upward}"


# The campaign worker and the parts it composes (daemon/engine/): worker → parts → state.
WORKER = "daemon.engine.worker"
STATE = "daemon.engine.state"
PARTS = {f"daemon.engine.{name}" for name in (
    "control", "starting", "feeding", "senders", "sending", "closing", "demand")}


def _one_way_violations(graph: dict[str, set[str]]) -> list[str]:
    """The imports against the worker's direction: a part (or the state) importing the
    worker, the state importing a part."""
    found = [f"{m} imports {WORKER}" for m in sorted(PARTS | {STATE})
             if WORKER in graph.get(m, set())]
    found += [f"{STATE} imports {part}" for part in sorted(PARTS & graph.get(STATE, set()))]
    return found


def test_the_worker_parts_exist() -> None:
    graph = _graph()
    missing = sorted(m for m in PARTS | {WORKER, STATE} if m not in graph)
    assert missing == []
    assert PARTS - graph[WORKER] == set()  # the worker composes every part


def test_a_wrong_way_import_is_found() -> None:
    graph = {WORKER: {STATE}, STATE: {"daemon.engine.sending"},
             "daemon.engine.closing": {WORKER}}
    assert _one_way_violations(graph) == [f"daemon.engine.closing imports {WORKER}",
                                          f"{STATE} imports daemon.engine.sending"]


def test_the_worker_imports_point_one_way() -> None:
    assert _one_way_violations(_graph()) == []
