"""Exact-structure check: does a fitted expression have the same terms as the true law?

A *term* is one additive piece of an expression after sympy expansion (``expand`` and
``expand_trig``, so ``sin(q1 + q2)`` is two terms and ``(1 - x**2)*v`` is ``v`` and
``x**2*v``), identified without its numbers:

* its numeric coefficient is dropped (``-9.81*sin(theta)`` is ``sin(theta)``);
* numbers inside a function's argument are dropped too (``tanh(19.7*v)`` is ``tanh(v)``,
  ``sin(1.0002*theta)`` is ``sin(theta)``): a fitted frequency or scale is a constant of the
  term like its coefficient;
* a rational expression is put over one common denominator (``sympy.together``); its terms
  are the numerator's monomials, each identified together with the set of the denominator's
  monomials (so the rational laws of the cart-pole and the two-link systems have terms too);
* a constant (bias) term is a term, ``1``.

Terms below a relative threshold are dropped, in the law and in the model alike: a term whose
RMS contribution on the evaluation data (inputs of the test set) is below
``REL_THRESHOLD`` = 1e-3 of the RMS of the whole expression. Why 1e-3: removing such a term
changes the prediction by at most 0.1 % of the coordinate's scale, which costs at most ~1e-6 of
R², far below the 1e-4 between the accuracy targets; larger terms change R² measurably and so
are real structure, smaller ones are round-off or noise absorbed by the fit. Terms with the
same identity (say ``sin(theta)`` and ``sin(0.9999*theta)``) are summed before the threshold.

Discrete-time models give the next state or the increment; the reference is the law
integrated over one step, to first order ``increment ~ dt * f(x, u)``, so the increment's terms
are compared with f's (the coefficients do not matter, so ``dt`` drops out). Higher-order
terms of the step (``dt**2/2 * df/dt``) are part of a discrete model's exact map: where they
exceed the threshold, a discrete model cannot have the law's structure. Continuous-time
models give ``f`` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import sympy

REL_THRESHOLD = 1e-3


@dataclass
class TermSet:
    """The terms of an expression that survive the threshold, with their RMS share."""

    terms: dict[str, float]
    """term identity -> RMS of the term's contribution / RMS of the expression."""
    dropped: dict[str, float] = field(default_factory=dict)
    """terms below the threshold, with their share."""

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self.terms)


@dataclass
class StructureVerdict:
    """The outcome of comparing one coordinate's expression with its law."""

    exact: bool
    missing: list[str]
    extra: list[str]
    n_terms: int
    n_law_terms: int

    def summary(self) -> str:
        """One line: yes, or what is missing and what is extra."""
        if self.exact:
            return "yes"
        parts = []
        if self.missing:
            parts.append("missing " + _listing(self.missing))
        if self.extra:
            parts.append("extra " + _listing(self.extra))
        return "no: " + "; ".join(parts)


def _listing(terms: list[str], most: int = 6, width: int = 60) -> str:
    shown = [t if len(t) <= width else t[: width - 3] + "..." for t in terms[:most]]
    more = f" and {len(terms) - most} more" if len(terms) > most else ""
    return ", ".join(shown) + more


def parse_law(text: str, names: Sequence[str]) -> sympy.Expr:
    """A law string as a sympy expression in real symbols named ``names``."""
    local = {n: sympy.Symbol(n, real=True) for n in names}
    local["abs"] = sympy.Abs
    return sympy.sympify(text, locals=local)


def as_real(expr: sympy.Expr) -> sympy.Expr:
    """The same expression with every symbol real (sympy then simplifies ``Abs(-v)``)."""
    return expr.subs({s: sympy.Symbol(s.name, real=True) for s in expr.free_symbols})


def _integer_powers(expr: sympy.Expr) -> sympy.Expr:
    """``x**2.0`` as ``x**2`` (fitted models print float exponents)."""
    return expr.replace(
        lambda e: e.is_Pow and e.exp.is_Float and float(e.exp).is_integer(),
        lambda e: sympy.Pow(e.base, int(e.exp)),
    )


