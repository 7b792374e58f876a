"""What one message's templates may cost: a budget of steps and characters, and caps.

A render runs on the event loop, so its work must be bounded before it is done, not
measured after: every loop iteration, call, filter, test and output spends *steps* from a
budget per message, and every string or container a template builds spends *characters*;
an operation whose result would be far larger than its inputs (a width, a repeat, a
separator joined many times) is charged, or refused, before it runs. A budget spent raises
`BudgetExceeded` (a sandbox violation): the message fails, the daemon does not.

The bounds are enforced by instrumenting the parsed template and by a code generator that
routes `~` and `in` through the budget (daemon.templates.compiler), by the filters
(daemon.templates.filters) and by the sandbox itself (daemon.templates: calls, `*`, `+`,
`%`). Nothing is evaluated at compile time: the environment is not optimised and output is
finalised at run time, so `{{ 'a'|center(10**9) }}` is never folded into a constant when a
campaign is created. docs/security.md states the limits.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from functools import wraps
from typing import Any

from jinja2.exceptions import SecurityError
from jinja2.utils import pass_eval_context

# Steps per message: a step is one Python-level operation of the template (a loop
# iteration, a call, a filter, an output, a node of a loop body), some 0.1-0.5 µs.
MAX_STEPS = 10_000
# Characters (and container elements) a message's templates may build in all.
MAX_CHARS = 2_000_000
# Deepest nesting of macro calls and recursive loops.
MAX_DEPTH = 100
# Largest width, padding, precision or count argument (`center(n)`, `'%5d'`, `batch(n)`).
MAX_WIDTH = 10_000
# How many elements (characters, for strings) a C-level pass over a value does per step.
ELEMENTS_PER_STEP = 10
CHARS_PER_STEP = 1_000

# The filters the instrumentation (daemon.templates.compiler) calls.
BUDGET_STEP = "_budget_step"
BUDGET_EACH = "_budget_each"
BUDGET_VALUE = "_budget_value"


class BudgetExceeded(SecurityError):
    """A template asked for more work or memory than one message may take."""


class Budget:
    """What is left to one message's render, and how deep its macro calls are nested."""

    __slots__ = ("chars", "depth", "steps")

    def __init__(self) -> None:
        self.steps = MAX_STEPS
        self.chars = MAX_CHARS
        self.depth = 0

    def spend(self, steps: int, chars: int = 0) -> None:
        """Take `steps` and `chars`, or raise before the work they pay for is done (what
        is left never goes below zero, nor grows: a negative width pays nothing)."""
        if steps < 0 or chars < 0:
            steps, chars = max(steps, 0), max(chars, 0)
        if steps > self.steps or chars > self.chars:
            raise self.exceeded(steps)
        self.steps -= steps
        self.chars -= chars

    def exceeded(self, steps: int) -> BudgetExceeded:
        if steps > self.steps:
            return BudgetExceeded(f"the template took more than {MAX_STEPS} steps")
        return BudgetExceeded(f"the template built more than {MAX_CHARS} characters")


_CURRENT: ContextVar[Budget | None] = ContextVar("template_budget", default=None)


@contextmanager
def nested() -> Iterator[None]:
    """One level deeper in macro calls or a recursive loop: refused past MAX_DEPTH (the
    thread's recursion limit would allow more, at a cost that grows with the depth)."""
    current = _CURRENT.get()
    if current is None:
        raise BudgetExceeded("template code evaluated outside a render")
    if current.depth >= MAX_DEPTH:
        raise BudgetExceeded(f"macro calls or recursive loops nested deeper than {MAX_DEPTH}")
    current.depth += 1
    try:
        yield
    finally:
        current.depth -= 1


def begin(given: Budget | None = None) -> Token[Budget | None]:
    """Start a message's render with a budget (a fresh one unless given); `end` it."""
    return _CURRENT.set(Budget() if given is None else given)


def end(token: Token[Budget | None]) -> None:
    _CURRENT.reset(token)


def spend(steps: int, chars: int = 0) -> None:
    """Spend from the current render's budget; outside a render nothing may be evaluated
    (that is what keeps constants from being folded when a template is compiled)."""
    current = _CURRENT.get()
    if current is None:
        raise BudgetExceeded("template code evaluated outside a render")
    current.spend(steps, chars)


def size_of(value: Any) -> tuple[int, int]:
    """(characters, elements) of `value` as text, walked no further than the budget left: a
    container counts each reference, so a list holding one long string many times is as
    large as its text would be."""
    current = _CURRENT.get()
    chars_left, steps_left = (current.chars, current.steps) if current else (0, 0)
    element_limit = steps_left * ELEMENTS_PER_STEP + 1
    chars = elements = 0
    stack = [value]
    while stack and chars <= chars_left and elements < element_limit:
        item = stack.pop()
        elements += 1
        if isinstance(item, str | bytes):
            chars += len(item) + 2
        elif isinstance(item, dict):
            chars += 2
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            chars += 2
            stack.extend(item)
        else:
            chars += 8
    return chars, elements


