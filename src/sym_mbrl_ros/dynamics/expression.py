"""The expression grammar of the world model: parse, print, and compile to numpy, torch and sympy.

An expression is plain math over declared names::

    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/') unary)*
    unary  := ('-' | '+') unary | power
    power  := atom ('**' unary)?
    atom   := NUMBER | NAME | FUNC '(' expr ')' | '(' expr ')'
    FUNC   := sin | cos | tan | exp | log | sqrt | abs | tanh

Names must be among the declared state and action names; numbers are decimal literals such as
``3``, ``0.05`` or ``1e-3``. Everything else (attribute access, subscripts, strings, lambdas,
calls of other functions, unknown names) is rejected with :class:`ExpressionError`. Text is never
handed to ``eval`` or ``sympify``: the parser builds a small tree, and the tree is compiled.

Compilation (:class:`CompiledExpression`) flattens the tree into a post-order program of
vectorised array operations. The same program runs on numpy arrays and torch tensors, and
gives the Jacobian with respect to the expression's constants in one reverse pass, which the
BFGS refinement uses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

FUNCTIONS = ("sin", "cos", "tan", "exp", "log", "sqrt", "abs", "tanh")
BINARY_OPS = ("+", "-", "*", "/", "**")
MAX_EXPRESSION_CHARS = 200_000
MAX_NESTING = 100  # parentheses, function calls and unary minus, nested
MAX_DEPTH = 600  # depth of the tree (a sum of k terms is k levels deep)


class ExpressionError(UserError):
    """An expression is outside the grammar or uses an undeclared name."""


# --- the tree --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    """A numeric constant."""

    value: float


@dataclass(frozen=True)
class Name:
    """A declared state or action coordinate."""

    name: str


@dataclass(frozen=True)
class Neg:
    """Unary minus."""

    arg: Node


@dataclass(frozen=True)
class BinOp:
    """A binary operation, one of ``+ - * / **``."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Call:
    """One of the whitelisted functions applied to an expression."""

    func: str
    arg: Node


Node = Num | Name | Neg | BinOp | Call


def is_identifier(name: str) -> bool:
    """True when ``name`` can be used as a coordinate name in an expression."""
    return bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)) and name not in FUNCTIONS


