"""Sandboxed Jinja2 templates: compile once per campaign/run, render per recipient.

Two module-level environments, created once: one with HTML autoescaping (for the
email `html` field only) and one without. Both are sandboxed (no attribute access
to internals, no unsafe calls), strict about undefined names, and refuse the
arithmetic that would build huge strings or numbers (`'x' * 10**9`), which a
template could otherwise use to exhaust the daemon's memory.

Templates see `profile`, `context`, `campaign`, `run` and `unsubscribe_url`. A message's
fields all render from one scope (the environment's globals and the variables, merged once
per message), each field in its own Jinja context over it: what `Template.render` would
build per field (a copy of the globals' ChainMap and the variables) is built once.

What a render may cost is bounded (daemon.templates.limits: one budget of steps and
characters per message, caps on widths) and nothing is evaluated when a template compiles.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.environment import Template
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext, Macro
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import Cycler, Namespace

from daemon.errors import CampaigndError
from daemon.models import Channel
from daemon.templates import compiler, limits
from daemon.templates.filters import BOUNDED_GLOBALS, bounded_filters, checked_call

# Largest string/list a template may build with `*`, largest exponent for `**`,
# and largest rendered field: far above any real message, far below trouble.
MAX_PRODUCT_LENGTH = 100_000
MAX_EXPONENT = 64
MAX_POWER_BITS = 4096
MAX_RENDERED_CHARS = 1_000_000
# A macro call does as much as some ten other steps (Jinja binds its arguments in Python).
MACRO_CALL_STEPS = 10

# The content fields of each channel: name -> required.
CHANNEL_FIELDS: dict[Channel, dict[str, bool]] = {
    Channel.EMAIL: {"from": True, "reply_to": False, "subject": True, "html": False,
                    "text": False},
    Channel.SMS: {"from": False, "body": True},
    Channel.PUSH: {"title": True, "body": True, "data": False},
}
HTML_FIELD = "html"
DATA_FIELD = "data"


class TemplateProblem(CampaigndError):
    """A content template is invalid (syntax error, missing or mistyped field)."""

    def __init__(self, field: str, line: int | None, message: str) -> None:
        self.field = field
        self.line = line
        self.message = message
        where = f"{field}, line {line}" if line is not None else field
        super().__init__(f"{where}: {message}")


class RenderError(CampaigndError):
    """A template failed for one recipient (undefined name, sandbox violation, ...)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


# The globals that build a container of their arguments.
_CONTAINER_MAKERS = (dict, Namespace, Cycler)

# What `getattr` finds on a plain dict: its methods (a dict instance has no own attributes).
_DICT_ATTRIBUTES = frozenset(dir(dict))


class _Environment(SandboxedEnvironment):
    """The sandbox, with every call, filter, test, output and operator that can build or
    loop spending from the render's budget; not optimised, so nothing runs at compile."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = compiler.BoundedCodeGenerator

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=autoescape,
                         keep_trailing_newline=True, optimized=False,
                         finalize=limits.finalize)
        self.filters = bounded_filters(self.filters)
        self.filters.update(limits.INTERNAL_FILTERS)
        self.tests = {name: limits.bounded_filter(cast(Callable[..., Any], test), name)
                      for name, test in self.tests.items()}
        self.globals.update(BOUNDED_GLOBALS)

    def call(self, context: Any, function: Any, /, *args: Any, **kwargs: Any) -> Any:
        limits.spend(MACRO_CALL_STEPS if isinstance(function, Macro) else 1)
        if isinstance(function, LoopContext) and args:  # `loop(children)`: a recursive loop
            args = (limits.counted(args[0]), *args[1:])
        if isinstance(function, Macro | LoopContext):
            with limits.nested():
                return super().call(context, function, *args, **kwargs)
        args = checked_call(function, args, kwargs)
        result = super().call(context, function, *args, **kwargs)
        if isinstance(result, str | bytes):
            limits.spend(0, len(result))
        elif function in _CONTAINER_MAKERS:  # what they hold is what they were given
            limits.charge_value((args, kwargs))
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template = value.__self__

        def bounded(*args: Any, **kwargs: Any) -> str:
            limits.spend(1, limits.check_format(template))
            return wrapped(*args, **kwargs)

        return bounded

    def bounded_concat(self, join: Callable[[Any], str], parts: tuple[Any, ...]) -> str:
        """`a ~ b ~ ...`: its strings charged before they are joined."""
        known = sum(len(part) for part in parts if isinstance(part, str))
        limits.spend(1, known)
        result = join(parts)
        limits.spend(0, max(len(result) - known, 0))
        return result

    def searched(self, container: Any) -> Any:
        """The right side of `in`: a pass over it charged (not over a dict or a set)."""
        if not isinstance(container, dict | set | frozenset):
            limits.charge_pass(container)
        return container

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`profile.attributes.name` on a plain dict: its item straight away, as the sandbox
        would find it after `getattr` failed (an exception per lookup); a name that a dict has
        as an attribute (`items`, `__class__`) goes through the sandbox's own rule."""
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except LookupError:
                pass
            return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        limits.spend(1)
        if operator_name == "*":
            _check_product(left, right)
            _check_product(right, left)
            return operator.mul(left, right)
        if operator_name == "**":
            _check_power(left, right)
            return operator.pow(left, right)
        if operator_name == "%" and isinstance(left, str):
            limits.spend(0, limits.check_percent(left))
            return limits.charge_value(operator.mod(left, right))
        if operator_name == "+":
            return limits.charge_value(operator.add(left, right))
        return super().call_binop(context, operator_name, left, right)


