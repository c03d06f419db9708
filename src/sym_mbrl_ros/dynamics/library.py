"""The library of candidate terms searched by the sparse backend.

Terms are expression trees without a coefficient:

* monomials of the polynomial inputs (state and action coordinates) up to ``degree``;
* ``sin`` and ``cos`` of each angle coordinate, and (``trig_pairs``) products of two of them
  (``sin(q)**2`` is left out: it is ``1 - cos(q)**2``);
* (``angle_sums``) ``sin`` and ``cos`` of the sum and the difference of each pair of angles,
  in place of the products of two different angles' features (the same span, one term where
  the products need two), and (with ``trig_pairs``) ``cos(q)*f(q + r)`` and
  ``cos(r)*f(q + r)`` (``sin(q)*cos(q + r)`` is ``cos(q)*sin(q + r) - sin(r)``, already
  spanned). A serial chain's joint encoders measure relative angles, so gravity acts through
  the absolute angle of the second link, ``q1 + q2``, and a two-link arm's inverse mass
  multiplies it by ``cos(q2)``: a product of three single-angle factors, which the pairs above
  do not span;
* (``products``) each trig feature times each monomial of degree 1..``product_degree``.

The constant term is represented by ``None``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .expression import BinOp, Call, CompiledExpression, Name, Node, Num

TRIG = ("sin", "cos")


@dataclass(frozen=True)
class LibrarySpec:
    """Which terms a library holds (the sparse backend's fields of the fit config)."""

    degree: int = 3
    trig: tuple[str, ...] = ("sin", "cos")
    trig_pairs: bool = True
    products: bool = True
    product_degree: int = 2
    angle_sums: bool = False


def monomials(names: Sequence[str], degree: int, min_degree: int = 1) -> list[Node]:
    """All monomials of ``names`` with total degree in [min_degree, degree], as trees."""
    out: list[Node] = []
    for d in range(max(min_degree, 1), degree + 1):
        for combo in itertools.combinations_with_replacement(range(len(names)), d):
            factors: list[Node] = []
            for k, group in itertools.groupby(combo):
                power = len(list(group))
                base: Node = Name(names[k])
                factors.append(base if power == 1 else BinOp("**", base, Num(float(power))))
            out.append(_product(factors))
    return out


def trig_features(
    angles: Sequence[str], funcs: Sequence[str], pairs: bool, sums: bool = False
) -> list[Node]:
    """``f(q)`` for each trig function f and angle q, plus products of two when ``pairs``.

    ``sums``: ``f(q + r)`` and ``f(q - r)`` for each pair of angles; with ``pairs`` they stand
    in for the products of two different angles' features (with sin and cos, the same span),
    and ``cos(q)*f(q + r)`` and ``cos(r)*f(q + r)`` join (``sin`` where the functions hold no
    ``cos``).
    """
    singles = [(f, q) for q in angles for f in funcs]
    out: list[Node] = [Call(f, Name(q)) for f, q in singles]
    summed: list[tuple[str, str, Node]] = []
    if sums:
        for q, r in itertools.combinations(angles, 2):
            for op in ("+", "-"):
                for f in funcs:
                    out.append(Call(f, BinOp(op, Name(q), Name(r))))
                    if op == "+":
                        summed.append((q, r, out[-1]))
    if pairs:
        for (f1, q1), (f2, q2) in itertools.combinations_with_replacement(singles, 2):
            if q1 == q2 and f1 == f2 == "sin":
                continue  # sin(q)**2 = 1 - cos(q)**2 is already spanned
            if q1 != q2 and sums:
                continue  # spanned by f(q1 + q2) and f(q1 - q2)
            if q1 == q2 and f1 == f2:
                out.append(BinOp("**", Call(f1, Name(q1)), Num(2.0)))
            else:
                out.append(BinOp("*", Call(f1, Name(q1)), Call(f2, Name(q2))))
        g = "cos" if "cos" in funcs else funcs[0]
        out += [BinOp("*", Call(g, Name(x)), t) for q, r, t in summed for x in (q, r)]
    return out


def build_library(
    poly_inputs: Sequence[str], angle_inputs: Sequence[str], spec: LibrarySpec
) -> list[Node | None]:
    """The candidate terms; ``None`` stands for the constant term."""
    terms: list[Node | None] = [None]
    poly = monomials(poly_inputs, spec.degree)
    terms += poly
    if angle_inputs and spec.trig:
        trig = trig_features(angle_inputs, spec.trig, spec.trig_pairs, spec.angle_sums)
        terms += trig
        if spec.products and spec.product_degree > 0:
            for m in monomials(poly_inputs, spec.product_degree):
                for t in trig:
                    terms.append(BinOp("*", m, t))
    return terms


def library_size(n_poly: int, n_angles: int, spec: LibrarySpec) -> int:
    """Number of terms :func:`build_library` would return, without building them."""
    from math import comb

    def n_mono(d: int) -> int:
        return comb(n_poly + d, d) - 1 if n_poly else 0

    n_trig = 0
    if n_angles and spec.trig:
        singles = n_angles * len(spec.trig)
        n_trig = singles
        n_pairs = comb(n_angles, 2)
        if spec.angle_sums:
            n_trig += 2 * n_pairs * len(spec.trig)  # f(q + r), f(q - r)
        if spec.trig_pairs:
            n_trig += comb(singles + 1, 2) - (n_angles if "sin" in spec.trig else 0)
            if spec.angle_sums:  # no cross products; cos(q)*f(q + r), cos(r)*f(q + r)
                n_trig += n_pairs * len(spec.trig) * (2 - len(spec.trig))
    n = 1 + n_mono(spec.degree) + n_trig
    if spec.products and spec.product_degree > 0:
        n += n_mono(spec.product_degree) * n_trig
    return n


def evaluate_library(
    terms: Sequence[Node | None], variables: Sequence[str], X: np.ndarray
) -> np.ndarray:
    """The library matrix: one column per term evaluated on the rows of ``X``."""
    cols = np.empty((X.shape[0], len(terms)))
    for k, term in enumerate(terms):
        cols[:, k] = 1.0 if term is None else CompiledExpression(term, variables).numpy(X)
    return cols


def linear_combination(terms: Sequence[Node | None], coefs: Sequence[float]) -> Node:
    """The tree ``c0 + c1*t1 + ...`` for the given terms and coefficients (zeros skipped)."""
    node: Node | None = None
    for term, c in zip(terms, coefs):
        if c == 0.0:
            continue
        piece: Node = Num(float(c)) if term is None else _product([Num(float(c))] + _factors(term))
        node = piece if node is None else BinOp("+", node, piece)
    return Num(0.0) if node is None else node


def with_inner_constants(node: Node) -> Node:
    """Give every ``sin(q)``/``cos(q)`` of a coordinate a frequency and a phase: ``f(1*q + 0)``.

    BFGS then refines them with the other constants; the start (1, 0) is the library term itself.
    """
    if isinstance(node, Call) and node.func in TRIG and isinstance(node.arg, Name):
        return Call(node.func, BinOp("+", BinOp("*", Num(1.0), node.arg), Num(0.0)))
    if isinstance(node, BinOp):
        return BinOp(node.op, with_inner_constants(node.left), with_inner_constants(node.right))
    if isinstance(node, Call):
        return Call(node.func, with_inner_constants(node.arg))
    return node


def count_trig_calls(node: Node | None) -> int:
    """How many ``sin``/``cos`` calls a tree holds (each gets two inner constants when refined)."""
    if node is None or isinstance(node, (Num, Name)):
        return 0
    if isinstance(node, Call):
        return int(node.func in TRIG) + count_trig_calls(node.arg)
    if isinstance(node, BinOp):
        return count_trig_calls(node.left) + count_trig_calls(node.right)
    return count_trig_calls(node.arg)


def _factors(node: Node) -> list[Node]:
    """The factors of a product (so ``c*x*sin(q)`` prints without parentheses)."""
    if isinstance(node, BinOp) and node.op == "*":
        return _factors(node.left) + _factors(node.right)
    return [node]


def _product(factors: Sequence[Node]) -> Node:
    node = factors[0]
    for f in factors[1:]:
        node = BinOp("*", node, f)
    return node