# --- parsing ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>\*\*|[-+*/()]))"
)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            # Kept as a token so that the parser reports the first problem in reading order
            # ("unknown function '__import__'" rather than "unexpected character").
            start = pos + len(text[pos:]) - len(text[pos:].lstrip())
            tokens.append(("bad", text[start], start))
            break
        kind = m.lastgroup or "bad"
        tokens.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    tokens.append(("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str, names: frozenset[str]):
        self.text = text
        self.names = names
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0

    def fail(self, message: str):
        raise ExpressionError(f"cannot read expression {_clip(self.text)!r}: {message}")

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, str, int]:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        kind, val, pos = self.take()
        if val != value or kind == "bad":
            self.fail(f"expected {value!r} at position {pos}, found {_describe(kind, val)}")

    def parse(self) -> Node:
        node = self.expr()
        kind, val, pos = self.peek()
        if kind != "end":
            self.fail(f"unexpected {_describe(kind, val)} at position {pos}")
        return node

    def expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_NESTING:
            self.fail(f"nesting deeper than {MAX_NESTING} levels")
        node = self.term()
        while self.peek()[1] in ("+", "-") and self.peek()[0] == "op":
            op = self.take()[1]
            node = BinOp(op, node, self.term())
        self.depth -= 1
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek()[1] in ("*", "/") and self.peek()[0] == "op":
            op = self.take()[1]
            node = BinOp(op, node, self.unary())
        return node

    def unary(self) -> Node:
        kind, val, _ = self.peek()
        if kind == "op" and val in ("-", "+"):
            self.take()
            self.depth += 1
            if self.depth > MAX_NESTING:
                self.fail(f"nesting deeper than {MAX_NESTING} levels")
            arg = self.unary()
            self.depth -= 1
            if val == "+":
                return arg
            return Num(-arg.value) if isinstance(arg, Num) else Neg(arg)
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        if self.peek() == ("op", "**", self.peek()[2]):
            self.take()
            self.depth += 1
            if self.depth > MAX_NESTING:
                self.fail(f"nesting deeper than {MAX_NESTING} levels")
            exponent = self.unary()
            self.depth -= 1
            return BinOp("**", base, exponent)
        return base

    def atom(self) -> Node:
        kind, val, pos = self.take()
        if kind == "num":
            value = float(val)
            if not math.isfinite(value):
                self.fail(f"number {val} at position {pos} is out of range")
            return Num(value)
        if kind == "name":
            if self.peek()[1] == "(" and self.peek()[0] == "op":
                if val not in FUNCTIONS:
                    self.fail(
                        f"unknown function {val!r} at position {pos}; "
                        f"allowed functions are {', '.join(FUNCTIONS)}"
                    )
                self.take()
                arg = self.expr()
                self.expect(")")
                return Call(val, arg)
            if val in FUNCTIONS:
                self.fail(f"function {val!r} at position {pos} must be called, as in {val}(x)")
            if val not in self.names:
                allowed = ", ".join(sorted(self.names)) or "none"
                self.fail(f"unknown name {val!r} at position {pos} (declared names: {allowed})")
            return Name(val)
        if kind == "op" and val == "(":
            node = self.expr()
            self.expect(")")
            return node
        self.fail(f"unexpected {_describe(kind, val)} at position {pos}")
        raise AssertionError  # unreachable


def _describe(kind: str, val: str) -> str:
    if kind == "end":
        return "end of expression"
    if kind == "bad":
        return f"character {val!r} (not part of the expression grammar)"
    return repr(val)


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def parse_expression(text: str, names: Iterable[str]) -> Node:
    """Parse ``text`` into an expression tree, allowing only the given coordinate ``names``.

    Raises :class:`ExpressionError` for anything outside the grammar (see the module docstring).
    """
    if not isinstance(text, str):
        raise ExpressionError(f"an expression must be a string, not {type(text).__name__}")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    if text.strip() == "":
        raise ExpressionError("expression is empty")
    tree = _Parser(text, frozenset(names)).parse()
    if tree_depth(tree) > MAX_DEPTH:
        raise ExpressionError(
            f"cannot read expression {_clip(text)!r}: it is more than {MAX_DEPTH} levels deep"
        )
    return tree


def tree_depth(node: Node) -> int:
    """Depth of a tree, computed without recursion (so any parsed tree can be measured)."""
    deepest = 0
    stack = [(node, 1)]
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(n, (Neg, Call)):
            stack.append((n.arg, d + 1))
        elif isinstance(n, BinOp):
            stack.append((n.left, d + 1))
            stack.append((n.right, d + 1))
    return deepest


# --- tree utilities --------------------------------------------------------------------------


def node_count(node: Node) -> int:
    """Number of nodes in the tree: the complexity measure used to rank candidates."""
    if isinstance(node, (Num, Name)):
        return 1
    if isinstance(node, (Neg, Call)):
        return 1 + node_count(node.arg)
    return 1 + node_count(node.left) + node_count(node.right)


def names_in(node: Node) -> set[str]:
    """The coordinate names an expression uses."""
    if isinstance(node, Name):
        return {node.name}
    if isinstance(node, Num):
        return set()
    if isinstance(node, (Neg, Call)):
        return names_in(node.arg)
    return names_in(node.left) | names_in(node.right)


def sum_terms(node: Node) -> list[tuple[int, Node]]:
    """Flatten a chain of ``+``/``-`` (and unary minus) into signed terms ``[(+1|-1, term)]``."""
    if isinstance(node, BinOp) and node.op in ("+", "-"):
        right = sum_terms(node.right)
        if node.op == "-":
            right = [(-s, t) for s, t in right]
        return sum_terms(node.left) + right
    if isinstance(node, Neg):
        return [(-s, t) for s, t in sum_terms(node.arg)]
    return [(1, node)]


def build_sum(terms: Sequence[tuple[int, Node]]) -> Node:
    """Inverse of :func:`sum_terms`: a left-associated chain ``t0 + t1 - t2 ...``."""
    if not terms:
        return Num(0.0)
    sign, node = terms[0]
    if sign < 0:
        node = Num(-node.value) if isinstance(node, Num) else Neg(node)
    for sign, term in terms[1:]:
        node = BinOp("+" if sign > 0 else "-", node, term)
    return node


def next_value_tree(name: str, increment: Node) -> Node:
    """The expression for the next value of ``name``: ``name + increment``, sum flattened."""
    if isinstance(increment, Num) and increment.value == 0.0:
        return Name(name)
    return build_sum([(1, Name(name))] + sum_terms(increment))


def increment_tree(name: str, next_value: Node) -> Node:
    """Inverse of :func:`next_value_tree`: the increment ``next - name`` of an expression."""
    terms = sum_terms(next_value)
    for k, (sign, term) in enumerate(terms):
        if sign > 0 and term == Name(name):
            rest = terms[:k] + terms[k + 1 :]
            return build_sum(rest) if rest else Num(0.0)
    return BinOp("-", next_value, Name(name))


def simplify(node: Node) -> Node:
    """Fold constants and drop neutral ones: ``1*x``, ``-1*x``, ``0*x``, ``x + 0``, ``cos(2)``."""
    if isinstance(node, (Num, Name)):
        return node
    if isinstance(node, Neg):
        arg = simplify(node.arg)
        if isinstance(arg, Num):
            return Num(-arg.value)
        return arg.arg if isinstance(arg, Neg) else Neg(arg)
    if isinstance(node, Call):
        arg = simplify(node.arg)
        if isinstance(arg, Num):
            with np.errstate(all="ignore"):
                value = _NUMPY_FUNCS[node.func](np.float64(arg.value))
            if np.isfinite(value):
                return Num(float(value))
        return Call(node.func, arg)
    left, right = simplify(node.left), simplify(node.right)
    op = node.op
    if isinstance(left, Num) and isinstance(right, Num):
        with np.errstate(all="ignore"):
            a, b = np.float64(left.value), np.float64(right.value)
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b, "**": a**b}[op]
        if np.isfinite(value):
            return Num(float(value))
    if op == "*":
        for c, other in ((left, right), (right, left)):
            if isinstance(c, Num):
                if c.value == 1.0:
                    return other
                if c.value == -1.0:
                    return simplify(Neg(other))
                if c.value == 0.0:
                    return Num(0.0)
    if op == "/" and left == Num(0.0):
        return Num(0.0)
    if op == "/" and right == Num(1.0):
        return left
    if op in ("+", "-") and right == Num(0.0):
        return left
    if op == "+" and left == Num(0.0):
        return right
    if op == "-" and left == Num(0.0):
        return simplify(Neg(right))
    if op == "**" and right == Num(1.0):
        return left
    return BinOp(op, left, right)