def _check_product(sequence: Any, times: Any) -> None:
    if not isinstance(sequence, str | list | tuple | bytes) or not isinstance(times, int):
        return
    if len(sequence) * times > MAX_PRODUCT_LENGTH:
        raise SecurityError(f"a repeated sequence longer than {MAX_PRODUCT_LENGTH} refused")
    times = max(times, 0)
    if isinstance(sequence, str | bytes):
        limits.spend(1 + len(sequence) * times // limits.CHARS_PER_STEP, len(sequence) * times)
    else:
        chars, elements = limits.size_of(sequence)
        limits.spend(1 + elements * times // limits.ELEMENTS_PER_STEP, chars * times)


def _check_power(base: Any, exponent: Any) -> None:
    if not isinstance(exponent, int | float) or abs(exponent) <= 1:
        return
    if abs(exponent) > MAX_EXPONENT:
        raise SecurityError(f"exponent above {MAX_EXPONENT} refused")
    if isinstance(base, int) and base.bit_length() * abs(exponent) > MAX_POWER_BITS:
        raise SecurityError(f"a power above {MAX_POWER_BITS} bits refused")


_TEXT = _Environment(autoescape=False)
_HTML = _Environment(autoescape=True)
# The globals templates see (`range`, `dict`, ...): the same in both environments.
_GLOBALS: dict[str, Any] = dict(_TEXT.globals)
assert dict(_HTML.globals) == _GLOBALS
UNSUBSCRIBE_URL = "unsubscribe_url"

# A compiled field: the variables -> its rendered text (or, for push data, its value).
_Renderer = Callable[[Mapping[str, Any]], str]
_Value = Callable[[Mapping[str, Any]], Any]


def is_template(source: str) -> bool:
    return "{{" in source or "{%" in source or "{#" in source


def _constant(value: Any) -> _Value:
    return lambda variables: value


def _compiled(field: str, template: Template) -> _Renderer:
    environment = template.environment
    root = template.root_render_func
    new_context = environment.context_class
    name, blocks = template.name, template.blocks

    def render(scope: Mapping[str, Any]) -> str:
        # `Template.render` without its per-call copies of the globals (a ChainMap, copied
        # twice) and the variables: `scope` holds both already; the template's own
        # assignments go to its context.
        context = new_context(environment, scope, name, blocks)  # type: ignore[arg-type]
        parts: list[str] = []
        size = 0
        for part in root(context):  # counted as it grows: a long output fails early
            size += len(part)
            if size > MAX_RENDERED_CHARS:
                raise RenderError(
                    f"content.{field}: rendered text longer than {MAX_RENDERED_CHARS}")
            parts.append(part)
        return "".join(parts)

    return render


def _compile_text(field: str, source: Any, *, html: bool = False
                  ) -> tuple[_Renderer, frozenset[str]]:
    """The field's renderer and the variables its template reads."""
    if not isinstance(source, str):
        raise TemplateProblem(field, None, "must be a string")
    if not is_template(source):
        return _constant(source), frozenset()
    environment = _HTML if html else _TEXT
    try:
        tree = environment.parse(source)
        names = compiler.undeclared_variables(tree)
        template = environment.from_string(compiler.instrument(tree))
    except TemplateSyntaxError as exc:
        raise TemplateProblem(field, exc.lineno, exc.message or "invalid template") from None
    except SecurityError as exc:
        raise TemplateProblem(field, None, str(exc)) from None
    except RecursionError:
        raise TemplateProblem(field, None, "the template is nested too deeply") from None
    except (SyntaxError, MemoryError, OverflowError, ValueError) as exc:
        # Python's own compiler refusing the generated code: too many nested parentheses,
        # statically nested blocks, ...; the template's fault, said without its source.
        detail = exc.msg if isinstance(exc, SyntaxError) else type(exc).__name__
        raise TemplateProblem(field, None, f"the template is too complex to compile ({detail})"
                              ) from None
    except Exception as exc:  # the code generator choking on odd input: still the input's
        raise TemplateProblem(field, None, f"the template cannot be compiled ({type(exc).__name__})"
                              ) from None
    return _compiled(field, template), names


@dataclass(frozen=True, slots=True)
class CompiledContent:
    """A channel's content with every template compiled; `render` is cheap and reentrant."""

    channel: Channel
    _fields: tuple[tuple[str, _Renderer], ...]
    _data: tuple[tuple[str, _Value], ...] | None
    # Whether a template reads `unsubscribe_url` (else it need not be signed per message).
    uses_unsubscribe_url: bool = False

    @classmethod
    def compile(cls, channel: Channel, content: Mapping[str, Any]) -> CompiledContent:
        """Compile `content` for `channel`; raises TemplateProblem naming the first bad field."""
        spec = CHANNEL_FIELDS[channel]
        for name in content:
            if name not in spec:
                raise TemplateProblem(name, None, f"not a {channel.value} content field")
        for name, required in spec.items():
            if required and content.get(name) is None:
                raise TemplateProblem(name, None, "this field is required")
        if channel is Channel.EMAIL and content.get("html") is None \
                and content.get("text") is None:
            raise TemplateProblem("text", None, "an email needs html or text (or both)")
        fields: list[tuple[str, _Renderer]] = []
        data: tuple[tuple[str, _Value], ...] | None = None
        names: set[str] = set()
        for name in spec:
            source = content.get(name)
            if source is None:
                continue
            if name == DATA_FIELD:
                data = _compile_data(source, names)
            else:
                renderer, read = _compile_text(name, source, html=name == HTML_FIELD)
                fields.append((name, renderer))
                names |= read
        return cls(channel, tuple(fields), data, UNSUBSCRIBE_URL in names)

    def render(self, variables: Mapping[str, Any], budget: limits.Budget | None = None
               ) -> dict[str, Any]:
        """The rendered content fields; raises RenderError on any template failure, a
        spent budget included (a fresh one per call unless given)."""
        rendered: dict[str, Any] = {}
        field = ""
        scope = {**_GLOBALS, **variables}  # one per message, shared by its fields
        token = limits.begin(budget)  # one budget for all the message's fields
        try:
            for field, renderer in self._fields:
                rendered[field] = renderer(scope)
            if self._data is not None:
                field = DATA_FIELD
                data: dict[str, Any] = {}
                for key, value in self._data:
                    field = f"{DATA_FIELD}.{key}"
                    data[key] = value(scope)
                rendered[DATA_FIELD] = data
        except RenderError:
            raise
        except Exception as exc:  # any failure inside a template is the template's
            raise RenderError(f"content.{field}: {_describe(exc)}") from None
        finally:
            limits.end(token)
        return rendered


def _compile_data(source: Any, names: set[str]) -> tuple[tuple[str, _Value], ...]:
    """The push data's entries compiled; the variables they read are added to `names`."""
    if not isinstance(source, Mapping):
        raise TemplateProblem(DATA_FIELD, None, "must be an object")
    entries: list[tuple[str, _Value]] = []
    for key, value in source.items():
        if isinstance(value, str):
            renderer, read = _compile_text(f"{DATA_FIELD}.{key}", value)
            entries.append((str(key), renderer))
            names |= read
        else:
            entries.append((str(key), _constant(value)))  # numbers, lists...: passed as given
    return tuple(entries)


def _describe(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "the template recursed too deeply"
    message = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {message}" if not isinstance(exc, SecurityError) else message
