"""The user documentation holds together: every relative link in README.md and docs/*.md
points at a file that exists, every `#anchor` names a heading of its target (GitHub's
slugs), and the README's Quickstart still holds the test command CI runs (`.ci/run`)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# The two Quickstart commands, exactly: users copy them, and CI stands for the second.
RUN_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/campaignd run"
TEST_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -e '.[test]' "
                "&& .venv/bin/pytest")

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"(?<!!)\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_SPAN = re.compile(r"(`+).+?\1")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# comment` in a shell block is no heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link: its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose(path.read_text()):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    targets = []
    for line in _prose(path.read_text()):
        targets += _LINK.findall(_CODE_SPAN.sub("", line))
    return targets


def broken_links(path: Path) -> list[str]:
    """What is wrong with the relative links of one document, one line per broken link."""
    problems = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            problems.append(f"{path.name}: {target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            problems.append(f"{path.name}: {target}: no heading #{anchor} in {destination.name}")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(document: Path) -> None:
    assert broken_links(document) == []


def test_the_check_sees_a_broken_link_and_a_broken_anchor(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## Preview (`?dry_run=true`)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Operating a run (wave 2)\n\n"
        "[fine](other.md#preview-dry_runtrue) [fine](#operating-a-run-wave-2)\n"
        "[gone](missing.md) [no anchor](other.md#nothing) [no anchor here](#nowhere)\n"
        "`[in code](missing-too.md)` and [web](https://example.com/x.md)\n"
        "```sh\n# not a heading\n[in a block](missing-three.md)\n```\n")
    assert broken_links(page) == [
        "page.md: missing.md: no such file",
        "page.md: other.md#nothing: no heading #nothing in other.md",
        "page.md: #nowhere: no heading #nowhere in page.md",
    ]


def test_slugs_follow_github() -> None:
    assert slug("Guarantees and their bounds") == "guarantees-and-their-bounds"
    assert slug("Preview (`?dry_run=true`)") == "preview-dry_runtrue"
    assert slug("Endpoints, and the rules they follow") == "endpoints-and-the-rules-they-follow"
    assert slug("Operations: systemd, command line") == "operations-systemd-command-line"


def _quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Quickstart\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no Quickstart section"
    blocks = re.findall(r"^```sh\n(.*?)^```", section.group(1), re.S | re.M)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def _ci_test_command() -> list[str]:
    """The first command of `.ci/run`'s test step: the line that runs pytest."""
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        words = line.split("#")[0].split()
        while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value before the command
            words.pop(0)
        if words and words[0] == "pytest":
            return words
    raise AssertionError(".ci/run runs no pytest")


def test_quickstart_keeps_its_two_commands() -> None:
    commands = _quickstart_commands()
    assert RUN_COMMAND in commands
    assert TEST_COMMAND in commands


def test_quickstart_test_command_is_what_ci_runs() -> None:
    ci = _ci_test_command()
    ci_script = (ROOT / ".ci" / "run").read_text()
    ci_install = re.search(r"pip\S*\s+install\s+-q\s+(-e\s+\S+)", ci_script)
    assert ci_install, ".ci/run installs no editable package"
    tests = [c for c in _quickstart_commands() if "pytest" in c]
    assert tests, "the Quickstart has no test command"
    steps = [shlex.split(step) for step in tests[0].split("&&")]
    # The README installs what CI installs (the same extras) ...
    install = next(s for s in steps if "install" in s)
    assert install[install.index("install") + 1:] == shlex.split(ci_install.group(1))
    # ... and its last step runs the same command with the same arguments.
    last = steps[-1]
    assert [Path(last[0]).name, *last[1:]] == ci
