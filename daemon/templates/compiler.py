"""The compile side of the template bounds: the parsed template instrumented so that its
loops, macros and literals spend from the render's budget (daemon.templates.limits), a code
generator that routes `~` and `in` through it, and an introspection that folds nothing.
"""

from __future__ import annotations

from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, operators
from jinja2.meta import TrackingCodeGenerator
from jinja2.visitor import NodeTransformer

from daemon.templates.limits import BUDGET_EACH, BUDGET_STEP, BUDGET_VALUE


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
    charge = _filter(nodes.Const(0, lineno=lineno), BUDGET_STEP, steps, chars, lineno=lineno)
    return [nodes.ExprStmt(charge, lineno=lineno), *body]


class _Instrument(NodeTransformer):
    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        if node.recursive:  # `loop(children)` iterates without `iter`: the body pays
            node.iter = _filter(node.iter, BUDGET_EACH, lineno=node.lineno)
            node.body = _prologue(node.body, node.lineno)
        else:  # each element pays for the body it runs (filtered out or not)
            node.iter = _filter(node.iter, BUDGET_EACH, *_cost(node.body), lineno=node.lineno)
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
        return _filter(node, BUDGET_VALUE, lineno=node.lineno)

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