def split_coefficient(node: Node) -> tuple[float, list[Node]]:
    """A product as (constant factor, the other factors in order): ``-2*x*3`` is (-6, [x])."""
    if isinstance(node, Num):
        return float(node.value), []
    if isinstance(node, Neg):
        c, f = split_coefficient(node.arg)
        return -c, f
    if isinstance(node, BinOp) and node.op == "*":
        c1, f1 = split_coefficient(node.left)
        c2, f2 = split_coefficient(node.right)
        return c1 * c2, f1 + f2
    if isinstance(node, BinOp) and node.op == "/" and isinstance(node.right, Num):
        if node.right.value != 0.0:
            c, f = split_coefficient(node.left)
            return c / node.right.value, f
    return 1.0, [node]


def fold_like_terms(node: Node) -> Node:
    """Add up the terms of a sum that differ only in their constant: ``2*x + 3*x`` is ``5*x``.

    Factors are compared up to order (``x*sin(q)`` and ``sin(q)*x`` are alike); a sum with no
    like terms comes back unchanged.
    """
    groups: dict[str, list] = {}
    terms = sum_terms(node)
    for sign, term in terms:
        coef, factors = split_coefficient(term)
        key = " * ".join(sorted(to_string(f) for f in factors))
        if key in groups:
            groups[key][0] += sign * coef
        else:
            groups[key] = [sign * coef, factors]
    if len(groups) == len(terms):
        return node
    out: list[tuple[int, Node]] = []
    for coef, factors in groups.values():
        if coef == 0.0:
            continue
        if not factors:
            out.append((1, Num(coef)))
            continue
        if coef in (1.0, -1.0):
            chain = factors
        else:
            chain = [Num(coef)] + factors
        prod = chain[0]
        for f in chain[1:]:
            prod = BinOp("*", prod, f)
        out.append((-1 if coef == -1.0 else 1, prod))
    return build_sum(out) if out else Num(0.0)


