"""Hostile templates: nothing evaluated at compile, and a render bounded in steps and size.

Memory is measured with tracemalloc (allocations, not time): a render that allocated what
it was asked for would show hundreds of megabytes.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest

from daemon.models import Channel
from daemon.templates import (
    MAX_RENDERED_CHARS,
    CompiledContent,
    RenderError,
    TemplateProblem,
    limits,
)

VARIABLES: dict[str, Any] = {
    "profile": {"id": "p1", "attributes": {"name": "Ann"}}, "context": {"a": "x"},
    "campaign": {"id": "c1"}, "run": {"id": "run_1"}, "unsubscribe_url": None,
}
MEGABYTE = 1 << 20


@contextmanager
def peak_allocation() -> Iterator[Callable[[], int]]:
    """The peak bytes allocated inside the block (read after it)."""
    tracemalloc.start()
    peak = 0
    try:
        yield lambda: peak
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def sms(source: str) -> CompiledContent:
    return CompiledContent.compile(Channel.SMS, {"body": source})


def render_error(source: str) -> str:
    content = sms(source)
    with pytest.raises(RenderError) as info:
        content.render(VARIABLES)
    return info.value.reason


@pytest.mark.parametrize("source", [
    "{{ 'a'|center(200000000) }}",
    "{{ '%03000000000d'|format(1) }}",
    "{{ 'a'|center(2500000000) }}",
    "{{ 'a'.ljust(2000000000) }}",
    "{% set x = 'a'|center(200000000) %}{{ x }}",
])
def test_an_unbounded_constant_is_not_evaluated_at_compile(source: str) -> None:
    with peak_allocation() as peak:
        content = sms(source)
    assert peak() < 10 * MEGABYTE
    with peak_allocation() as peak, pytest.raises(RenderError) as info:
        content.render(VARIABLES)
    assert peak() < 10 * MEGABYTE
    assert "above 10000 refused" in info.value.reason


@pytest.mark.parametrize("source", [
    "{{ " + "+".join(["context.a"] * 250) + " }}",
    "{{ " + "(" * 300 + "1" + ")" * 300 + " }}",
])
def test_python_compile_limits_are_template_problems(source: str) -> None:
    with pytest.raises(TemplateProblem) as info:
        sms(source)
    assert info.value.field == "body"
    assert "too complex" in info.value.message or "nested too deeply" in info.value.message


@pytest.mark.parametrize(("source", "spent"), [
    ("{% for i in range(100000) %}{% for j in range(3000) %}{% endfor %}{% endfor %}x",
     "steps"),
    ("{% for i in range(100000) if i < 0 %}{% endfor %}" * 2, "steps"),
    ("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(25) }}",
     "steps"),
    ("{% for x in [1] recursive %}{% for y in range(100000) if y < 0 %}{% endfor %}"
     "{{ loop([1]) }}{% endfor %}", ""),
    ("{{ ([[1]] * 100000)|sum(start=[]) }}", "steps"),
    ("{{ range(100000)|map('string')|join }}", "steps"),
])
def test_loops_calls_and_filters_spend_steps(source: str, spent: str) -> None:
    reason = render_error(source)
    assert spent in reason


@pytest.mark.parametrize("source", [
    "{% for i in range(3000) %}{{ 'a' * 100000 }}{% endfor %}",
    "{% macro m() %}{% for i in range(3000) %}{{ 'a' * 100000 }}{% endfor %}{% endmacro %}"
    "{{ m()|length }}",
    "{% set b = 'a' * 100000 %}{% set l = [] %}"
    "{% for i in range(10000) %}{% if l.append(b) %}{% endif %}{% endfor %}{{ l }}",
    "{% set b = 'a' * 100000 %}{{ [b] * 100000 }}",
    "{% set b = 'a' * 100000 %}{{ [" + ", ".join(["b"] * 100) + "] }}",
    "{% set s = 'a' * 100000 %}" + "{% set s = s ~ s %}" * 12 + "{{ s|length }}",
    "{% set s = 'a' * 100000 %}" + "{% set s = s + s %}" * 12 + "{{ s|length }}",
    "{{ range(100000)|join('a' * 100000) }}",
    "{{ ('a' * 100000).replace('', 'b' * 100000) }}",
    "{{ ('\t' * 100000).expandtabs(10000) }}",
    "{{ {}.fromkeys(range(100000), 'a' * 100000) }}",
    "{% set b = 'a' * 100000 %}{{ dict(" + ", ".join(f"k{n}=b" for n in range(100)) + ") }}",
    "{% set b = 'a' * 100000 %}{{ namespace(" + ", ".join(f"k{n}=b" for n in range(100))
    + ") }}",
    "{{ ('a\n' * 50000)|indent(10000) }}",
    "{{ ('a ' * 50000)|wordwrap(1, wrapstring='b' * 100000) }}",
    "{{ ('%10000s' * 10000)|format(*range(10000)) }}",
    "{{ ('{:10000}' * 10000).format(*range(10000)) }}",
])
def test_what_a_template_builds_is_charged_before_it_grows(source: str) -> None:
    with peak_allocation() as peak:
        reason = render_error(source)
    assert peak() < 32 * MEGABYTE, reason
    assert "refused" in reason or "more than" in reason


@pytest.mark.parametrize("source", [
    "{{ '{:1000000000}'.format(1) }}",
    "{{ '{:.1000000000f}'.format(1.0) }}",
    "{{ '{:{w}}'.format(1, w=1000000000) }}",
    "{{ '%*d' % (1000000000, 1) }}",
    "{{ '%.1000000000f' % 1.0 }}",
    "{{ 'a'.zfill(1000000000) }}",
    "{{ 'a'.rjust(1000000000) }}",
    "{{ 'a'|truncate(1000000000) }}",
    "{{ 'a'|wordwrap(1000000000) }}",
    "{{ 'a'|indent(1000000000) }}",
    "{{ [1]|batch(1000000000, 'x')|list }}",
    "{{ [1]|slice(1000000000)|list }}",
    "{{ lipsum(1000000000) }}",
])
def test_widths_and_counts_above_the_cap_are_refused(source: str) -> None:
    reason = render_error(source)
    assert "refused" in reason


def test_output_is_counted_as_it_grows() -> None:
    content = sms("{% for i in range(3000) %}{{ 'a' * 1000 }}{% endfor %}")
    with peak_allocation() as peak, pytest.raises(RenderError) as info:
        content.render(VARIABLES)
    assert "more than" in info.value.reason or "longer than" in info.value.reason
    assert peak() < 16 * MEGABYTE


def test_the_budget_is_per_message() -> None:
    content = sms("{% for i in range(2000) %}{{ i }}{% endfor %}")
    budget = limits.Budget()
    content.render(VARIABLES, budget)
    assert 0 < limits.MAX_STEPS - budget.steps < limits.MAX_STEPS
    for _ in range(10):  # each message has its own: none runs out because of the others
        assert content.render(VARIABLES)["body"].startswith("0123")


def test_ordinary_templates_fit_the_budget() -> None:
    items = [{"name": f"item {n}", "price": n * 1.5, "tags": ["a", "b"]} for n in range(100)]
    content = CompiledContent.compile(Channel.EMAIL, {
        "from": "shop@example.com", "subject": "Hi {{ profile.attributes.name|title }}",
        "html": "<ul>{% for item in context.products %}<li>{{ loop.index }}. {{ item.name }}: "
                "{{ '%.2f'|format(item.price) }} {{ item.tags|join(', ') }}"
                "{% if item.price > 10 %} (sale){% endif %}</li>{% endfor %}</ul>"
                "{{ 'x'|center(40) }}{{ context.products|map(attribute='name')|join(',')|length }}",
        "text": "{% for item in context.products|sort(attribute='price') %}"
                "{{ item.name|upper|truncate(20) }}{% endfor %}",
    })
    rendered = content.render({**VARIABLES, "context": {"products": items}})
    assert "<li>100. item 99: 148.50 a, b (sale)</li>" in rendered["html"]


def test_a_long_output_under_the_cap_still_renders() -> None:
    content = sms("{% for i in range(9) %}{{ 'a' * 100000 }}{% endfor %}")
    assert len(content.render(VARIABLES)["body"]) == 900_000 < MAX_RENDERED_CHARS


def test_the_internal_budget_filters_cannot_give_steps_back() -> None:
    assert "two counts" in render_error("{{ 0|_budget_step(-100000, 0) }}")
    assert "two counts" in render_error("{% for i in range(3)|_budget_each(-5, 0) %}{% endfor %}")


def test_nothing_template_made_runs_outside_a_render() -> None:
    with pytest.raises(limits.BudgetExceeded):
        limits.spend(1)


@pytest.mark.parametrize("source", ["{{ 'a'|center(-9000) }}", "{{ [1]|slice(-3)|list }}",
                                    "{{ 'a'.ljust(-5000) }}", "{{ lipsum(-100, max=100) }}"])
def test_a_negative_width_gives_no_budget_back(source: str) -> None:
    budget = limits.Budget()
    with suppress(RenderError):
        sms(source).render(VARIABLES, budget)
    assert budget.steps <= limits.MAX_STEPS and budget.chars <= limits.MAX_CHARS


@pytest.mark.parametrize("source", [
    "{{ '<b>' ~ context.a }}", "{{ ('<b>'|safe) ~ context.a ~ '<i>' }}", "{{ '<%s>' % context.a }}",
    "{% autoescape false %}{{ '<b>' ~ context.a }}{% endautoescape %}",
    "{{ '{}<{}>'.format(1, '<x>') }}", "{{ ('<p>%s</p>'|safe) % '<x>' }}",
    "{{ [1, 'a', none] }} {{ (1, 2) }} {{ {'k': [1]} }}", "{{ 1 in [1, 2] }} {{ 'a' not in 'b' }}",
    "{{ [1, 2] + [3] }} {{ 'a' + 'b' }} {{ 2 * 3 }} {{ 7 % 3 }} {{ 2 ** 8 }}",
    "{% for x in [3, 1, 2]|sort if x > 1 %}{{ loop.index }}{{ x }}{% else %}none{% endfor %}",
    "{% macro m(a, b=2) %}{{ a }}{{ b }}{{ caller() if caller is defined else '' }}{% endmacro %}"
    "{{ m(1) }}{% call m(3) %}in{% endcall %}",
    "{% for x in [[1, [2]], [3]] recursive %}{{ x if x is number else loop(x) }}{% endfor %}",
    "{% set ns = namespace(n=0) %}{% for x in range(3) %}{% set ns.n = ns.n + x %}{% endfor %}"
    "{{ ns.n }}",
    "{{ 'a b c'|wordwrap(3) }}|{{ 'x'|center(5) }}|{{ 'l1\nl2'|indent(2, true) }}|"
    "{{ 'abcdef'|truncate(5, true, '.', 0) }}|{{ '%03d'|format(7) }}|{{ [1, 2]|join('-') }}|"
    "{{ 'aXa'|replace('a', 'bb') }}|{{ [1, 2, 3]|batch(2, 0)|list }}|{{ [1, 2, 3]|slice(2)|list }}|"
    "{{ [1, 2]|sum }}|{{ [[1], [2]]|sum(start=[]) }}|{{ 'ab'.ljust(4) }}.|{{ '\t'.expandtabs(2) }}|"
    "{{ '-'.join(['a', 'b']) }}|{{ {}.fromkeys('ab', 0) }}|{{ 'ab'.translate({97: 'x'}) }}",
])
@pytest.mark.parametrize("html", [False, True])
def test_bounded_templates_render_as_plain_jinja_does(source: str, html: bool) -> None:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    # Not optimised either. (Jinja folds a constant `('<b>'|safe) ~ '<i>'` into a plain
    # string and escapes it all; evaluated at run time, as here, the safe part stays.)
    plain = SandboxedEnvironment(undefined=StrictUndefined, autoescape=html,
                                 keep_trailing_newline=True, optimized=False)
    field = "html" if html else "text"
    content = CompiledContent.compile(Channel.EMAIL, {
        "from": "a@example.com", "subject": "s", field: source})
    assert content.render(VARIABLES)[field] == plain.from_string(source).render(VARIABLES)
