"""Training data for the transformer: (points, expression) pairs generated on the fly.

Two generators, both returning :class:`Sample` objects:

* :class:`GeneralGenerator` samples random expressions the way Kamienny et al. (2022) do: an
  input dimension, a random binary tree of ``add sub mul div`` over the variables, unary
  operators inserted at random nodes, an affine map ``a*x + b`` around every variable and
  unary operator, and inputs drawn from a mixture of Gaussian and uniform clusters with random
  centres and scales.
* :class:`MechanicsGenerator` samples increments of random mechanical systems over one control
  period: a sum of a few terms ``c*dt*term`` where the terms are velocities, actions, sin/cos
  of angles, their products with velocities and actions (``u*cos(q)``, ``v*sin(q)``,
  ``w**2*sin(q)``), small polynomials (``v**2``, ``v*w``, ``v**3``) and, rarely, ``tan`` or
  angle differences. Inputs look like recorded states: angles in [-pi, pi), velocities and
  actions uniform or normal with random scales.

An expression is over the names ``x0 .. x{D-1}``; constants are rounded to the tokenizer's
precision before the targets are computed, so the token sequence is the exact label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..expression import BinOp, Call, CompiledExpression, Name, Node, Num
from .tokenizer import TokenError, Tokenizer

GENERATORS = ("general", "mechanics")


@dataclass
class Sample:
    """One training pair: points ``(X, y)`` and the expression that produced ``y``."""

    X: np.ndarray
    """(N, D) inputs."""
    y: np.ndarray
    """(N,) targets, ``y = f(X)`` (plus optional noise)."""
    angle: np.ndarray
    """(D,) True where an input is a (wrapped) angle."""
    tree: Node
    """The expression over ``x0 .. x{D-1}``."""
    tokens: list[str]
    """Its prefix tokens."""

    @property
    def variables(self) -> list[str]:
        return [f"x{k}" for k in range(self.X.shape[1])]


def variable_names(d: int) -> list[str]:
    """``['x0', .., 'x{d-1}']``."""
    return [f"x{k}" for k in range(d)]


class _Base:
    """Rejection loop shared by the generators: resample until the data are usable."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int = 60, max_abs: float = 1e4):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.max_abs = max_abs

    def _draw(self, rng: np.random.Generator, n_points: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, n_points: int) -> Sample:
        """One finite, non-constant sample with ``n_points`` points."""
        for _ in range(1000):
            drawn = self._draw(rng, n_points)
            if drawn is None:
                continue
            tree, X, angle, noise = drawn
            tree = self._round_constants(tree)
            d = X.shape[1]
            try:
                tokens = self.tokenizer.encode(tree, variable_names(d))
            except TokenError:
                continue
            if len(tokens) > self.max_tokens:
                continue
            y = CompiledExpression(tree, variable_names(d)).numpy(X)
            if not np.all(np.isfinite(y)) or np.max(np.abs(y)) > self.max_abs:
                continue
            sd = float(np.std(y))
            if sd < 1e-6 * (1.0 + float(np.max(np.abs(y)))):
                continue
            if noise > 0:
                y = y + rng.normal(0.0, noise * sd, size=y.shape)
            return Sample(X, y, angle, tree, tokens)
        raise RuntimeError("the generator did not produce a usable sample in 1000 tries")

    def _round_constants(self, tree: Node) -> Node:
        tok = self.tokenizer

        def walk(n: Node) -> Node:
            if isinstance(n, Num):
                return Num(tok.round_constant(n.value))
            if isinstance(n, Name):
                return n
            if isinstance(n, Call):
                return Call(n.func, walk(n.arg))
            if isinstance(n, BinOp):
                if n.op == "**":
                    return BinOp("**", walk(n.left), n.right)
                return BinOp(n.op, walk(n.left), walk(n.right))
            return type(n)(walk(n.arg))

        return walk(tree)


# --- mechanics ---------------------------------------------------------------------------------


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