def count_terms(node: Node) -> int:
    """Number of additive terms of an expression, constants included (``0`` has none)."""
    if node == Num(0.0):
        return 0
    return len(sum_terms(node))


def replace_constants(node: Node, values: Iterable[float]) -> Node:
    """A copy of the tree with its parameters (see :class:`CompiledExpression`) replaced."""
    it = iter(values)

    def walk(n: Node, in_exponent: bool) -> Node:
        if isinstance(n, Num):
            return n if in_exponent else Num(float(next(it)))
        if isinstance(n, Name):
            return n
        if isinstance(n, Neg):
            return Neg(walk(n.arg, False))
        if isinstance(n, Call):
            return Call(n.func, walk(n.arg, False))
        left = walk(n.left, False)
        right = walk(n.right, n.op == "**" and isinstance(n.right, Num))
        return BinOp(n.op, left, right)

    return walk(node, False)


# --- printing --------------------------------------------------------------------------------

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "neg": 3, "**": 4, "atom": 5}


def format_number(value: float, precision: int | None = None) -> str:
    """Full precision (shortest round-trip repr) by default; ``precision`` significant digits."""
    value = float(value)
    if precision is None:
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    text = f"{value:.{precision}g}"
    return text


def _negative_part(node: Node) -> Node | None:
    """The node without its leading minus, if it prints with one (``a + -b`` prints ``a - b``)."""
    if isinstance(node, Num) and node.value < 0:
        return Num(-node.value)
    if isinstance(node, Neg):
        return node.arg
    if isinstance(node, BinOp) and node.op in ("*", "/"):
        inner = _negative_part(node.left)
        if inner is not None:
            return BinOp(node.op, inner, node.right)
    return None


def to_string(node: Node, precision: int | None = None) -> str:
    """Print a tree in the grammar; with ``precision=None`` it parses back to the same values."""
    return _fmt(node, precision)[0]


