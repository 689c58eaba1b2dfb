"""A small, safe math language: parsed with `ast`, checked against a whitelist, evaluated with torch (never eval)."""

from __future__ import annotations

import ast
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import cost
from .errors import FormulaError, LimitExceeded, ShapeError, UnknownVariable
from .limits import Deadline, Limits


@dataclass(frozen=True)
class FunctionSpec:
    """One whitelisted function: how many positional arguments it takes and what torch runs for it."""

    name: str
    arity: int
    impl: Callable[..., torch.Tensor]
    description: str


def _numel(x: torch.Tensor) -> torch.Tensor:
    """Element count as a constant (no gradient flows through it), for hand-derived gradients like 2*x/numel(x)."""
    return torch.tensor(x.numel(), dtype=x.dtype, device=x.device)


_FUNCTION_TABLE: tuple[tuple[str, int, Callable[..., torch.Tensor], str], ...] = (
    ("sin", 1, torch.sin, "sine, elementwise"),
    ("cos", 1, torch.cos, "cosine, elementwise"),
    ("tan", 1, torch.tan, "tangent, elementwise"),
    ("asin", 1, torch.asin, "inverse sine, elementwise"),
    ("acos", 1, torch.acos, "inverse cosine, elementwise"),
    ("atan", 1, torch.atan, "inverse tangent, elementwise"),
    ("sinh", 1, torch.sinh, "hyperbolic sine, elementwise"),
    ("cosh", 1, torch.cosh, "hyperbolic cosine, elementwise"),
    ("tanh", 1, torch.tanh, "hyperbolic tangent, elementwise"),
    ("exp", 1, torch.exp, "e to the power x, elementwise"),
    ("expm1", 1, torch.expm1, "exp(x) - 1, accurate near 0, elementwise"),
    ("log", 1, torch.log, "natural logarithm, elementwise"),
    ("log1p", 1, torch.log1p, "log(1 + x), accurate near 0, elementwise"),
    ("log2", 1, torch.log2, "base-2 logarithm, elementwise"),
    ("log10", 1, torch.log10, "base-10 logarithm, elementwise"),
    ("sqrt", 1, torch.sqrt, "square root, elementwise"),
    ("abs", 1, torch.abs, "absolute value, elementwise"),
    ("sigmoid", 1, torch.sigmoid, "logistic function 1 / (1 + exp(-x)), elementwise"),
    ("relu", 1, torch.relu, "max(x, 0), elementwise"),
    ("softplus", 1, F.softplus, "log(1 + exp(x)), computed stably, elementwise"),
    ("square", 1, torch.square, "x * x, elementwise"),
    ("sum", 1, torch.sum, "sum of all elements (a scalar)"),
    ("mean", 1, torch.mean, "mean of all elements (a scalar)"),
    ("numel", 1, _numel, "number of elements, as a constant without gradient"),
    ("maximum", 2, torch.maximum, "larger of two values, elementwise with broadcasting"),
    ("minimum", 2, torch.minimum, "smaller of two values, elementwise with broadcasting"),
)

FUNCTIONS: dict[str, FunctionSpec] = {
    name: FunctionSpec(name, arity, impl, description) for name, arity, impl, description in _FUNCTION_TABLE
}

# What a formula may use to be evaluated at many points at once, the points stacked along a new leading dimension
# (Formula.stackable): elementwise ops whose every element comes out bit for bit as when evaluated point by point.
# torch computes these functions with one vectorized kernel whatever the tensor's size (ATen's vml.h maps it over
# every element, the tail too); sigmoid, sinh, cosh, softplus and pow to other exponents run a scalar kernel on a
# tensor's last few elements and a vectorized one on the rest, which differ in the last bit; sum, mean and numel
# reduce over every dimension, the stacked one too. Formulas with those are evaluated point by point.
STACKABLE_FUNCTIONS = frozenset(
    {"sin", "cos", "tan", "asin", "acos", "atan", "tanh", "exp", "expm1", "log", "log1p", "log2", "log10"}
    | {"sqrt", "abs", "relu", "square"}
)  # not maximum/minimum: of 0.0 and -0.0, torch's scalar kernel gives one zero and its vectorized kernel the other
# literal exponents torch's pow special-cases to exact arithmetic (x*x, x*x*x, sqrt, 1/x, ...) on every element
STACKABLE_POWERS = frozenset({0.0, 1.0, 2.0, 3.0, 0.5, -0.5, -1.0, -2.0})