class MechanicsGenerator(_Base):
    """Increments of random mechanical systems (see the module docstring)."""

    name = "mechanics"

    def _inputs(self, rng: np.random.Generator, n_points: int):
        d = int(rng.integers(1, self.tokenizer.max_inputs + 1))
        kinds = []
        n_angles = int(rng.integers(0, min(d, 3) + 1))
        n_actions = int(rng.integers(0, min(d - n_angles, 2) + 1))
        kinds = ["angle"] * n_angles + ["action"] * n_actions
        kinds += ["velocity"] * (d - len(kinds))
        order = rng.permutation(d)
        kinds = [kinds[k] for k in order]
        X = np.empty((n_points, d))
        flagged = np.zeros(d, dtype=bool)
        for k, kind in enumerate(kinds):
            if kind == "angle":
                if rng.random() < 0.75:  # wrapped angle, as the world model sees it
                    X[:, k] = rng.uniform(-math.pi, math.pi, n_points)
                    flagged[k] = True
                else:  # an angle the task does not mark (Reacher's joints)
                    half = rng.uniform(0.5, math.pi)
                    X[:, k] = rng.uniform(-half, half, n_points) + rng.uniform(-0.5, 0.5)
            else:
                scale = _log_uniform(rng, 0.2, 15.0)
                if rng.random() < 0.6:
                    X[:, k] = rng.uniform(-scale, scale, n_points)
                else:
                    X[:, k] = rng.normal(0.0, scale / 2, n_points)
                if rng.random() < 0.2:
                    X[:, k] += rng.normal(0.0, scale)
        return X, kinds, flagged

    def _term(self, rng: np.random.Generator, kinds: list[str]) -> Node | None:
        angles = [k for k, kind in enumerate(kinds) if kind == "angle"]
        others = [k for k, kind in enumerate(kinds) if kind != "angle"]

        def x(k: int) -> Node:
            return Name(f"x{k}")

        def trig(q: int) -> Node:
            return Call("sin" if rng.random() < 0.6 else "cos", x(q))

        options = []
        if others:
            options += [("linear", 5.0), ("square", 0.6), ("product", 0.8), ("cube", 0.3)]
        if angles:
            options += [("trig", 4.0), ("trig_pair", 0.4)]
        if angles and others:
            options += [("trig_times", 2.0), ("square_trig", 0.4), ("tan_times", 0.15)]
        if len(angles) >= 2:
            options += [("trig_diff", 0.5)]
        options += [("constant", 0.3)]
        names, weights = zip(*options)
        p = np.asarray(weights) / sum(weights)
        kind = names[int(rng.choice(len(names), p=p))]
        if kind == "linear":
            return x(int(rng.choice(others)))
        if kind == "square":
            return BinOp("**", x(int(rng.choice(others))), Num(2.0))
        if kind == "cube":
            return BinOp("**", x(int(rng.choice(others))), Num(3.0))
        if kind == "product":
            if len(others) < 2:
                return None
            a, b = sorted(rng.choice(others, 2, replace=False))
            return BinOp("*", x(int(a)), x(int(b)))
        if kind == "trig":
            return trig(int(rng.choice(angles)))
        if kind == "trig_pair":
            q1, q2 = int(rng.choice(angles)), int(rng.choice(angles))
            return BinOp("*", Call("sin", x(q1)), Call("cos", x(q2)))
        if kind == "trig_times":
            return BinOp("*", x(int(rng.choice(others))), trig(int(rng.choice(angles))))
        if kind == "square_trig":
            v = BinOp("**", x(int(rng.choice(others))), Num(2.0))
            return BinOp("*", v, trig(int(rng.choice(angles))))
        if kind == "tan_times":
            return BinOp("*", x(int(rng.choice(others))), Call("tan", x(int(rng.choice(angles)))))
        if kind == "trig_diff":
            q1, q2 = sorted(rng.choice(angles, 2, replace=False))
            f = "sin" if rng.random() < 0.5 else "cos"
            return Call(f, BinOp("-", x(int(q1)), x(int(q2))))
        return None  # the constant term is added by the caller

    def _draw(self, rng: np.random.Generator, n_points: int):
        X, kinds, flagged = self._inputs(rng, n_points)
        n_terms = int(rng.choice([1, 2, 3, 4, 5], p=[0.2, 0.3, 0.25, 0.15, 0.1]))
        terms: dict[str, Node] = {}
        constant = False
        for _ in range(n_terms):
            t = self._term(rng, kinds)
            if t is None:
                constant = True
            else:
                terms[_term_key(t)] = t
        if not terms:
            return None
        dt = _log_uniform(rng, 0.005, 0.1)
        parts = []
        for key in sorted(terms):
            c = dt * _log_uniform(rng, 0.05, 30.0) * (1 if rng.random() < 0.5 else -1)
            parts.append((1, BinOp("*", Num(c), terms[key])))
        if constant:
            parts.append((1, Num(dt * rng.normal(0.0, 2.0))))
        noise = 0.0 if rng.random() < 0.5 else _log_uniform(rng, 1e-5, 1e-2)
        return _right_sum(parts), X, flagged, noise


