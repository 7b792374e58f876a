"""A hypothesis strategy of hostile Jinja templates: loops, macros, repeats, widths, joins,
concatenations and formats with numbers from the ordinary to the absurd (shared by the
unit fuzz test of templates and the API's)."""

from __future__ import annotations

from hypothesis import strategies as st

NUMBERS = st.sampled_from(["0", "1", "3", "-1", "40", "3000", "100000", "200000000",
                           "2500000000", "10 ** 6", "n"])
ATOMS = st.sampled_from(["'a'", "'%05d'", "'{:9}'", "'a\\n'", "'\\t'", "context.a",
                         "profile.id", "[]", "{}", "range(3)", "x", "loop.index"])


def _expression(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    unary = st.sampled_from([
        "{0}|center({1})", "{0}|format({1})", "{0}|indent({1})", "{0}|truncate({1})",
        "{0}|wordwrap({1})", "{0}|batch({1}, {0})|list", "{0}|slice({1})|list",
        "{0}.ljust({1})", "{0}.rjust({1})", "{0}.zfill({1})", "{0}.expandtabs({1})",
        "{0} * {1}", "{0} % {1}", "'%0' ~ {1} ~ 'd' % {0}", "{0}.format({1})",
        "range({1})", "range({1})|join({0})", "lipsum({1})", "{0}|list", "{0}|sort",
        "{0}|string", "{0}|length", "{0}|pprint", "[{0}] * {1}", "{{}}.fromkeys(range({1}), {0})",
        "({0}|string).replace('', {0}|string)", "{1} ** {1}",
    ])
    binary = st.sampled_from(["{0} ~ {1}", "{0} + {1}", "[{0}, {1}]", "({0}, {1})",
                              "{0}|join({1})", "{0} in {1}", "{{'k': {0}, 'v': {1}}}",
                              "{0} if {1} else {0}"])
    return st.one_of(
        st.builds(lambda f, e, n: f.format(e, n), unary, inner, NUMBERS),
        st.builds(lambda f, a, b: f.format(a, b), binary, inner, inner),
    )


EXPRESSIONS = st.recursive(ATOMS, _expression, max_leaves=6)


def _statements(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds("{{% for x in {0} %}}{1}{{% endfor %}}".format, EXPRESSIONS, inner),
        st.builds("{{% for x in range({0}) if x < 0 %}}{1}{{% endfor %}}".format, NUMBERS,
                  inner),
        st.builds("{{% if {0} %}}{1}{{% else %}}{1}{{% endif %}}".format, EXPRESSIONS, inner),
        st.builds("{{% set x = {0} %}}{1}".format, EXPRESSIONS, inner),
        st.builds("{{% macro m(n) %}}{0}{{{{ m(n - 1) if n > 0 else '' }}}}{{{{ m(n - 1) if n > 1 "
                  "else '' }}}}{{% endmacro %}}{{{{ m({1}) }}}}".format, inner, NUMBERS),
        st.builds("{{% for x in [1, 2] recursive %}}{0}{{{{ loop([1, 2]) if loop.depth < {1} "
                  "else '' }}}}{{% endfor %}}".format, inner, NUMBERS),
        st.builds(lambda a, b: a + b, inner, inner),
    )


TEMPLATES = st.recursive(
    st.one_of(st.builds("{{{{ {0} }}}}".format, EXPRESSIONS), st.just("text ")),
    _statements, max_leaves=5,
).map(lambda body: "{% set n = 3 %}{% set x = 'a' %}" + body)
