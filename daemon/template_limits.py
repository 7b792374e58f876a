"""What one message's templates may cost: a budget of steps and characters, and caps.

A render runs on the event loop, so its work must be bounded before it is done, not
measured after: every loop iteration, call, filter, test and output spends *steps* from a
budget per message, and every string or container a template builds spends *characters*;
an operation whose result would be far larger than its inputs (a width, a repeat, a
separator joined many times) is charged, or refused, before it runs. A budget spent raises
`BudgetExceeded` (a sandbox violation): the message fails, the daemon does not.

The bounds are enforced by instrumenting the parsed template (`instrument`: each loop,
macro and call block body first spends its own size), by a code generator that routes `~`
and `in` through the budget (`BoundedCodeGenerator`), and by the sandbox itself
(`daemon.templates`: calls, `*`, `+`, `%`). Nothing is evaluated at compile time: the
environment is not optimised and output is finalised at run time, so `{{ 'a'|center(10**9) }}`
is never folded into a constant when a campaign is created. docs/security.md states them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from functools import wraps
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, operators
from jinja2.exceptions import SecurityError
from jinja2.meta import TrackingCodeGenerator
from jinja2.utils import pass_eval_context
from jinja2.visitor import NodeTransformer

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

_BUDGET_STEP = "_budget_step"  # the filters the instrumentation calls
_BUDGET_EACH = "_budget_each"
_BUDGET_VALUE = "_budget_value"


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
    _BUDGET_STEP: _budget_step,
    _BUDGET_EACH: counted,
    _BUDGET_VALUE: charge_value,
}


def _filter(value: Any, name: str, *args: Any, lineno: int) -> nodes.Filter:
    return nodes.Filter(value, name, [nodes.Const(a, lineno=lineno) for a in args], [],
                        None, None, lineno=lineno)


def _cost(body: list[nodes.Node]) -> tuple[int, int]:
    """(steps, characters) one run of `body` costs by itself: its nodes and its literal
    text, without the bodies of its loops, macros and call blocks (they spend their own)."""
    steps = chars = 0
    stack: list[nodes.Node] = list(body)
    while stack:
        node = stack.pop()
        steps += 1
        if isinstance(node, nodes.TemplateData):
            chars += len(node.data)
        if isinstance(node, nodes.For):
            stack.extend(n for n in (node.target, node.iter, node.test) if n is not None)
            stack.extend(node.else_)
        elif isinstance(node, nodes.Macro | nodes.CallBlock):
            stack.extend(node.defaults)
            if isinstance(node, nodes.CallBlock):
                stack.append(node.call)
        else:
            stack.extend(node.iter_child_nodes())
    return steps, chars


def _prologue(body: list[nodes.Node], lineno: int) -> list[nodes.Node]:
    steps, chars = _cost(body)
    charge = _filter(nodes.Const(0, lineno=lineno), _BUDGET_STEP, steps, chars, lineno=lineno)
    return [nodes.ExprStmt(charge, lineno=lineno), *body]


class _Instrument(NodeTransformer):
    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        if node.recursive:  # `loop(children)` iterates without `iter`: the body pays
            node.iter = _filter(node.iter, _BUDGET_EACH, lineno=node.lineno)
            node.body = _prologue(node.body, node.lineno)
        else:  # each element pays for the body it runs (filtered out or not)
            node.iter = _filter(node.iter, _BUDGET_EACH, *_cost(node.body), lineno=node.lineno)
        return node

    def visit_Macro(self, node: nodes.Macro) -> nodes.Node:
        self.generic_visit(node)
        node.body = _prologue(node.body, node.lineno)
        return node

    def visit_CallBlock(self, node: nodes.CallBlock) -> nodes.Node:
        self.generic_visit(node)
        node.body = _prologue(node.body, node.lineno)
        return node

    def _literal(self, node: nodes.Expr) -> nodes.Node:
        self.generic_visit(node)
        return _filter(node, _BUDGET_VALUE, lineno=node.lineno)

    visit_List = visit_Dict = _literal

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:
        return self._literal(node) if node.ctx == "load" else self.generic_visit(node)


def instrument(tree: nodes.Template) -> nodes.Template:
    """`tree` with the budget spent in it: each loop iteration spends a step and its body's
    size, each macro and call block its body's, literals what they hold."""
    _Instrument().visit(tree)
    # The top level runs once per field: its nodes are bounded by the source's size (its
    # outputs, calls and loops spend as anywhere), so it pays no prologue on the hot path.
    assert tree.environment is not None
    tree.set_environment(tree.environment)  # the nodes added know it too
    return tree


class BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with `~` and `in` spending from the budget."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.bounded_concat({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_Operand(self, node: nodes.Operand, frame: Frame) -> None:
        if node.op not in ("in", "notin"):
            super().visit_Operand(node, frame)
            return
        self.write(f" {operators[node.op]} environment.searched(")
        self.visit(node.expr, frame)
        self.write(")")


class _Tracking(TrackingCodeGenerator):
    """`meta`'s introspection, without the optimizer that folds constants."""

    def __init__(self, environment: Any) -> None:
        CodeGenerator.__init__(self, environment, "<introspection>", "<introspection>",
                               optimized=False)
        self.undeclared_identifiers: set[str] = set()


def undeclared_variables(tree: nodes.Template) -> frozenset[str]:
    """The variables `tree` reads from its context (as `meta.find_undeclared_variables`)."""
    tracking = _Tracking(tree.environment)
    tracking.visit(tree)
    return frozenset(tracking.undeclared_identifiers)