# Looked up after the inputs: an input called `e` or `pi` shadows the constant.
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}

_BINARY_OPERATORS: dict[type[ast.operator], tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    ast.Add: ("+", torch.add),
    ast.Sub: ("-", torch.sub),
    ast.Mult: ("*", torch.mul),
    ast.Div: ("/", torch.true_divide),
    ast.Pow: ("**", torch.pow),
}

_UNARY_OPERATORS: dict[type[ast.unaryop], tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    ast.USub: ("-", torch.neg),
    ast.UAdd: ("+", torch.positive),
}

# Symbols for operators outside the language, so the error shows what the user typed.
_OPERATOR_SYMBOLS: dict[type[ast.AST], str] = {
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.Invert: "~",
    ast.Not: "not",
}

# Plain words for syntax outside the language.
_SYNTAX_NAMES: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscript (indexing)",
    ast.Slice: "slice",
    ast.IfExp: "conditional expression (if/else)",
    ast.Lambda: "lambda",
    ast.List: "list",
    ast.Tuple: "tuple",
    ast.Set: "set",
    ast.Dict: "dict",
    ast.ListComp: "list comprehension",
    ast.SetComp: "set comprehension",
    ast.DictComp: "dict comprehension",
    ast.GeneratorExp: "generator expression",
    ast.BoolOp: "boolean operator (and/or)",
    ast.Compare: "comparison",
    ast.Starred: "starred expression",
    ast.NamedExpr: "assignment expression (:=)",
    ast.JoinedStr: "f-string",
    ast.FormattedValue: "f-string",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
}


def _where(node: ast.AST, shift: int) -> str:
    """Position for messages: 1-based column, plus the line when the formula spans several."""
    line = getattr(node, "lineno", 1)
    column = getattr(node, "col_offset", 0) + 1 + (shift if line == 1 else 0)
    return f"column {column}" if line == 1 else f"line {line}, column {column}"


def _literal_number(node: ast.expr) -> float | None:
    """A plain numeric literal (optionally signed) as a float, so `x ** 2` uses a scalar exponent."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _to_float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _literal_number(node.operand)
        if inner is not None:
            return -inner if isinstance(node.op, ast.USub) else inner
    return None


def _to_float(value: int | float) -> float:
    """Convert a literal without ever doing big-int arithmetic; ints too large for a float become inf."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


