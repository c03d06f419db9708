"""Candidate assessment and ranking, shared by every search backend.

A candidate expression for one coordinate's increment is

* **dropped** when it gives NaN or inf, or a value far outside the target's range, on the
  training inputs or on a margin around them (the data box expanded on each side): such an
  expression "cannot be evaluated" and the search generates again;
* otherwise **scored** by ``log(validation relative MSE + floor) + penalty * complexity``, where
  the relative MSE is the held-out mean squared error divided by the training target's variance
  (so ``1 - relative MSE`` is the held-out R²) and the complexity is the number of tree nodes.
  The lowest score wins. The floor keeps round-off from deciding between exact models, so among
  equally exact candidates the simplest is chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .expression import CompiledExpression, Node, node_count, to_string


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


@dataclass
class Candidate:
    """One assessed candidate expression for a coordinate's increment."""

    tree: Node
    source: str
    train_rel_mse: float
    val_rel_mse: float
    complexity: int
    score: float
    notes: dict = field(default_factory=dict)

    @property
    def val_r2(self) -> float:
        return 1.0 - self.val_rel_mse

    def summary(self, name: str, precision: int = 4) -> dict:
        """A JSON-friendly record for the selection report."""
        from .expression import next_value_tree

        return {
            "expression": to_string(next_value_tree(name, self.tree), precision),
            "source": self.source,
            "validation_r2": _finite_or_none(self.val_r2),
            "train_r2": _finite_or_none(1.0 - self.train_rel_mse),
            "complexity": self.complexity,
            "score": _finite_or_none(self.score),
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
    )


def evaluable(tree: Node, data: FitData) -> bool:
    """False when the expression is NaN/inf or blows up on the training data or the margin."""
    values = CompiledExpression(tree, data.variables).numpy(data.X_margin)
    return bool(np.all(np.isfinite(values)) and np.max(np.abs(values), initial=0.0) <= data.bound)


def assess(
    tree: Node, data: FitData, source: str, penalty: float, floor: float, notes: dict | None = None
) -> Candidate | None:
    """Score a candidate, or ``None`` if it cannot be evaluated (see the module docstring)."""
    if not evaluable(tree, data):
        return None
    expr = CompiledExpression(tree, data.variables)
    train = float(np.mean((expr.numpy(data.X_train) - data.y_train) ** 2) / data.y_var)
    if data.X_val.shape[0]:
        val = float(np.mean((expr.numpy(data.X_val) - data.y_val) ** 2) / data.y_var)
    else:
        val = train
    if not (np.isfinite(train) and np.isfinite(val)):
        return None
    complexity = node_count(tree)
    score = float(np.log(val + floor) + penalty * complexity)
    return Candidate(tree, source, train, val, complexity, score, dict(notes or {}))


def rank(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Candidates best first (lowest score; ties go to the simpler one), duplicates removed."""
    seen: set[str] = set()
    out: list[Candidate] = []
    for cand in sorted(candidates, key=lambda c: (c.score, c.complexity)):
        key = to_string(cand.tree)
        if key in seen:
            continue
        seen.add(key)
        out.append(cand)
    return out
