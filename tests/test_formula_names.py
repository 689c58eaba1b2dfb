"""A formula's subexpressions are named by the text ast.unparse writes for them (the keys of `intermediates`, the
graph's labels, the checks' names, canonical_text): built bottom-up from the children's names now, byte for byte the
same, in steps linear in the formula (one ast.unparse per subexpression was nodes x depth: a ninth audit)."""

from __future__ import annotations

import ast
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import python_steps
from service.engine.errors import LimitExceeded
from service.engine.formula import FUNCTIONS, canonical_text, parse_formula
from service.engine.limits import Limits

LIMITS = Limits()
NAMES = ("a", "b", "x", "pi", "e")
# ints and floats as they are written and as ast.unparse writes them back: 1e309 and a 400-digit int are infinity
# (the checker makes an int beyond any float inf), 1e22 is 1e+22, 1_000 is 1000, 0x1F is 31
CONSTANTS = ("0", "3", "0.5", "7.0", "0.1", "1e309", "1e308", "1e22", "2.5e-3", "1e-320", "1_000", "0x1F", "9" * 400)
ONE_ARGUMENT = tuple(name for name, spec in FUNCTIONS.items() if spec.arity == 1)
TWO_ARGUMENTS = tuple(name for name, spec in FUNCTIONS.items() if spec.arity == 2)
OPERATORS = ("+", "-", "*", "/", "**")


def assert_named_as_unparse(source: str) -> None:
    """Every node's name is ast.unparse's text of it; the formula's canonical_text too; evaluating records every
    subexpression under that name."""
    try:
        formula = parse_formula(source, LIMITS)
    except LimitExceeded:  # deeper than max_ast_depth: nothing to name
        return
    for node in ast.walk(formula.body):
        if isinstance(node, ast.expr):
            assert formula.text(node) == ast.unparse(node), (source, ast.dump(node))
    assert canonical_text(source, LIMITS) == ast.unparse(formula.body)
    record: dict[str, torch.Tensor] = {}
    inputs = {name: torch.tensor(0.25 + i, dtype=torch.float64) for i, name in enumerate(formula.variables)}
    with torch.no_grad():
        fresh = parse_formula(source, LIMITS)  # names built as the evaluator asks for them, not by the loop above
        fresh.evaluate(inputs, dtype=torch.float64, record=record)
    assert set(record) == {ast.unparse(node) for node in computed(fresh.body)}


def literal(node: ast.expr) -> bool:
    """A (signed) number: as an exponent it stays a Python float, never computed nor recorded."""
    while isinstance(node, ast.UnaryOp):
        node = node.operand
    return isinstance(node, ast.Constant)


def computed(body: ast.expr) -> list[ast.expr]:
    """The subexpressions evaluation computes and records: every operation but a literal exponent."""
    found, stack = [], [body]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.BinOp):
            found.append(node)
            stack += [node.left] if isinstance(node.op, ast.Pow) and literal(node.right) else [node.left, node.right]
        elif isinstance(node, ast.UnaryOp):
            found.append(node)
            stack.append(node.operand)
        elif isinstance(node, ast.Call):
            found.append(node)
            stack += node.args
    return found