def charge_value(value: Any) -> Any:
    """Spend what `value` (just built) weighs; returns it."""
    if isinstance(value, str | bytes):
        spend(1, len(value))
    elif isinstance(value, list | tuple | dict | set | frozenset):
        chars, elements = size_of(value)
        spend(1 + elements // ELEMENTS_PER_STEP, chars)
    return value


def charge_pass(value: Any) -> None:
    """Spend what one C-level pass over `value` costs (a sort, a search, a copy)."""
    if isinstance(value, str | bytes):
        spend(1 + len(value) // CHARS_PER_STEP)
    elif isinstance(value, list | tuple | dict | set | frozenset | range):
        spend(1 + len(value) // ELEMENTS_PER_STEP)


def check_width(value: Any, what: str = "width") -> None:
    if isinstance(value, int) and abs(value) > MAX_WIDTH:
        raise BudgetExceeded(f"a {what} above {MAX_WIDTH} refused")


def counted(iterable: Iterable[Any], steps: Any = 0, chars: Any = 0) -> Iterator[Any]:
    """`iterable`, spending a step per element and what the loop body costs by itself."""
    if not (isinstance(steps, int) and isinstance(chars, int) and steps >= 0 and chars >= 0):
        raise SecurityError("the budget filter takes two counts")
    current = _CURRENT.get()
    if current is None:
        raise BudgetExceeded("template code evaluated outside a render")
    steps += 1
    for item in iterable:
        current.spend(steps, chars)
        yield item


# printf-style conversions: `%(name)-08.3f`; width and precision are the groups.
_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?.")
# A format spec: [[fill]align][sign][z][#][0][width][grouping][.precision][type].
_FORMAT_SPEC = re.compile(r"(?:.?[<>=^])?[+\- ]?z?#?0?(\d*)[,_]?(?:\.(\d+))?")


def _widths(groups: Iterable[str | None]) -> int:
    total = 0
    for group in groups:
        if group == "*":
            raise BudgetExceeded("a '*' width or precision refused")
        if group:
            check_width(int(group))
            total += int(group)
    return total


def check_percent(template: str) -> int:
    """The characters `template % args` may pad to; refuses widths above MAX_WIDTH."""
    charge_pass(template)
    return len(template) + sum(_widths(m.groups()) for m in _PERCENT.finditer(template))


def check_format(template: str) -> int:
    """The same for `template.format(...)`; nested fields in a spec are refused."""
    charge_pass(template)
    total = len(template)
    for _, field, spec, _ in string.Formatter().parse(template):
        if field is None or not spec:
            continue
        if "{" in spec:
            raise BudgetExceeded("a replacement field inside a format spec refused")
        match = _FORMAT_SPEC.match(spec)
        if match is not None:
            total += _widths(match.groups())
    return total


# Filters that cost a step whatever their value; those that walk it all, nested included.
LIGHT_FILTERS = frozenset({"length", "count", "first", "last", "default", "d", "safe",
                           "random", "attr", "abs", "int", "float", "round", "defined"})
DEEP_FILTERS = frozenset({"pprint", "tojson", "xmlattr", "urlencode"})


def charge_elements(value: Any, *, deep: bool = False) -> None:
    """A step per element of `value` (its characters by the thousand), for work done in
    Python per element (a sort, a `map`, a pretty print), not a C-level pass."""
    if isinstance(value, str | bytes):
        spend(1 + len(value) // CHARS_PER_STEP)
    elif deep:
        spend(1 + size_of(value)[1])
    elif isinstance(value, list | tuple | dict | set | frozenset | range):
        spend(1 + len(value))


def bounded_filter(function: Callable[..., Any], name: str = "") -> Callable[..., Any]:
    """A filter (or test) that spends a step, a step per element of its value, and what its
    result weighs."""
    light, deep = name in LIGHT_FILTERS, name in DEEP_FILTERS

    @wraps(function)  # keeps `jinja_pass_arg`, so context/eval_ctx are still passed
    def bounded(*args: Any, **kwargs: Any) -> Any:
        current = _CURRENT.get()
        if current is None:
            raise BudgetExceeded("template code evaluated outside a render")
        if light or (len(args) == 1 and isinstance(args[0], str) and len(args[0]) < 1000):
            if current.steps < 1:  # the common case (a short string), Budget.spend inline
                raise current.exceeded(1)
            current.steps -= 1
        else:
            current.spend(1)
            for arg in args[:2]:  # the value (after a context or environment argument)
                charge_elements(arg, deep=deep)
        result = function(*args, **kwargs)
        if isinstance(result, str):
            current.spend(0, len(result))
        return result

    return bounded


def _budget_step(value: Any, steps: Any, chars: Any) -> str:
    if not (isinstance(steps, int) and isinstance(chars, int) and steps >= 0 and chars >= 0):
        raise SecurityError("the budget filter takes two counts")
    spend(steps, chars)
    return ""


@pass_eval_context
def finalize(eval_ctx: Any, value: Any) -> Any:
    """Each `{{ ... }}` output, as text, spends its length (inside macros and blocks too,
    whose output is buffered). Taking the evaluation context keeps Jinja from evaluating
    constant output when it compiles."""
    if not isinstance(value, str):
        if hasattr(value, "__html__"):
            spend(1)
            return value
        value = str(value)
    current = _CURRENT.get()
    if current is None:
        raise BudgetExceeded("template code evaluated outside a render")
    size = len(value)
    if current.steps < 1 or size > current.chars:  # Budget.spend, inline: once per output
        raise current.exceeded(1)
    current.steps -= 1
    current.chars -= size
    return value


INTERNAL_FILTERS: dict[str, Callable[..., Any]] = {
    BUDGET_STEP: _budget_step,
    BUDGET_EACH: counted,
    BUDGET_VALUE: charge_value,
}
