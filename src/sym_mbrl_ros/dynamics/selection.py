"""Candidate assessment and ranking, shared by every search backend.

A candidate expression for one coordinate's increment is

* **dropped** when it gives NaN or inf, or a value far outside the target's range, on the
  training inputs or on a margin around them (the data box expanded on each side): such an
  expression "cannot be evaluated" and the search generates again;
* otherwise **assessed** by its validation relative MSE (the held-out mean squared error divided
  by the training target's variance, so ``1 - relative MSE`` is the held-out R²), computed on
  each of a few validation folds, and by its complexity (the number of tree nodes).

**Selection** (:func:`select`) keeps the Pareto front of error against size and applies the
one-standard-error rule, paired over the validation folds: the simplest candidate whose excess
error over the best one's, fold by fold, is within one standard error of that excess. A gain
smaller than its own spread between folds is noise, and a term that buys only that is not worth
its place. (Pairing matters: both candidates err on the same rows, so the unpaired spread of
the best one's error, over folds of a few dozen rows, would let far worse candidates through.)
Errors below ``floor`` (a relative MSE of 1e-8 by default, R² = 1 - 1e-8) count as exact:
between exact models the simplest wins, so round-off and integrator error never buy terms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .expression import (
    BinOp,
    CompiledExpression,
    Node,
    build_sum,
    node_count,
    sum_terms,
    to_string,
)


@dataclass
class FitData:
    """The data one coordinate's candidates are judged on."""

    variables: tuple[str, ...]
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_margin: np.ndarray
    """Training inputs plus points sampled in the expanded data box."""
    y_var: float
    """Variance of the training target: the unit of the relative errors."""
    bound: float
    """Largest magnitude a candidate may take on the margin points."""
    rates: tuple[str, ...] = ()
    """State coordinates the data show to be another coordinate's rate (a velocity): the term
    families give them no trig library (:func:`.continuous.rate_coordinates`; the pyoperon
    fallback is not restricted)."""


@dataclass
class Candidate:
    """One assessed candidate expression for a coordinate (its increment or its derivative)."""

    tree: Node
    source: str
    train_rel_mse: float
    val_rel_mse: float
    complexity: int
    val_folds: tuple[float, ...] = ()
    """Validation relative MSE on each fold (their mean is ``val_rel_mse``)."""
    notes: dict = field(default_factory=dict)

    @property
    def val_r2(self) -> float:
        return 1.0 - self.val_rel_mse

    @property
    def val_se(self) -> float:
        """Standard error of the validation error over the folds (0 with fewer than 2)."""
        k = len(self.val_folds)
        if k < 2:
            return 0.0
        return float(np.std(self.val_folds, ddof=1) / np.sqrt(k))

    def summary(self, name: str, precision: int = 4, text: str | None = None) -> dict:
        """A JSON-friendly record for the selection report (``text``: how to print the tree)."""
        from .expression import next_value_tree

        return {
            "expression": text
            if text is not None
            else to_string(next_value_tree(name, self.tree), precision),
            "source": self.source,
            "validation_r2": _finite_or_none(self.val_r2),
            "validation_se": _finite_or_none(self.val_se),
            "train_r2": _finite_or_none(1.0 - self.train_rel_mse),
            "complexity": self.complexity,
        }


def _finite_or_none(x: float):
    return float(x) if np.isfinite(x) else None