class _Checker:
    """Walks the whole tree iteratively (no recursion), whitelisting nodes and counting size and depth."""

    def __init__(self, limits: Limits, shift: int) -> None:
        self.limits = limits
        self.shift = shift
        self.node_count = 0
        self.depth = 0
        self.variables: list[str] = []
        self.constants: set[str] = set()  # the CONSTANTS it names: an input of that name shadows one
        # Each handler validates one node and returns the child expressions to visit next.
        self.nodes: dict[type[ast.AST], Callable[[ast.AST], list[ast.expr]]] = {
            ast.Constant: self._constant,
            ast.Name: self._name,
            ast.BinOp: self._binop,
            ast.UnaryOp: self._unaryop,
            ast.Call: self._call,
        }

    def run(self, root: ast.expr) -> None:
        stack: list[tuple[ast.expr, int]] = [(root, 1)]
        while stack:
            node, depth = stack.pop()
            self.node_count += 1
            self.depth = max(self.depth, depth)
            cost.require(
                self.limits,
                "max_ast_depth",
                self.depth,
                f"formula is nested more than {self.limits.max_ast_depth} levels deep",
            )
            cost.require(
                self.limits,
                "max_ast_nodes",
                self.node_count,
                f"formula has more than {self.limits.max_ast_nodes} nodes",
            )
            handler = self.nodes.get(type(node))
            if handler is None:
                raise self._unsupported(node)
            children = handler(node)
            # Reversed so the stack pops them left to right: `variables` keeps source order.
            stack.extend((child, depth + 1) for child in reversed(children))

    def _unsupported(self, node: ast.AST) -> FormulaError:
        kind = type(node).__name__
        words = _SYNTAX_NAMES.get(type(node), "this construct")
        return FormulaError(f"unsupported syntax: {words} ({kind}) at {_where(node, self.shift)}")

    def _constant(self, node: ast.Constant) -> list[ast.expr]:
        # type() not isinstance(): bool is an int subclass and must be rejected.
        if type(node.value) not in (int, float):
            raise FormulaError(
                f"unsupported constant: {node.value!r} ({type(node.value).__name__}) at {_where(node, self.shift)}; "
                "only int and float numbers are allowed"
            )
        if type(node.value) is int and node.value.bit_length() > 1024:
            # beyond any float (a 3600-digit hex literal): inf, as evaluation would make it; and as an int its
            # text (for labels and memo keys) would pass Python's 4300-digit limit on int-to-str conversion
            node.value = math.inf
        return []

    def _name(self, node: ast.Name) -> list[ast.expr]:
        if node.id in CONSTANTS:
            self.constants.add(node.id)
        elif node.id not in self.variables:
            self.variables.append(node.id)
        return []

    def _binop(self, node: ast.BinOp) -> list[ast.expr]:
        if type(node.op) not in _BINARY_OPERATORS:
            raise self._bad_operator(node.op, node)
        return [node.left, node.right]

    def _unaryop(self, node: ast.UnaryOp) -> list[ast.expr]:
        if type(node.op) not in _UNARY_OPERATORS:
            raise self._bad_operator(node.op, node)
        return [node.operand]

    def _bad_operator(self, op: ast.AST, node: ast.AST) -> FormulaError:
        symbol = _OPERATOR_SYMBOLS.get(type(op), "?")
        return FormulaError(
            f"unsupported operator: {symbol} ({type(op).__name__}) at {_where(node, self.shift)}; "
            "allowed: + - * / ** and unary - +"
        )

    def _call(self, node: ast.Call) -> list[ast.expr]:
        where = _where(node, self.shift)
        if not isinstance(node.func, ast.Name):
            raise FormulaError(
                f"unsupported syntax: call of a computed value ({type(node.func).__name__}) at {where}; "
                "only named functions can be called, e.g. sin(x)"
            )
        name = node.func.id
        spec = FUNCTIONS.get(name)
        if spec is None:
            raise FormulaError(f"unknown function {name!r} at {where}; allowed: {', '.join(sorted(FUNCTIONS))}")
        for keyword in node.keywords:
            if keyword.arg is None:
                raise FormulaError(
                    f"unsupported syntax: keyword argument unpacking (**) in call of {name!r} at {where}"
                )
            raise FormulaError(f"function {name!r} takes no keyword arguments, got {keyword.arg}= at {where}")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise FormulaError(f"unsupported syntax: argument unpacking (*) in call of {name!r} at {where}")
        if len(node.args) != spec.arity:
            plural = "argument" if spec.arity == 1 else "arguments"
            raise FormulaError(f"function {name!r} takes {spec.arity} {plural}, got {len(node.args)} at {where}")
        return list(node.args)


