"""The formula language: what it rejects (and how it says so), its limits, and what it computes."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from service.engine.errors import DeadlineExceeded, FormulaError, LimitExceeded, ShapeError, UnknownVariable
from service.engine.formula import CONSTANTS, FUNCTIONS, parse_formula
from service.engine.limits import Deadline, Limits

LIMITS = Limits()
F64 = torch.float64


def graph_ops(out: torch.Tensor) -> list[str]:
    """Names of every autograd node reachable from out, each node once (recursive walk with a seen set)."""
    seen: set[int] = set()
    names: list[str] = []

    def walk(fn) -> None:
        if fn is None or id(fn) in seen:
            return
        seen.add(id(fn))
        names.append(type(fn).__name__)
        for child, _ in fn.next_functions:
            walk(child)

    walk(out.grad_fn)
    return names


@pytest.mark.parametrize(
    ("source", "error", "words"),
    [
        ("__import__('os')", FormulaError, ["unknown function '__import__'", "allowed:", "sin"]),
        ("x.real", FormulaError, ["attribute access", "Attribute", "column 1"]),
        ("x[0]", FormulaError, ["subscript", "Subscript"]),
        ("x if x else 1", FormulaError, ["conditional expression", "IfExp"]),
        ("lambda: 1", FormulaError, ["lambda", "Lambda"]),
        ("[1,2]", FormulaError, ["list", "List"]),
        ("(1, 2)", FormulaError, ["tuple", "Tuple"]),
        ("{1: 2}", FormulaError, ["dict", "Dict"]),
        ("[x for x in y]", FormulaError, ["list comprehension", "ListComp"]),
        ("x and y", FormulaError, ["boolean operator", "BoolOp"]),
        ("(y := 2)", FormulaError, ["assignment expression", "NamedExpr"]),
        ("x // 2", FormulaError, ["unsupported operator: //", "FloorDiv"]),
        ("x % 2", FormulaError, ["unsupported operator: %", "Mod"]),
        ("x @ y", FormulaError, ["unsupported operator: @", "MatMult"]),
        ("x ^ 2", FormulaError, ["unsupported operator: ^", "BitXor"]),
        ("~x", FormulaError, ["unsupported operator: ~", "Invert"]),
        ("not x", FormulaError, ["unsupported operator: not", "Not"]),
        ("x < 1", FormulaError, ["comparison", "Compare"]),
        ('"a"', FormulaError, ["unsupported constant: 'a' (str)"]),
        ("b'a'", FormulaError, ["unsupported constant: b'a' (bytes)"]),
        ("True", FormulaError, ["unsupported constant: True (bool)"]),
        ("None", FormulaError, ["unsupported constant: None (NoneType)"]),
        ("...", FormulaError, ["unsupported constant: Ellipsis"]),
        ("1j", FormulaError, ["unsupported constant: 1j (complex)"]),
        ("f'{x}'", FormulaError, ["f-string", "JoinedStr"]),
        ("open('f')", FormulaError, ["unknown function 'open'", "allowed:"]),
        ("f(x)", FormulaError, ["unknown function 'f'"]),
        ("x(1)", FormulaError, ["unknown function 'x'"]),
        ("sin(x)(1)", FormulaError, ["call of a computed value", "Call"]),
        ("sin(x, y)", FormulaError, ["function 'sin' takes 1 argument, got 2"]),
        ("maximum(x)", FormulaError, ["function 'maximum' takes 2 arguments, got 1"]),
        ("sin()", FormulaError, ["function 'sin' takes 1 argument, got 0"]),
        ("sin(x=1)", FormulaError, ["function 'sin' takes no keyword arguments", "x="]),
        ("sin(**k)", FormulaError, ["keyword argument unpacking (**)"]),
        ("sin(*k)", FormulaError, ["argument unpacking (*)"]),
        ("x +", FormulaError, ["invalid syntax", "end of the formula"]),
        ("x + )", FormulaError, ["invalid syntax", "unmatched ')'", "column 5"]),
        ("sin(x", FormulaError, ["invalid syntax", "never closed"]),
        ("1 2", FormulaError, ["invalid syntax", "column 3"]),
        ("", FormulaError, ["empty"]),
        ("x = 1", FormulaError, ["invalid syntax"]),
        ("x\0", FormulaError, ["null bytes"]),
    ],
)
def test_rejected_formulas(source: str, error: type[Exception], words: list[str]) -> None:
    with pytest.raises(error) as info:
        parse_formula(source, LIMITS)
    assert type(info.value) is error
    for word in words:
        assert word in str(info.value)


def test_bad_construct_is_reported_even_where_never_evaluated() -> None:
    # The right operand is multiplied by zero, but the whole tree is validated at parse time.
    with pytest.raises(FormulaError, match="attribute access"):
        parse_formula("x + 0 * y.real", LIMITS)


def test_columns_account_for_leading_blanks() -> None:
    assert parse_formula("  x**2", LIMITS).variables == ("x",)
    with pytest.raises(FormulaError, match="column 4"):
        parse_formula("   x.real", LIMITS)


def test_over_long_formula_is_rejected_before_parsing() -> None:
    source = "x+" * 600 + "x"
    with pytest.raises(LimitExceeded) as info:
        parse_formula(source, LIMITS)
    assert info.value.limit == "max_formula_length"
    assert info.value.value == LIMITS.max_formula_length
    assert str(info.value) == f"formula is {len(source)} characters; the limit is {LIMITS.max_formula_length}"


@pytest.mark.parametrize(
    "source",
    [
        "+" * 200_000 + "x",  # the parser runs out of stack: MemoryError inside ast.parse
        "x" + "+x" * 100_000,  # RecursionError while building the ast
        "(" * 300 + "x" + ")" * 300,  # the tokenizer's "too many nested parentheses"
        "-" * 900 + "x",  # parses, but the tree is far deeper than the limit
    ],
)
def test_pathological_nesting_is_a_prompt_limit_error(source: str) -> None:
    roomy = Limits(max_formula_length=10**6, max_ast_nodes=10**6)
    with pytest.raises(LimitExceeded) as info:
        parse_formula(source, roomy)
    assert info.value.limit == "max_ast_depth"
    assert info.value.value == roomy.max_ast_depth


def test_pathological_nesting_with_default_limits() -> None:
    with pytest.raises(LimitExceeded) as info:
        parse_formula("+" * 200_000 + "x", LIMITS)
    assert info.value.limit == "max_formula_length"
    with pytest.raises(LimitExceeded) as info:
        parse_formula("(" * 300 + "x" + ")" * 300, LIMITS)
    assert info.value.limit == "max_ast_depth"


def test_depth_limit() -> None:
    limits = Limits(max_ast_depth=5)
    assert parse_formula("sin(sin(sin(sin(x))))", limits).depth == 5
    with pytest.raises(LimitExceeded) as info:
        parse_formula("sin(sin(sin(sin(sin(x)))))", limits)
    assert (info.value.limit, info.value.value) == ("max_ast_depth", 5)
    assert "5" in str(info.value)


def test_node_limit() -> None:
    limits = Limits(max_ast_nodes=11)
    assert parse_formula("x+x+x+x+x+x", limits).node_count == 11  # 5 additions + 6 names
    with pytest.raises(LimitExceeded) as info:
        parse_formula("x+x+x+x+x+x+x", limits)
    assert (info.value.limit, info.value.value) == ("max_ast_nodes", 11)
    assert "nodes" in str(info.value)


def test_node_count_skips_context_and_operator_objects() -> None:
    assert parse_formula("x", LIMITS).node_count == 1
    assert parse_formula("-x", LIMITS).node_count == 2
    assert parse_formula("sin(x) * 2", LIMITS).node_count == 4  # BinOp, Call, Name, Constant


def test_huge_power_tower_is_float_arithmetic_and_inf() -> None:
    """Every step is a float tensor (9**9**9 in Python ints would be 370 million digits): inf, not a hung worker."""
    formula = parse_formula("9**9**9**9", LIMITS)
    steps: dict[str, torch.Tensor] = {}
    value = formula.evaluate({}, dtype=torch.float32, record=steps)
    assert math.isinf(value.item())
    assert set(steps) == {"9 ** 9", "9 ** 9 ** 9", "9 ** 9 ** 9 ** 9"}
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in steps.values())
    assert steps["9 ** 9"].item() == pytest.approx(9.0**9, rel=1e-7) and math.isinf(steps["9 ** 9 ** 9"].item())


def test_huge_integer_literal_is_inf_not_an_error() -> None:
    assert math.isinf(parse_formula("9" * 400, LIMITS).evaluate({}, dtype=F64).item())


def test_unknown_variable_names_the_inputs() -> None:
    formula = parse_formula("x * z", LIMITS)
    with pytest.raises(UnknownVariable) as info:
        formula.evaluate({"x": torch.tensor(1.0), "y": torch.tensor(2.0)}, dtype=torch.float32)
    assert str(info.value) == "unknown variable 'z'; inputs are: x, y"


def test_shape_mismatch_names_operation_and_shapes() -> None:
    env = {"x": torch.ones(2), "y": torch.ones(3)}
    with pytest.raises(ShapeError, match=r"cannot apply \* to shapes \[2\] and \[3\]"):
        parse_formula("x * y", LIMITS).evaluate(env, dtype=torch.float32)
    with pytest.raises(ShapeError, match=r"cannot apply maximum to shapes \[2\] and \[3\]"):
        parse_formula("maximum(x, y)", LIMITS).evaluate(env, dtype=torch.float32)


def test_common_subexpressions_are_computed_once() -> None:
    x = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    out = parse_formula("sin(x**2) + x**2", LIMITS).evaluate({"x": x}, dtype=F64)
    ops = graph_ops(out)
    assert ops.count("PowBackward0") == 1
    assert ops.count("AccumulateGrad") == 1
    out.sum().backward()
    expected = torch.cos(x.detach() ** 2) * 2 * x.detach() + 2 * x.detach()
    torch.testing.assert_close(x.grad, expected)


def test_record_keeps_every_non_leaf_subexpression() -> None:
    record: dict[str, torch.Tensor] = {}
    x = torch.tensor(3.0, dtype=F64)
    out = parse_formula("sin(x**2) + x**2 * pi", LIMITS).evaluate({"x": x}, dtype=F64, record=record)
    assert set(record) == {"x ** 2", "sin(x ** 2)", "x ** 2 * pi", "sin(x ** 2) + x ** 2 * pi"}
    assert record["sin(x ** 2) + x ** 2 * pi"] is out
    torch.testing.assert_close(record["x ** 2"], torch.tensor(9.0, dtype=F64))


def test_variables_in_order_of_first_appearance_without_constants() -> None:
    formula = parse_formula("y * sin(x) + pi * maximum(z, y) - e + x", LIMITS)
    assert formula.variables == ("y", "x", "z")
    assert formula.source == "y * sin(x) + pi * maximum(z, y) - e + x"


def test_constants_and_shadowing() -> None:
    assert set(CONSTANTS) == {"pi", "e"}
    value = parse_formula("pi + e", LIMITS).evaluate({}, dtype=F64)
    assert value.item() == pytest.approx(math.pi + math.e)
    # An input with a constant's name wins over the constant.
    shadowed = parse_formula("e * 2", LIMITS)
    assert shadowed.variables == ()
    assert shadowed.evaluate({"e": torch.tensor(5.0, dtype=F64)}, dtype=F64).item() == 10.0


def test_constants_take_the_requested_dtype() -> None:
    assert parse_formula("1 / 3", LIMITS).evaluate({}, dtype=torch.float32).dtype == torch.float32
    assert parse_formula("1 / 3 + pi", LIMITS).evaluate({}, dtype=F64).dtype == F64
    assert parse_formula("numel(x)", LIMITS).evaluate({"x": torch.ones(4, dtype=F64)}, dtype=F64).item() == 4.0


def test_arithmetic_and_unary_operators() -> None:
    x = torch.tensor([1.5, -2.0], dtype=F64)
    y = torch.tensor([0.5, 4.0], dtype=F64)
    out = parse_formula("-(x + y) * +x / y - y ** 2 ** -1 + 2 ** x", LIMITS).evaluate({"x": x, "y": y}, dtype=F64)
    torch.testing.assert_close(out, -(x + y) * x / y - y**0.5 + 2**x)


def test_deadline_is_checked_between_nodes() -> None:
    expired = Deadline(0.0)
    time.sleep(0.001)
    with pytest.raises(DeadlineExceeded):
        parse_formula("x + 1", LIMITS).evaluate({"x": torch.tensor(1.0)}, dtype=torch.float32, deadline=expired)


_REFERENCE = {
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "asin": torch.asin,
    "acos": torch.acos,
    "atan": torch.atan,
    "sinh": torch.sinh,
    "cosh": torch.cosh,
    "tanh": torch.tanh,
    "exp": torch.exp,
    "expm1": torch.expm1,
    "log": torch.log,
    "log1p": torch.log1p,
    "log2": torch.log2,
    "log10": torch.log10,
    "sqrt": torch.sqrt,
    "abs": torch.abs,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "softplus": F.softplus,
    "square": torch.square,
    "sum": torch.sum,
    "mean": torch.mean,
    "numel": lambda t: torch.tensor(float(t.numel()), dtype=t.dtype),
    "maximum": torch.maximum,
    "minimum": torch.minimum,
}


def test_function_list_is_complete() -> None:
    assert set(FUNCTIONS) == set(_REFERENCE)
    for name, spec in FUNCTIONS.items():
        assert spec.name == name and spec.description and spec.arity in (1, 2)


@pytest.mark.parametrize("name", sorted(_REFERENCE))
def test_every_function_matches_torch(name: str) -> None:
    x = torch.tensor([0.1, 0.5, -0.7], dtype=F64)
    y = torch.tensor([0.3, -0.2, 0.9], dtype=F64)
    spec = FUNCTIONS[name]
    args = "x" if spec.arity == 1 else "x, y"
    out = parse_formula(f"{name}({args})", LIMITS).evaluate({"x": x, "y": y}, dtype=F64)
    expected = _REFERENCE[name](*([x] if spec.arity == 1 else [x, y]))
    torch.testing.assert_close(out, expected, equal_nan=True)


def test_numel_carries_no_gradient() -> None:
    x = torch.ones(3, dtype=F64, requires_grad=True)
    out = parse_formula("sum(x) / numel(x)", LIMITS).evaluate({"x": x}, dtype=F64)
    out.backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 1 / 3, dtype=F64))