def random_formula(rng: random.Random, depth: int) -> str:
    """A formula of the language, its subexpressions in parentheses at random (so every precedence and side of every
    operator meets every other), at most `depth` constructs deep."""
    roll = rng.random()
    if depth == 0 or roll < 0.2:
        return rng.choice(NAMES + CONSTANTS)
    if roll < 0.35:
        inner = random_formula(rng, depth - 1)
        return rng.choice("-+") + (f"({inner})" if rng.random() < 0.5 else inner)
    if roll < 0.5:
        if rng.random() < 0.8:
            return f"{rng.choice(ONE_ARGUMENT)}({random_formula(rng, depth - 1)})"
        return f"{rng.choice(TWO_ARGUMENTS)}({random_formula(rng, depth - 1)}, {random_formula(rng, depth - 1)})"
    sides = [random_formula(rng, depth - 1) for _ in range(2)]
    left, right = (f"({s})" if rng.random() < 0.4 else s for s in sides)
    return f"{left} {rng.choice(OPERATORS)} {right}"


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("-x**2", "-x ** 2"),  # ** binds tighter than unary minus
        ("(-x)**2", "(-x) ** 2"),
        ("2**-x", "2 ** (-x)"),  # ast.unparse's parentheses around a signed exponent
        ("-2**-x", "-2 ** (-x)"),
        ("a**b**x", "a ** b ** x"),  # right-associative
        ("(a**b)**x", "(a ** b) ** x"),
        ("a-(b-x)", "a - (b - x)"),
        ("(a-b)-x", "a - b - x"),
        ("x/(a*b)", "x / (a * b)"),
        ("x/a*b", "x / a * b"),
        ("a*-b", "a * -b"),
        ("-(a*b)", "-(a * b)"),
        ("--a", "--a"),
        ("+-+x", "+-+x"),
        ("(a+b)**-(x)", "(a + b) ** (-x)"),
        ("maximum(a+b,-x)", "maximum(a + b, -x)"),
        ("sin((x))", "sin(x)"),
        ("1e309*x", "1e309 * x"),
        ("9" * 400 + "+x", "1e309 + x"),
        ("-1e309", "-1e309"),
        ("0.5*3", "0.5 * 3"),
        ("1e22*x", "1e+22 * x"),
        ("1_000+0x1F", "1000 + 31"),
        ("  pi*e", "pi * e"),
    ],
)
def test_names_are_ast_unparse_text(source, name):
    formula = parse_formula(source, LIMITS)
    assert formula.text(formula.body) == name == ast.unparse(formula.body) == canonical_text(source, LIMITS)
    assert_named_as_unparse(source)


@pytest.mark.parametrize("seed", range(8))
def test_random_formulas_are_named_as_ast_unparse_names_them(seed):
    rng = random.Random(seed)
    for _ in range(250):
        assert_named_as_unparse(random_formula(rng, rng.randrange(1, 9)))


def formulas() -> st.SearchStrategy[str]:
    leaves = st.sampled_from(NAMES + CONSTANTS)

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        wrapped = st.one_of(inner, inner.map(lambda s: f"({s})"))
        return st.one_of(
            st.tuples(st.sampled_from("-+"), wrapped).map("".join),
            st.tuples(wrapped, st.sampled_from(OPERATORS), wrapped).map(" ".join),
            st.tuples(st.sampled_from(ONE_ARGUMENT), inner).map(lambda t: f"{t[0]}({t[1]})"),
            st.tuples(st.sampled_from(TWO_ARGUMENTS), inner, inner).map(lambda t: f"{t[0]}({t[1]}, {t[2]})"),
        )

    return st.recursive(leaves, extend, max_leaves=40)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(formulas())
def test_generated_formulas_are_named_as_ast_unparse_names_them(source):
    assert_named_as_unparse(source)


def same(n: int, leaf: str = "a") -> str:
    """A balanced product of n copies of one letter: few distinct subexpressions, many nodes."""
    return leaf if n == 1 else f"({same(n // 2, leaf)}*{same(n - n // 2, leaf)})"


def test_naming_every_subexpression_takes_steps_linear_in_the_formula():
    """The audit's formula, 40 unary minus around a 440-node product of one letter (917 characters, 479 nodes): each
    minus's name was an ast.unparse of its whole subtree, ~1,000,000 Python steps to evaluate it (55 ms), and 1000
    jobs of it held a worker to the 10 s deadline. Each name is built from its children's now: ~20 steps a node,
    and the 40 minuses add as many steps as 40 nodes do, not 40 subtrees'."""

    def steps(source: str) -> int:
        formula = parse_formula(source, LIMITS)
        with torch.no_grad():
            return python_steps(lambda: formula.evaluate({"a": torch.tensor(0.5)}, dtype=torch.float32, record={}))

    body = same(220)
    spine = parse_formula("-" * 40 + body, LIMITS)
    assert spine.node_count == 479 and spine.depth == 49
    assert steps("-" * 40 + body) < 40 * spine.node_count
    assert steps("-" * 40 + body) - steps(body) < 100 * 40