def _fmt(node: Node, p: int | None) -> tuple[str, int]:
    if isinstance(node, Num):
        text = format_number(node.value, p)
        return (text, _PREC["neg"]) if text.startswith("-") else (text, _PREC["atom"])
    if isinstance(node, Name):
        return node.name, _PREC["atom"]
    if isinstance(node, Call):
        return f"{node.func}({_fmt(node.arg, p)[0]})", _PREC["atom"]
    if isinstance(node, Neg):
        text, prec = _fmt(node.arg, p)
        if prec <= _PREC["+"]:
            text = f"({text})"
        return f"-{text}", _PREC["neg"]
    op = node.op
    left, lp = _fmt(node.left, p)
    if op in ("+", "-"):
        negated = _negative_part(node.right)
        if negated is not None:
            op = "-" if op == "+" else "+"
            right, rp = _fmt(negated, p)
        else:
            right, rp = _fmt(node.right, p)
        if rp <= _PREC["+"]:  # keep the tree: a - (b + c) and a + (b + c) round-trip exactly
            right = f"({right})"
        return f"{left} {op} {right}", _PREC["+"]
    right, rp = _fmt(node.right, p)
    if op in ("*", "/"):
        if lp < _PREC["*"]:
            left = f"({left})"
        if rp <= _PREC["neg"]:
            right = f"({right})"
        return f"{left}{op}{right}", _PREC["*"]
    # '**' is right-associative: a**b**c is a**(b**c)
    if lp <= _PREC["**"]:
        left = f"({left})"
    if rp < _PREC["**"]:
        right = f"({right})"
    return f"{left}**{right}", _PREC["**"]


# --- sympy -----------------------------------------------------------------------------------


def to_sympy(node: Node, precision: int | None = None):
    """The expression as a sympy object (constants rounded to ``precision`` digits if given)."""
    import sympy

    funcs = {
        "sin": sympy.sin,
        "cos": sympy.cos,
        "tan": sympy.tan,
        "exp": sympy.exp,
        "log": sympy.log,
        "sqrt": sympy.sqrt,
        "abs": sympy.Abs,
        "tanh": sympy.tanh,
    }

    def number(v: float):
        if float(v).is_integer() and abs(v) < 1e15:
            return sympy.Integer(int(v))
        if precision is not None:
            return sympy.Float(float(f"{v:.{precision}g}"), precision)
        return sympy.Float(v)

    def walk(n: Node):
        if isinstance(n, Num):
            return number(n.value)
        if isinstance(n, Name):
            return sympy.Symbol(n.name, real=True)
        if isinstance(n, Neg):
            return -walk(n.arg)
        if isinstance(n, Call):
            return funcs[n.func](walk(n.arg))
        a, b = walk(n.left), walk(n.right)
        if n.op == "+":
            return a + b
        if n.op == "-":
            return a - b
        if n.op == "*":
            return a * b
        if n.op == "/":
            return a / b
        return a**b

    return walk(node)


# --- compilation -----------------------------------------------------------------------------

# instruction kinds
_CONST, _VAR, _NEG, _ADD, _SUB, _MUL, _DIV, _POW, _CALL = range(9)
_BIN_KIND = {"+": _ADD, "-": _SUB, "*": _MUL, "/": _DIV, "**": _POW}