def _strip_numbers(arg: sympy.Expr) -> sympy.Expr:
    """A function argument without its numbers: coefficients to 1, additive constants gone."""
    pieces = []
    for t in sympy.Add.make_args(sympy.expand(arg)):
        _, rest = t.as_coeff_Mul()
        if rest != 1:
            pieces.append(rest)
    return sympy.Add(*pieces) if pieces else sympy.Integer(0)


def _canonical_functions(expr: sympy.Expr) -> sympy.Expr:
    return expr.replace(
        lambda e: isinstance(e, sympy.Function) and e.args,
        lambda e: e.func(*(_strip_numbers(a) for a in e.args)),
    )


def _monomial(term: sympy.Expr) -> str:
    """A product's identity: without its coefficient and the numbers in its functions."""
    return str(_canonical_functions(term.as_coeff_Mul()[1]))


def term_set(
    expr: sympy.Expr,
    names: Sequence[str],
    X: np.ndarray,
    threshold: float = REL_THRESHOLD,
) -> TermSet:
    """The terms of ``expr`` on data ``X`` (columns in the order of ``names``)."""
    expr = _integer_powers(as_real(sympy.sympify(expr)))
    expanded = sympy.expand(sympy.expand_trig(expr))
    num, den = sympy.fraction(sympy.together(expanded))
    suffix = ""
    if den.free_symbols:  # one common denominator, identified by its monomials
        den = sympy.expand(den)
        suffix = " / (" + " + ".join(sorted(_monomial(t) for t in sympy.Add.make_args(den))) + ")"
        pieces = sympy.Add.make_args(sympy.expand(num))
    else:
        den, pieces = sympy.Integer(1), sympy.Add.make_args(expanded)
    groups: dict[str, list[sympy.Expr]] = {}
    for t in pieces:
        if t != 0:
            groups.setdefault(_monomial(t) + suffix, []).append(t)
    symbols = [sympy.Symbol(n, real=True) for n in names]
    total = _values(expanded, symbols, X)
    ok = np.isfinite(total)
    scale = float(np.sqrt(np.mean(total[ok] ** 2))) if ok.any() else 0.0
    terms, dropped = {}, {}
    for key, parts in groups.items():
        vals = _values(sympy.Add(*parts) / den, symbols, X)[ok]
        rms = float(np.sqrt(np.mean(vals**2))) if len(vals) else 0.0
        share = rms / scale if scale > 0 else (0.0 if rms == 0 else float("inf"))
        (terms if share >= threshold else dropped)[key] = share
    return TermSet(terms, dropped)


def _values(expr: sympy.Expr, symbols, X: np.ndarray) -> np.ndarray:
    fn = sympy.lambdify(symbols, expr, modules="numpy")
    with np.errstate(all="ignore"):
        out = np.asarray(fn(*X.T), dtype=float)
    out = np.broadcast_to(out, (X.shape[0],)).astype(float)
    return np.where(np.isfinite(out), out, np.inf)


def compare(
    model: sympy.Expr,
    law: sympy.Expr,
    names: Sequence[str],
    X: np.ndarray,
    threshold: float = REL_THRESHOLD,
) -> StructureVerdict:
    """Does ``model`` have exactly the terms of ``law`` (both thresholded on ``X``)?"""
    got = term_set(model, names, X, threshold)
    want = term_set(law, names, X, threshold)
    missing = sorted(want.keys - got.keys)
    extra = sorted(got.keys - want.keys)
    return StructureVerdict(
        exact=not missing and not extra,
        missing=missing,
        extra=extra,
        n_terms=len(got.terms),
        n_law_terms=len(want.terms),
    )


def increment_as_rate(next_or_increment: sympy.Expr, name: str, is_next: bool) -> sympy.Expr:
    """A discrete model's increment (``next - name`` when it gives the next value).

    Its terms are those of ``dt * f``; coefficients are ignored, so it is compared with the
    law as it is.
    """
    expr = as_real(sympy.sympify(next_or_increment))
    if is_next:
        expr = expr - sympy.Symbol(name, real=True)
    return expr