def _term_key(t: Node) -> str:
    from ..expression import to_string

    return to_string(t)


def _right_sum(parts: list[tuple[int, Node]]) -> Node:
    """``t0 + (t1 + (t2 + ...))``: prefix ``add t0 add t1 t2`` lets the decoder go term by term."""
    node = parts[-1][1]
    for _, t in reversed(parts[:-1]):
        node = BinOp("+", t, node)
    return node


# --- general -----------------------------------------------------------------------------------

UNARY_WEIGHTS = {
    "inv": 3.0,
    "abs": 1.0,
    "pow2": 3.0,
    "sqrt": 3.0,
    "sin": 3.0,
    "cos": 3.0,
    "tan": 0.5,
    "exp": 1.0,
    "log": 1.0,
    "pow3": 1.0,
    "tanh": 0.5,
}
BINARY_WEIGHTS = {"+": 8.0, "-": 2.0, "*": 8.0, "/": 2.0}


class GeneralGenerator(_Base):
    """Random expressions and input distributions after Kamienny et al. (2022), section 2."""

    name = "general"

    def __init__(self, tokenizer: Tokenizer, max_binary_extra: int = 4, max_unary: int = 4, **kw):
        super().__init__(tokenizer, **kw)
        self.max_binary_extra = max_binary_extra
        self.max_unary = max_unary

    def _draw(self, rng: np.random.Generator, n_points: int):
        d = int(rng.integers(1, min(self.tokenizer.max_inputs, 5) + 1))
        n_binary = int(rng.integers(d - 1, d + self.max_binary_extra + 1))
        n_binary = max(n_binary, 0)
        n_unary = int(rng.integers(0, self.max_unary + 1))
        tree = self._random_tree(rng, d, n_binary)
        tree = self._insert_unary(rng, tree, n_unary)
        tree = self._affine(rng, tree)
        X = _mixture_inputs(rng, n_points, d)
        return tree, X, np.zeros(d, dtype=bool), 0.0

    def _random_tree(self, rng: np.random.Generator, d: int, n_binary: int) -> Node:
        """A uniformly shaped binary tree with ``n_binary`` operators; leaves are variables,
        every input used at least once when there are enough leaves."""

        # build the shape top-down by splitting the operator count at random
        def shape(n: int):
            if n == 0:
                return None
            left = int(rng.integers(0, n))
            return (shape(left), shape(n - 1 - left))

        skeleton = shape(n_binary)
        n_leaves = n_binary + 1
        leaves = list(rng.permutation(d)[: min(d, n_leaves)])
        leaves += list(rng.integers(0, d, size=n_leaves - len(leaves)))
        leaves = [int(k) for k in rng.permutation(leaves)]
        ops, weights = zip(*BINARY_WEIGHTS.items())
        p = np.asarray(weights) / sum(weights)
        it = iter(leaves)

        def build(s) -> Node:
            if s is None:
                return Name(f"x{next(it)}")
            op = ops[int(rng.choice(len(ops), p=p))]
            return BinOp(op, build(s[0]), build(s[1]))

        return build(skeleton)

    def _insert_unary(self, rng: np.random.Generator, tree: Node, n_unary: int) -> Node:
        names, weights = zip(*UNARY_WEIGHTS.items())
        p = np.asarray(weights) / sum(weights)
        for _ in range(n_unary):
            nodes = _subtrees(tree)
            target = nodes[int(rng.integers(len(nodes)))]
            op = names[int(rng.choice(len(names), p=p))]
            tree = _replace(tree, target, _unary(op, target))
        return tree

    def _affine(self, rng: np.random.Generator, tree: Node) -> Node:
        """``a*x + b`` around variables and unary operators (a, b random, b often dropped)."""

        def const() -> float:
            return float(rng.choice([-1, 1]) * _log_uniform(rng, 0.05, 10.0))

        def wrap(n: Node) -> Node:
            out: Node = BinOp("*", Num(const()), n)
            if rng.random() < 0.5:
                out = BinOp("+", out, Num(const()))
            return out

        def walk(n: Node) -> Node:
            if isinstance(n, Name):
                return wrap(n) if rng.random() < 0.7 else n
            if isinstance(n, Num):
                return n
            if isinstance(n, Call):
                return wrap(Call(n.func, walk(n.arg)))
            if isinstance(n, BinOp) and n.op == "**":
                return wrap(BinOp("**", walk(n.left), n.right))
            if isinstance(n, BinOp) and n.op == "/" and n.left == Num(1.0):
                return wrap(BinOp("/", n.left, walk(n.right)))
            return BinOp(n.op, walk(n.left), walk(n.right))

        out = walk(tree)
        return out if not isinstance(out, Name) else BinOp("*", Num(const()), out)