def parse_formula(source: str, limits: Limits) -> Formula:
    """Parse and fully validate a formula up front, so a bad construct is reported even if never evaluated."""
    cost.require(limits, "max_formula_length", len(source), f"formula is {len(source)} characters")
    # Leading blanks would be an "unexpected indent"; drop them and shift reported columns back.
    text = source.lstrip(" \t")
    shift = len(source) - len(text)
    depth_error = LimitExceeded(
        "max_ast_depth",
        limits.max_ast_depth,
        f"formula is too deeply nested to parse; the limit is {limits.max_ast_depth} levels",
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarnings are irrelevant: the checker rejects those constructs
            tree = ast.parse(text, mode="eval")
    except (RecursionError, MemoryError):
        raise depth_error from None
    except SyntaxError as exc:
        if "too many nested" in (exc.msg or ""):
            raise depth_error from None
        if not text.strip():
            raise FormulaError("invalid syntax: the formula is empty") from None
        line = exc.lineno or 1
        if not exc.offset:
            where = "at the end of the formula"
        elif line == 1:
            where = f"at column {exc.offset + shift}"
        else:
            where = f"at line {line}, column {exc.offset}"
        what = "" if exc.msg == "invalid syntax" else f": {exc.msg}"
        raise FormulaError(f"invalid syntax{what} {where}") from None
    except ValueError as exc:  # e.g. null bytes on some Python versions
        raise FormulaError(f"invalid formula: {exc}") from None

    checker = _Checker(limits, shift)
    checker.run(tree.body)
    variables, constants = tuple(checker.variables), frozenset(checker.constants)
    return Formula(source, tree.body, variables, constants, checker.node_count, checker.depth, limits)


def canonical_text(source: str, limits: Limits) -> str | None:
    """The text a formula's subexpression is named by in `record` (Formula.text, as ast.unparse writes it), for any
    spelling of it that parses to the same expression ("x**2", "(x ** 2)": "x ** 2"); None when `source` is not a
    formula (or is too deep to name, past a MAX_AST_DEPTH raised beyond Python's recursion limit)."""
    try:
        formula = parse_formula(source, limits)
        return formula.text(formula.body)
    except (FormulaError, LimitExceeded, RecursionError):
        return None


# ast.unparse's precedences (Lib/ast.py, _Precedence) of what a formula holds, in their order: a child is written in
# parentheses when its parent requires more than the child's own (the parent's, one more on the side its operator
# does not associate to: `a - (b - c)`, `(a ** b) ** c`; a unary operator's operand FACTOR: `-x ** 2`, `-(a * b)`).
_ARITH, _TERM, _FACTOR, _POWER, _ATOM = 0, 1, 2, 3, 5  # 4, one past POWER: AWAIT, what a `**`'s left side requires
_BINARY_PRECEDENCE: dict[type[ast.operator], int] = {
    ast.Add: _ARITH,
    ast.Sub: _ARITH,
    ast.Mult: _TERM,
    ast.Div: _TERM,
    ast.Pow: _POWER,
}
# ast.unparse writes a float infinity (what an int literal beyond any float becomes, _Checker._constant) as the
# literal that overflows to it
_INFINITY_TEXT = "1e" + repr(sys.float_info.max_10_exp + 1)


def _precedence(node: ast.expr) -> int:
    if isinstance(node, ast.BinOp):
        return _BINARY_PRECEDENCE[type(node.op)]
    return _FACTOR if isinstance(node, ast.UnaryOp) else _ATOM


def _constant_text(value: int | float) -> str:
    """A number as ast.unparse writes it: its repr, an infinity as 1e309 (and a NaN as 1e309-1e309, never parsed)."""
    if type(value) is float:
        return repr(value).replace("inf", _INFINITY_TEXT).replace("nan", f"({_INFINITY_TEXT}-{_INFINITY_TEXT})")
    return repr(value)


class Formula:
    """A validated formula; evaluate() may be called many times with different inputs."""

    def __init__(
        self,
        source: str,
        body: ast.expr,
        variables: tuple[str, ...],
        constants: frozenset[str],
        node_count: int,
        depth: int,
        limits: Limits,
    ) -> None:
        self.source = source
        # Names that are not CONSTANTS, in order of first appearance. At evaluate time inputs are looked up
        # before constants, so an input named `e` or `pi` also works (it shadows the constant).
        self.variables = variables
        self.constants = constants  # the CONSTANTS names it reads: an input so named is read (cost.unused_inputs)
        self.node_count = node_count
        self.depth = depth
        self.body = body
        self._max_depth = limits.max_ast_depth
        self.max_elements = limits.max_tensor_elements
        self._keys: dict[int, int] = {}  # id(node) -> number of its subtree's structure
        self._structures: dict[tuple, int] = {}  # structure -> number; equal subtrees get the same one
        self._texts: dict[int, str] = {}  # key() -> text()

    def __repr__(self) -> str:
        return f"Formula({self.source!r})"

    @property
    def stackable(self) -> bool:
        """Whether evaluate(stacked=True) over points stacked along a new leading dimension gives, point for point,
        the same bits as evaluating at each point (STACKABLE_FUNCTIONS, STACKABLE_POWERS)."""
        stack = [self.body]
        while stack:
            node = stack.pop()
            if isinstance(node, ast.Call):
                if node.func.id not in STACKABLE_FUNCTIONS:
                    return False
                stack.extend(node.args)
            elif isinstance(node, ast.BinOp):
                if isinstance(node.op, ast.Pow) and _literal_number(node.right) not in STACKABLE_POWERS:
                    return False
                stack.extend((node.left, node.right))
            elif isinstance(node, ast.UnaryOp):
                stack.append(node.operand)
        return True

    def key(self, node: ast.expr) -> int:
        """A number for the node's subtree, equal for equal subtrees (so they are computed once), built from
        the children's numbers: linear in the formula's size, where ast.dump per node was quadratic."""
        cached = self._keys.get(id(node))
        if cached is None:
            if isinstance(node, ast.Constant):
                structure: tuple = ("constant", repr(node.value))
            elif isinstance(node, ast.Name):
                structure = ("name", node.id)
            elif isinstance(node, ast.BinOp):
                structure = ("binary", type(node.op).__name__, self.key(node.left), self.key(node.right))
            elif isinstance(node, ast.UnaryOp):
                structure = ("unary", type(node.op).__name__, self.key(node.operand))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                structure = ("call", node.func.id, *(self.key(arg) for arg in node.args))
            else:  # nothing else passes the checker; never shared
                structure = ("other", id(node))
            cached = self._keys[id(node)] = self._structures.setdefault(structure, len(self._structures))
        return cached

    def text(self, node: ast.expr) -> str:
        """The node's text as ast.unparse writes it, the name of its intermediate in `record` (and of its graph node,
        its check): built from its children's texts, once per distinct subexpression (key()). ast.unparse per node
        walked each node's whole subtree again, nodes x depth: 55 ms for a 900-character formula (an audit)."""
        key = self.key(node)
        cached = self._texts.get(key)
        if cached is None:
            cached = self._texts[key] = self._unparse(node)
        return cached

    def _unparse(self, node: ast.expr) -> str:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Constant):
            return _constant_text(node.value)
        if isinstance(node, ast.BinOp):
            own = _BINARY_PRECEDENCE[type(node.op)]
            left, right = (own + 1, own) if isinstance(node.op, ast.Pow) else (own, own + 1)  # ** is right-associative
            symbol = _BINARY_OPERATORS[type(node.op)][0]
            return f"{self._operand(node.left, left)} {symbol} {self._operand(node.right, right)}"
        if isinstance(node, ast.UnaryOp):
            return _UNARY_OPERATORS[type(node.op)][0] + self._operand(node.operand, _FACTOR)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return f"{node.func.id}({', '.join(self.text(arg) for arg in node.args)})"
        return ast.unparse(node)  # nothing else passes the checker

    def _operand(self, node: ast.expr, required: int) -> str:
        """A child's text where its parent requires `required`: in parentheses when its own precedence is lower."""
        text = self.text(node)
        return f"({text})" if _precedence(node) < required else text

    def evaluate(
        self,
        env: dict[str, torch.Tensor],
        *,
        dtype: torch.dtype,
        record: dict[str, torch.Tensor] | None = None,
        deadline: Deadline | None = None,
        stacked: bool = False,
    ) -> torch.Tensor:
        """Compute the formula with torch so autograd records it; equal subexpressions are computed once.
        `stacked`: every input holds many points along its first dimension (a stackable formula), and
        max_tensor_elements holds for each point's elements."""
        for name in self.variables:
            if name not in env:
                inputs = ", ".join(env) or "(none)"
                raise UnknownVariable(f"unknown variable {name!r}; inputs are: {inputs}")
        try:
            return _Evaluator(self, env, dtype, record, deadline, stacked).eval(self.body)
        except RecursionError:
            raise LimitExceeded(
                "max_ast_depth",
                self._max_depth,
                f"formula is too deeply nested to evaluate; the limit is {self._max_depth} levels",
            ) from None


