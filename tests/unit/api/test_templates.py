"""Templates: compiled once, rendered strictly, sandboxed, HTML escaped in `html` only."""

from __future__ import annotations

import pytest

from daemon.models import Channel
from daemon.templates import CompiledContent, RenderError, TemplateProblem

VARIABLES = {
    "profile": {"id": "p1", "email": "a@example.com", "phone": None, "push_tokens": [],
                "attributes": {"first_name": "Ann <b>"}},
    "context": {"promo": "X1"},
    "campaign": {"id": "c1", "name": "Sale", "channel": "email"},
    "run": {"id": "run_1", "scheduled_for": "2026-01-01T00:00:00Z"},
    "unsubscribe_url": None,
}


def email(**fields: object) -> dict[str, object]:
    return {"from": "shop@example.com", "subject": "Hi", "text": "t", **fields}


def test_email_renders_every_field_and_escapes_html_only() -> None:
    content = CompiledContent.compile(Channel.EMAIL, email(
        subject="Hi {{ profile.attributes.first_name }}",
        html="<p>{{ profile.attributes.first_name }} {{ context.promo }}</p>",
        text="{{ profile.attributes.first_name }}",
        reply_to="help@example.com",
    ))
    assert content.render(VARIABLES) == {
        "from": "shop@example.com",
        "reply_to": "help@example.com",
        "subject": "Hi Ann <b>",
        "html": "<p>Ann &lt;b&gt; X1</p>",
        "text": "Ann <b>",
    }


def test_optional_fields_absent_are_omitted() -> None:
    rendered = CompiledContent.compile(Channel.SMS, {"body": "Code {{ context.promo }}"}).render(
        VARIABLES
    )
    assert rendered == {"body": "Code X1"}


def test_push_data_strings_are_rendered_and_other_values_kept() -> None:
    content = CompiledContent.compile(Channel.PUSH, {
        "title": "T", "body": "B", "data": {"promo": "{{ context.promo }}", "n": 3},
    })
    assert content.render(VARIABLES)["data"] == {"promo": "X1", "n": 3}


def test_syntax_error_names_field_and_line() -> None:
    with pytest.raises(TemplateProblem) as info:
        CompiledContent.compile(Channel.EMAIL, email(html="<p>\n{{ oops </p>"))
    assert info.value.field == "html"
    assert info.value.line == 2


def test_unknown_filter_is_a_compile_problem() -> None:
    with pytest.raises(TemplateProblem) as info:
        CompiledContent.compile(Channel.SMS, {"body": "{{ x | nosuchfilter }}"})
    assert info.value.field == "body"


@pytest.mark.parametrize(
    ("channel", "content", "field"),
    [
        (Channel.EMAIL, {"from": "a@b.c", "text": "t"}, "subject"),
        (Channel.EMAIL, {"from": "a@b.c", "subject": "s"}, "text"),
        (Channel.SMS, {"body": "b", "title": "t"}, "title"),
        (Channel.PUSH, {"title": "t", "body": 3}, "body"),
        (Channel.PUSH, {"title": "t", "body": "b", "data": []}, "data"),
    ],
)
def test_structure_problems_name_the_field(
    channel: Channel, content: dict[str, object], field: str
) -> None:
    with pytest.raises(TemplateProblem) as info:
        CompiledContent.compile(channel, content)
    assert info.value.field == field


def test_undefined_variable_is_a_render_error() -> None:
    content = CompiledContent.compile(Channel.SMS, {"body": "{{ profile.attributes.nope }}"})
    with pytest.raises(RenderError) as info:
        content.render(VARIABLES)
    assert "content.body" in info.value.reason


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ 'x' * 1000000000 }}",
        "{{ 10 ** 100000000 }}",
        "{{ ((10 ** 64) ** 64) ** 64 }}",
        "{{ 1 / 0 }}",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    ],
)
def test_sandbox_violations_and_runtime_errors_are_render_errors(source: str) -> None:
    content = CompiledContent.compile(Channel.SMS, {"body": source})
    with pytest.raises(RenderError):
        content.render(VARIABLES)


def test_plain_text_is_not_templated() -> None:
    content = CompiledContent.compile(Channel.SMS, {"body": "100% {off}"})
    assert content.render({}) == {"body": "100% {off}"}


def test_fields_share_the_variables_but_not_their_assignments() -> None:
    content = CompiledContent.compile(Channel.EMAIL, email(
        subject="{% set promo = 'mine' %}{{ promo }} {{ context.promo }}",
        text="{{ promo | default('none') }} {% for n in range(2) %}{{ n }}{% endfor %}",
        html="{{ dict(a=1)['a'] }}",
    ))
    for _ in range(2):  # the second message sees none of the first's assignments either
        rendered = content.render(VARIABLES)
        assert (rendered["subject"], rendered["text"], rendered["html"]) == (
            "mine X1", "none 01", "1")


@pytest.mark.parametrize(("fields", "uses"), [
    ({"text": "{{ unsubscribe_url }}"}, True),
    ({"html": "{% if unsubscribe_url %}<a href='{{ unsubscribe_url }}'>x</a>{% endif %}"}, True),
    ({"subject": "{{ profile.id }}", "text": "unsubscribe_url"}, False),
    ({"text": "{% set unsubscribe_url = 'x' %}{{ unsubscribe_url }}"}, False),
    ({"text": "{# unsubscribe_url #}{{ run.id }}"}, False),
])
def test_content_knows_whether_it_reads_the_unsubscribe_url(
    fields: dict[str, str], uses: bool
) -> None:
    assert CompiledContent.compile(Channel.EMAIL, email(**fields)).uses_unsubscribe_url is uses


def test_push_data_reading_the_unsubscribe_url_counts() -> None:
    content = CompiledContent.compile(Channel.PUSH, {
        "title": "t", "body": "b", "data": {"u": "{{ unsubscribe_url }}", "n": 1}})
    assert content.uses_unsubscribe_url



@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ profile.attributes.first_name }}", "Ann <b>"),
        # A dict's own methods win over its keys, as in any sandboxed template.
        ("{{ context.items is callable }}", "True"),
        ("{% for k, v in context.items() %}{{ k }}={{ v }}{% endfor %}", "promo=X1"),
        ("{{ context.get('promo') }}", "X1"),
        ("{{ context.nope | default('-') }}", "-"),
        ("{{ context.nope is defined }}", "False"),
        # A key that is no dict attribute is the item, underscore or not (Jinja's rule).
        ("{{ extra.mro }} {{ extra._private }}", "2 1"),
    ],
)
def test_attribute_lookups_on_dicts_keep_the_sandbox_rules(source: str, expected: str) -> None:
    variables = {**VARIABLES, "extra": {"_private": 1, "mro": 2}}
    content = CompiledContent.compile(Channel.SMS, {"body": source})
    assert content.render(variables)["body"] == expected


@pytest.mark.parametrize("source", ["{{ context.__class__ }}", "{{ context.nope }}",
                                    "{{ context.items.__self__ }}"])
def test_unsafe_or_missing_attributes_of_dicts_are_render_errors(source: str) -> None:
    content = CompiledContent.compile(Channel.SMS, {"body": source})
    with pytest.raises(RenderError):
        content.render(VARIABLES)