def _unary(op: str, a: Node) -> Node:
    if op == "inv":
        return BinOp("/", Num(1.0), a)
    if op == "pow2":
        return BinOp("**", a, Num(2.0))
    if op == "pow3":
        return BinOp("**", a, Num(3.0))
    return Call(op, a)


def _subtrees(tree: Node) -> list[Node]:
    out = [tree]
    if isinstance(tree, BinOp):
        out += _subtrees(tree.left) + _subtrees(tree.right)
    elif isinstance(tree, Call):
        out += _subtrees(tree.arg)
    return out


def _replace(tree: Node, target: Node, new: Node) -> Node:
    """Replace the first occurrence (pre-order, by identity) of ``target``."""
    done = False

    def walk(n: Node) -> Node:
        nonlocal done
        if done:
            return n
        if n is target:
            done = True
            return new
        if isinstance(n, BinOp):
            return BinOp(n.op, walk(n.left), walk(n.right))
        if isinstance(n, Call):
            return Call(n.func, walk(n.arg))
        return n

    return walk(tree)


def _mixture_inputs(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Points from k clusters (Gaussian or uniform, random centre and per-axis scale), then
    standardised per axis and rescaled to a random range, as the paper's input sampler."""
    k = int(rng.integers(1, 6))
    weights = rng.dirichlet(np.ones(k))
    counts = rng.multinomial(n, weights)
    parts = []
    for c in range(k):
        centre = rng.normal(0.0, 1.0, d)
        scale = rng.uniform(0.1, 1.0, d)
        if rng.random() < 0.5:
            parts.append(centre + scale * rng.normal(size=(counts[c], d)))
        else:
            parts.append(centre + scale * rng.uniform(-1.7, 1.7, size=(counts[c], d)))
    X = np.vstack(parts)
    X = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-12)
    X = X * _log_uniform(rng, 0.3, 5.0) + rng.normal(0.0, 1.0, d)
    return X[rng.permutation(n)]


def make_generator(name: str, tokenizer: Tokenizer, max_tokens: int = 60) -> _Base:
    """The generator called ``name`` (one of :data:`GENERATORS`); expressions have at most
    ``max_tokens`` tokens."""
    if name == "mechanics":
        return MechanicsGenerator(tokenizer, max_tokens=max_tokens)
    if name == "general":
        return GeneralGenerator(tokenizer, max_tokens=max_tokens)
    raise ValueError(f"unknown generator {name!r}; choose one of {', '.join(GENERATORS)}")
