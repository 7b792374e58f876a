"""Jinja's filters, globals and string methods with their sizes bounded before they run.

Each function here charges the current render's budget (daemon.templates.limits) for what
its result may weigh, and refuses a width or count above MAX_WIDTH, before doing the work:
`'a'|center(10**9)` or `'a'.ljust(10**9)` is refused, it never allocates a gigabyte.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jinja2 import filters as jinja_filters
from jinja2.utils import generate_lorem_ipsum, pass_environment, pass_eval_context

from daemon.templates.limits import (
    bounded_filter,
    charge_elements,
    charge_pass,
    charge_value,
    check_percent,
    check_width,
    size_of,
    spend,
)


def _text_length(items: list[Any]) -> int:
    try:
        return sum(map(len, items))
    except TypeError:  # not all strings: a join converts them, its result is charged
        return 0


def center(value: Any, width: Any = 80) -> str:
    check_width(width)
    spend(1, width if isinstance(width, int) else 0)
    return jinja_filters.do_center(value, width)


def indent(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    pad = width if isinstance(width, int) else len(str(width))
    check_width(pad)
    text = str(s)
    spend(1, (text.count("\n") + 1) * max(pad, 0))
    return jinja_filters.do_indent(text, width, first, blank)


@pass_environment
def truncate(environment: Any, s: Any, length: int = 255, killwords: bool = False,
             end: str = "...", leeway: int | None = None) -> str:
    check_width(length, "length")
    check_width(leeway, "leeway")
    return jinja_filters.do_truncate(environment, s, length, killwords, end, leeway)


@pass_environment
def wordwrap(environment: Any, s: Any, width: Any = 79, break_long_words: bool = True,
             wrapstring: str | None = None, break_on_hyphens: bool = True) -> str:
    check_width(width)
    text = str(s)
    lines = text.count("\n") + 1 + len(text) // max(width if isinstance(width, int) else 1, 1)
    # textwrap works word by word in Python: a step per two characters at worst.
    spend(1 + len(text) // 2, lines * len(wrapstring or "\n"))
    return jinja_filters.do_wordwrap(environment, text, width, break_long_words, wrapstring,
                                     break_on_hyphens)


def format_(value: Any, *args: Any, **kwargs: Any) -> str:
    if isinstance(value, str):
        spend(1, check_percent(value))
    return jinja_filters.do_format(value, *args, **kwargs)


@pass_eval_context
def join(eval_ctx: Any, value: Iterable[Any], d: str = "",
         attribute: str | int | None = None) -> str:
    items = list(value)
    spend(1, len(str(d)) * max(len(items) - 1, 0))
    spend(0, _text_length(items))
    return jinja_filters.sync_do_join(eval_ctx, items, d, attribute)


def _replaced_size(text: str, old: str, new: str, count: int | None) -> int:
    found = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        found = min(found, count)
    return found * len(new)


@pass_eval_context
def replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> str:
    spend(1, _replaced_size(str(s), str(old), str(new), count))
    return jinja_filters.do_replace(eval_ctx, s, old, new, count)


def _fill_size(fill_with: Any, count: Any) -> int:
    check_width(count, "count")
    if fill_with is None or not isinstance(count, int):
        return 0
    return size_of(fill_with)[0] * max(count, 0)


def batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
    spend(1, _fill_size(fill_with, linecount))
    return jinja_filters.do_batch(value, linecount, fill_with)


def slice_(value: Any, slices: Any, fill_with: Any = None) -> Any:
    spend(1 + (slices if isinstance(slices, int) else 0), _fill_size(fill_with, slices))
    return jinja_filters.sync_do_slice(value, slices, fill_with)


@pass_environment
def sum_(environment: Any, iterable: Iterable[Any], attribute: str | int | None = None,
         start: Any = 0) -> Any:
    """Jinja's `sum`, each addition charged: a sum of lists is quadratic in Python."""
    if attribute is not None:
        iterable = map(jinja_filters.make_attrgetter(environment, attribute), iterable)
    total = start
    for item in iterable:
        spend(1)
        total = total + item
        if isinstance(total, str | list | tuple):
            spend(len(total) // 10, len(total))
    return total


def lipsum(n: Any = 5, html: bool = True, min: Any = 20, max: Any = 100) -> str:
    check_width(n, "count")
    check_width(max, "count")
    words = n * max if isinstance(n, int) and isinstance(max, int) else 0
    spend(1 + words, 12 * words)
    return str(generate_lorem_ipsum(n, html, min, max))


BOUNDED_FILTERS: dict[str, Callable[..., Any]] = {
    "center": center, "indent": indent, "truncate": truncate, "wordwrap": wordwrap,
    "format": format_, "join": join, "replace": replace, "batch": batch, "slice": slice_,
    "sum": sum_,
}
BOUNDED_GLOBALS: dict[str, Callable[..., Any]] = {"lipsum": lipsum}


def bounded_filters(defaults: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """Every filter spending its step and pass, the size-making ones bounded first."""
    return {name: bounded_filter(BOUNDED_FILTERS.get(name, function), name)
            for name, function in defaults.items()}


_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})
_MUTATORS = frozenset({"append", "extend", "insert", "update", "setdefault", "add"})


def checked_call(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                 ) -> tuple[Any, ...]:
    """Charge (or refuse) a call of a method that builds; the arguments to call it with."""
    owner = getattr(function, "__self__", None)
    name = getattr(function, "__name__", "")
    if isinstance(owner, str | bytes):
        charge_pass(owner)
        return _string_method(owner, name, args, kwargs)
    if isinstance(owner, list | dict | set):
        if name in _MUTATORS:
            for value in (*args, *kwargs.values()):
                charge_value(value)
        elif name == "sort":
            charge_elements(owner)
        else:  # index, count, copy, ...: a pass
            charge_pass(owner)
    elif owner is dict and name == "fromkeys" and args:
        charge_pass(args[0])
        keys = list(args[0])
        value = args[1] if len(args) > 1 else None
        spend(1, size_of(value)[0] * len(keys))
        return (keys, *args[1:])
    return args


def _string_method(owner: str | bytes, name: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> tuple[Any, ...]:
    if name in _WIDTH_METHODS:
        width = args[0] if args else kwargs.get("width", 0)
        check_width(width)
        spend(1, width if isinstance(width, int) else 0)
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        check_width(size, "tab size")
        tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
        spend(1, tabs * size if isinstance(size, int) else 0)
    elif name == "join" and args:
        charge_pass(args[0])
        items = list(args[0])
        spend(1, len(owner) * max(len(items) - 1, 0))
        spend(0, _text_length(items))
        return (items, *args[1:])
    elif name == "replace" and len(args) >= 2 and isinstance(owner, str):
        count = args[2] if len(args) > 2 else kwargs.get("count")
        spend(1, _replaced_size(owner, str(args[0]), str(args[1]), count))
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        spend(1, len(owner) * longest)
    return args