def broadcast_shape(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """torch's broadcasting rule, without torch.broadcast_shapes: that imports sympy on its first call
    (~1.5 s and ~60 MiB per worker).  Shapes that do not broadcast are left for torch to report."""
    out: list[int] = []
    ndim = max(map(len, shapes), default=0)
    for dims in zip(*(((1,) * (ndim - len(s)) + tuple(s)) for s in shapes), strict=True):  # all padded to ndim
        sizes = {d for d in dims if d != 1}
        out.append(max(sizes) if sizes else 1)
    return tuple(out)


class _Evaluator:
    """One evaluation: a simpleeval-style dispatch table over the node types the checker allowed."""

    def __init__(
        self,
        formula: Formula,
        env: dict[str, torch.Tensor],
        dtype: torch.dtype,
        record: dict[str, torch.Tensor] | None,
        deadline: Deadline | None,
        stacked: bool = False,
    ) -> None:
        self.formula = formula
        self.stacked = stacked
        self.env = env
        self.dtype = dtype
        self.record = record
        self.deadline = deadline
        self.memo: dict[int, torch.Tensor] = {}

    def eval(self, node: ast.expr) -> torch.Tensor:
        if self.deadline is not None:
            self.deadline.check()
        key = self.formula.key(node)
        value = self.memo.get(key)
        if value is None:
            handler = self.HANDLERS.get(type(node))
            if handler is None:  # unreachable after the checker; kept so nothing unlisted ever runs
                raise FormulaError(f"unsupported syntax: {type(node).__name__}")
            value = self.memo[key] = handler(self, node)
            if self.record is not None and not isinstance(node, (ast.Name, ast.Constant)):
                self.record[self.formula.text(node)] = value
        return value

    def _constant(self, node: ast.Constant) -> torch.Tensor:
        # A tensor before any arithmetic: 9**9**9**9 overflows to inf instead of growing a Python big int.
        return torch.tensor(_to_float(node.value), dtype=self.dtype)

    def _name(self, node: ast.Name) -> torch.Tensor:
        if node.id in self.env:
            return self.env[node.id]
        if node.id in CONSTANTS:
            return torch.tensor(CONSTANTS[node.id], dtype=self.dtype)
        inputs = ", ".join(self.env) or "(none)"
        raise UnknownVariable(f"unknown variable {node.id!r}; inputs are: {inputs}")

    def _binop(self, node: ast.BinOp) -> torch.Tensor:
        symbol, op = _BINARY_OPERATORS[type(node.op)]
        left = self.eval(node.left)
        exponent = _literal_number(node.right) if isinstance(node.op, ast.Pow) else None
        if exponent is not None:
            # A literal exponent stays a Python float: torch.pow(x, 2.0) is PowBackward0, as x ** 2 in PyTorch.
            return self._apply(symbol, lambda: torch.pow(left, exponent), left)
        right = self.eval(node.right)
        return self._apply(symbol, lambda: op(left, right), left, right)

    def _unaryop(self, node: ast.UnaryOp) -> torch.Tensor:
        symbol, op = _UNARY_OPERATORS[type(node.op)]
        operand = self.eval(node.operand)
        return self._apply(f"unary {symbol}", lambda: op(operand), operand)

    def _call(self, node: ast.Call) -> torch.Tensor:
        spec = FUNCTIONS[node.func.id]
        args = [self.eval(arg) for arg in node.args]
        return self._apply(spec.name, lambda: spec.impl(*args), *args)

    # node type -> plain function, not a per-instance table of bound methods: that table would make each
    # evaluation a reference cycle (evaluator -> table -> method -> evaluator) holding every memoized
    # tensor until a full GC; without it the tensors go as soon as the request drops its results.
    HANDLERS: dict[type[ast.AST], Callable[[_Evaluator, ast.AST], torch.Tensor]] = {
        ast.Constant: _constant,
        ast.Name: _name,
        ast.BinOp: _binop,
        ast.UnaryOp: _unaryop,
        ast.Call: _call,
    }

    def _apply(self, name: str, compute: Callable[[], torch.Tensor], *operands: torch.Tensor) -> torch.Tensor:
        """Run one torch op; its RuntimeError (almost always a broadcasting failure) becomes a ShapeError."""
        try:
            if len(operands) > 1:  # broadcasting [n] with [n, 1] makes n*n elements: refuse before allocating
                shape = broadcast_shape(*(t.shape for t in operands))[self.stacked :]
                size = cost.slots(shape)  # an empty dimension counts as 1: its JSON writes every row
                if size > self.formula.max_elements:
                    raise LimitExceeded(
                        "max_tensor_elements",
                        self.formula.max_elements,
                        f"{name} would broadcast to {cost.size_text(shape, size)}; "
                        f"the limit is {self.formula.max_elements}",
                    )
            return compute()
        except RuntimeError as exc:
            if isinstance(exc, RecursionError):
                raise
            shapes = " and ".join(str(list(t.shape)) for t in operands)
            noun = "shapes" if len(operands) > 1 else "shape"
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ShapeError(f"cannot apply {name} to {noun} {shapes} ({reason})") from None