class CompiledExpression:
    """An expression compiled against an ordered list of input names.

    Inputs are 2-D arrays ``X`` of shape ``(B, len(variables))``; outputs have shape ``(B,)``.
    The *parameters* are the expression's constants, in tree order, except numeric-literal
    exponents (``x**2`` stays a square); :attr:`params` holds their current values.
    """

    def __init__(self, tree: Node, variables: Sequence[str]):
        self.tree = tree
        self.variables = tuple(variables)
        index = {name: k for k, name in enumerate(self.variables)}
        missing = names_in(tree) - set(index)
        if missing:
            raise ExpressionError(f"expression uses undeclared names: {', '.join(sorted(missing))}")
        # post-order program: (kind, a, b, payload); a, b index earlier instructions. A
        # parameter-free subexpression that occurs twice (sin(theta) in three terms) is one
        # instruction
        self.program: list[tuple[int, int, int, object]] = []
        self.has_param: list[bool] = []
        self.param_slots: list[int] = []  # instruction index of each parameter
        params: list[float] = []

        shared: dict[tuple, int] = {}  # parameter-free instructions, each computed once

        def emit(kind: int, a: int, b: int, payload: object, has_param: bool) -> int:
            if not has_param:
                key = (kind, a, b, payload)
                if key in shared:
                    return shared[key]
                shared[key] = len(self.program)
            self.program.append((kind, a, b, payload))
            self.has_param.append(has_param)
            return len(self.program) - 1

        def walk(n: Node, fixed: bool) -> int:
            if isinstance(n, Num):
                k = emit(_CONST, -1, -1, float(n.value), not fixed)
                if not fixed:
                    self.param_slots.append(k)
                    params.append(float(n.value))
                return k
            if isinstance(n, Name):
                return emit(_VAR, -1, -1, index[n.name], False)
            if isinstance(n, Neg):
                a = walk(n.arg, False)
                return emit(_NEG, a, -1, None, self.has_param[a])
            if isinstance(n, Call):
                a = walk(n.arg, False)
                return emit(_CALL, a, -1, n.func, self.has_param[a])
            a = walk(n.left, False)
            b = walk(n.right, n.op == "**" and isinstance(n.right, Num))
            return emit(_BIN_KIND[n.op], a, b, None, self.has_param[a] or self.has_param[b])

        walk(tree, False)
        self.params = np.asarray(params, dtype=np.float64)
        self.complexity = node_count(tree)

    @property
    def n_params(self) -> int:
        return len(self.param_slots)

    def with_params(self, params: Sequence[float]) -> Node:
        """The tree with its parameters replaced by ``params``."""
        return replace_constants(self.tree, params)

    # numpy ------------------------------------------------------------------------------------

    def _forward_numpy(self, X: np.ndarray, params: np.ndarray | None) -> list:
        values: list = [None] * len(self.program)
        slot_value = {}
        if params is not None:
            slot_value = dict(zip(self.param_slots, np.asarray(params, dtype=np.float64)))
        for i, (kind, a, b, payload) in enumerate(self.program):
            if kind == _CONST:
                values[i] = np.float64(slot_value.get(i, payload))
            elif kind == _VAR:
                values[i] = X[:, payload]
            elif kind == _NEG:
                values[i] = -values[a]
            elif kind == _ADD:
                values[i] = values[a] + values[b]
            elif kind == _SUB:
                values[i] = values[a] - values[b]
            elif kind == _MUL:
                values[i] = values[a] * values[b]
            elif kind == _DIV:
                values[i] = values[a] / values[b]
            elif kind == _POW:
                values[i] = np.power(values[a], values[b])
            else:
                values[i] = _NUMPY_FUNCS[payload](values[a])
        return values

    def numpy(self, X: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        """Evaluate on a batch ``X`` (B, d); NaN/inf propagate silently (no warnings)."""
        X = np.asarray(X, dtype=np.float64)
        with np.errstate(all="ignore"):
            out = self._forward_numpy(X, params)[-1]
        return np.broadcast_to(np.asarray(out, dtype=np.float64), (X.shape[0],)).copy()

    def value_and_jacobian(
        self, X: np.ndarray, params: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Values (B,) and the Jacobian (B, n_params) with respect to the parameters.

        One reverse pass seeded with ones: every operation is elementwise, so the adjoint that
        reaches a constant, before it is summed over the batch, is that constant's Jacobian column.
        """
        X = np.asarray(X, dtype=np.float64)
        n = X.shape[0]
        J = np.zeros((n, self.n_params))
        with np.errstate(all="ignore"):
            values = self._forward_numpy(X, params)
            f = np.broadcast_to(np.asarray(values[-1], dtype=np.float64), (n,)).copy()
            if self.n_params == 0:
                return f, J
            adj: list = [None] * len(self.program)
            adj[-1] = np.ones(n)

            def add(k: int, g) -> None:
                if self.has_param[k]:
                    adj[k] = g if adj[k] is None else adj[k] + g

            for i in range(len(self.program) - 1, -1, -1):
                g = adj[i]
                if g is None:
                    continue
                kind, a, b, payload = self.program[i]
                if kind in (_CONST, _VAR):
                    continue
                va = values[a]
                if kind == _NEG:
                    add(a, -g)
                elif kind == _ADD:
                    add(a, g)
                    add(b, g)
                elif kind == _SUB:
                    add(a, g)
                    add(b, -g)
                elif kind == _MUL:
                    add(a, g * values[b])
                    add(b, g * va)
                elif kind == _DIV:
                    add(a, g / values[b])
                    add(b, -g * values[i] / values[b])
                elif kind == _POW:
                    vb = values[b]
                    if self.has_param[a]:
                        add(a, g * vb * np.power(va, vb - 1.0))
                    if self.has_param[b]:
                        add(b, g * values[i] * np.log(va))
                else:
                    add(a, g * _NUMPY_DERIVS[payload](va, values[i]))
            for col, k in enumerate(self.param_slots):
                if adj[k] is not None:
                    J[:, col] = adj[k]
        return f, J

    # torch ------------------------------------------------------------------------------------

    def torch(self, X):
        """Evaluate on a torch tensor ``X`` (B, d); same dtype and device in, out."""
        import torch

        values: list = [None] * len(self.program)
        for i, (kind, a, b, payload) in enumerate(self.program):
            if kind == _CONST:
                values[i] = payload
            elif kind == _VAR:
                values[i] = X[:, payload]
            elif kind == _NEG:
                values[i] = -values[a]
            elif kind == _ADD:
                values[i] = values[a] + values[b]
            elif kind == _SUB:
                values[i] = values[a] - values[b]
            elif kind == _MUL:
                values[i] = values[a] * values[b]
            elif kind == _DIV:
                va, vb = values[a], values[b]
                if not isinstance(va, torch.Tensor) and not isinstance(vb, torch.Tensor):
                    values[i] = _scalar(lambda x, y: x / y, va, vb)
                else:
                    values[i] = va / vb
            elif kind == _POW:
                va, vb = values[a], values[b]
                if not isinstance(va, torch.Tensor) and not isinstance(vb, torch.Tensor):
                    values[i] = _scalar(lambda x, y: x**y, va, vb)
                elif isinstance(va, torch.Tensor):
                    values[i] = torch.pow(va, vb)
                else:
                    values[i] = torch.pow(torch.as_tensor(va, dtype=X.dtype, device=X.device), vb)
            else:
                va = values[a]
                if isinstance(va, torch.Tensor):
                    values[i] = _TORCH_FUNCS[payload](torch, va)
                else:
                    values[i] = float(self._scalar_call(payload, va))
        out = values[-1]
        if not isinstance(out, torch.Tensor):
            return torch.full((X.shape[0],), float(out), dtype=X.dtype, device=X.device)
        return out

    @staticmethod
    def _scalar_call(func: str, value: float) -> float:
        with np.errstate(all="ignore"):
            return float(_NUMPY_FUNCS[func](np.float64(value)))


def _scalar(op, x: float, y: float) -> float:
    with np.errstate(all="ignore"):
        return float(op(np.float64(x), np.float64(y)))


_NUMPY_FUNCS = {
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "tanh": np.tanh,
}

# derivative of f at x, given x and y = f(x)
_NUMPY_DERIVS = {
    "sin": lambda x, y: np.cos(x),
    "cos": lambda x, y: -np.sin(x),
    "tan": lambda x, y: 1.0 + y * y,
    "exp": lambda x, y: y,
    "log": lambda x, y: 1.0 / x,
    "sqrt": lambda x, y: 0.5 / y,
    "abs": lambda x, y: np.sign(x),
    "tanh": lambda x, y: 1.0 - y * y,
}

_TORCH_FUNCS = {
    "sin": lambda t, x: t.sin(x),
    "cos": lambda t, x: t.cos(x),
    "tan": lambda t, x: t.tan(x),
    "exp": lambda t, x: t.exp(x),
    "log": lambda t, x: t.log(x),
    "sqrt": lambda t, x: t.sqrt(x),
    "abs": lambda t, x: t.abs(x),
    "tanh": lambda t, x: t.tanh(x),
}