def margin_points(
    X: np.ndarray, margin: float, n_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """``X`` plus ``n_samples`` points in its bounding box widened by ``margin`` per side."""
    lo, hi = X.min(axis=0), X.max(axis=0)
    width = hi - lo
    pad = margin * np.where(width > 0, width, np.maximum(np.abs(lo), 1.0))
    box = rng.uniform(lo - pad, hi + pad, size=(n_samples, X.shape[1]))
    # the corners too, where the data box has few enough dimensions to list them
    if X.shape[1] <= 8:
        corners = (
            np.array(np.meshgrid(*[[a, b] for a, b in zip(lo - pad, hi + pad)]))
            .reshape(X.shape[1], -1)
            .T
        )
        box = np.vstack([box, corners])
    return np.vstack([X, box])


def make_fit_data(
    variables: Sequence[str],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    X_margin: np.ndarray,
    bound_factor: float,
    rates: Sequence[str] = (),
) -> FitData:
    """Bundle one coordinate's data; the error unit and the margin bound come from ``y_train``."""
    y_var = float(np.var(y_train))
    if y_var <= 0:
        y_var = float(np.mean(y_train**2)) or 1.0
    scale = float(np.max(np.abs(y_train))) + float(np.std(y_train))
    return FitData(
        tuple(variables),
        X_train,
        y_train,
        X_val,
        y_val,
        X_margin,
        y_var,
        bound_factor * max(scale, 1e-12),
        tuple(rates),
    )


def evaluable(tree: Node, data: FitData) -> bool:
    """False when the expression is NaN/inf or blows up on the training data or the margin."""
    values = CompiledExpression(tree, data.variables).numpy(data.X_margin)
    return bool(np.all(np.isfinite(values)) and np.max(np.abs(values), initial=0.0) <= data.bound)


def fold_errors(sq_err: np.ndarray, n_folds: int) -> tuple[float, ...]:
    """Mean of ``sq_err`` on each of ``n_folds`` interleaved folds (rows k, k + n_folds, ...)."""
    n_folds = max(1, min(int(n_folds), len(sq_err)))
    return tuple(float(np.mean(sq_err[k::n_folds])) for k in range(n_folds))


def candidate_from_errors(
    tree: Node,
    source: str,
    train_sq: np.ndarray,
    val_sq: np.ndarray,
    y_var: float,
    n_folds: int,
    notes: dict | None = None,
) -> Candidate | None:
    """A candidate from its squared errors on the training and validation rows; ``None`` if
    they are not finite. Without validation rows the training error stands in."""
    train = float(np.mean(train_sq) / y_var)
    if len(val_sq):
        folds = tuple(v / y_var for v in fold_errors(val_sq, n_folds))
        val = float(np.mean(val_sq) / y_var)
    else:
        folds, val = (train,), train
    if not (np.isfinite(train) and np.isfinite(val) and np.all(np.isfinite(folds))):
        return None
    return Candidate(tree, source, train, val, node_count(tree), folds, dict(notes or {}))


def assess(
    tree: Node, data: FitData, source: str, n_folds: int = 5, notes: dict | None = None
) -> Candidate | None:
    """Assess a candidate on ``data``, or ``None`` if it cannot be evaluated (module docstring)."""
    if not evaluable(tree, data):
        return None
    expr = CompiledExpression(tree, data.variables)
    train_sq = (expr.numpy(data.X_train) - data.y_train) ** 2
    val_sq = (expr.numpy(data.X_val) - data.y_val) ** 2 if data.X_val.shape[0] else train_sq[:0]
    return candidate_from_errors(tree, source, train_sq, val_sq, data.y_var, n_folds, notes)


def rank(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Candidates most accurate first (ties go to the simpler one), duplicates removed."""
    seen: set[str] = set()
    out: list[Candidate] = []
    for cand in sorted(candidates, key=lambda c: (c.val_rel_mse, c.complexity)):
        key = to_string(cand.tree)
        if key in seen:
            continue
        seen.add(key)
        out.append(cand)
    return out


def pareto_front(candidates: Sequence[Candidate], floor: float = 0.0) -> list[Candidate]:
    """The candidates no other one beats in both size and validation error, simplest first.

    Errors below ``floor`` count as equal (exact), so one exact candidate ends the front.
    """
    front: list[Candidate] = []
    for cand in sorted(candidates, key=lambda c: (c.complexity, c.val_rel_mse)):
        err = max(cand.val_rel_mse, floor)
        if not front or err < max(front[-1].val_rel_mse, floor):
            front.append(cand)
    return front


def within_noise(cand: Candidate, best: Candidate, floor: float = 0.0, n_se: float = 1.0
                 ) -> bool:
    """Whether ``cand`` is as good as ``best`` up to noise: exact (below ``floor``), or its
    excess validation error over ``best``'s, paired fold by fold, is at most ``n_se`` standard
    errors of that excess (without folds: no worse at all)."""
    if cand.val_rel_mse <= max(best.val_rel_mse, floor):
        return True
    k = min(len(cand.val_folds), len(best.val_folds))
    if k < 2:
        return False
    diff = np.asarray(cand.val_folds[:k]) - np.asarray(best.val_folds[:k])
    return bool(diff.mean() <= n_se * np.std(diff, ddof=1) / np.sqrt(k))


@dataclass
class Selection:
    """The outcome of :func:`select`: the chosen candidate and why."""

    chosen: Candidate
    front: list[Candidate]
    """Pareto front of error against size, simplest first."""
    best: Candidate
    """The most accurate candidate, the reference of the rule."""
    reason: str


def select(candidates: Sequence[Candidate], floor: float = 1e-8) -> Selection:
    """The simplest candidate within one standard error of the best (module docstring)."""
    if not candidates:
        raise ValueError("select needs at least one candidate")
    front = pareto_front(rank(candidates), floor)
    best = min(front, key=lambda c: (c.val_rel_mse, c.complexity))
    chosen = next(c for c in front if within_noise(c, best, floor))
    if chosen is best:
        why = "the most accurate candidate, and no simpler one is within one standard error"
    elif best.val_rel_mse <= floor:
        why = f"the simplest candidate with validation error below {floor:g} (exact)"
    else:
        why = (
            f"the simplest candidate within one standard error of the best "
            f"(validation R² {1 - best.val_rel_mse:.6f} at complexity {best.complexity})"
        )
    reason = f"{why}; Pareto front of {len(front)} among {len(candidates)} candidates"
    return Selection(chosen, front, best, reason)


def removable_terms(
    tree: Node,
) -> tuple[list[tuple[int, Node]], Callable[[list[tuple[int, Node]]], Node]]:
    """The signed terms backward elimination may drop, and how to rebuild the expression from
    a subset: the terms of a sum, or of the numerator of a quotient whose numerator is a sum
    (a cart-pole's law, ``(a*sin(q) + b*u*cos(q) + ...)/(cos(q)**2 + d)``, whose numerator
    otherwise kept every small term its first fit gave it)."""
    terms = sum_terms(tree)
    if len(terms) == 1 and isinstance(tree, BinOp) and tree.op == "/":
        numerator = sum_terms(tree.left)
        if len(numerator) > 1:
            return numerator, lambda kept: BinOp("/", build_sum(kept), tree.right)
    return terms, build_sum


def backward_elimination(
    sel: Selection,
    candidates: Sequence[Candidate],
    consider: Callable[[Node, str], Candidate | None],
    floor: float = 1e-8,
    max_terms: int = 6,
) -> Selection:
    """Drop the chosen expression's terms one at a time (the least harmful first) while the
    result stays within the rule's threshold; ``consider`` refines and assesses a challenger.

    This is what lets a refit shrink a model: a warm start's terms are challenged every time.
    A searched expression of more than ``max_terms`` terms is left as it is: the search's own
    Pareto front already offered its simpler neighbours, and each trial costs a refinement.
    """
    chosen, pool, dropped = sel.chosen, list(candidates), 0
    if (len(removable_terms(chosen.tree)[0]) > max_terms
            and not chosen.source.startswith("init")):
        return sel
    while True:
        terms, rebuild = removable_terms(chosen.tree)
        if len(terms) < 2:
            break
        base = chosen.source.split(", less ")[0]
        trials = []
        for k in range(len(terms)):
            cand = consider(
                rebuild(terms[:k] + terms[k + 1 :]),
                f"{base}, less {dropped + 1} term{'s' if dropped else ''}",
            )
            if cand is not None:
                trials.append(cand)
        pool += trials
        if not trials:
            break
        best = min(trials, key=lambda c: (c.val_rel_mse, c.complexity))
        if not within_noise(best, sel.best, floor):
            break
        chosen, dropped = best, dropped + 1
    if not dropped:
        return sel
    front = pareto_front(rank(pool), floor)
    if chosen not in front:
        front = sorted(front + [chosen], key=lambda c: c.complexity)
    reason = sel.reason + f"; backward elimination then dropped {dropped} term(s) within it"
    return Selection(chosen, front, sel.best, reason)
