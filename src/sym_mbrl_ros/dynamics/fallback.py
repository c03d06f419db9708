"""The default search's last stage: genetic programming when the library cannot explain a law.

The sparse stage is fast and exact on laws its library spans. When a coordinate's best
(refined) sparse candidate still misses the validation error ``min_error`` (R² 0.9999 by
default) *and* sits well above the noise floor of its data, the law is outside the library,
and pyoperon (:mod:`.gp`) searches for it within a time budget shared by the whole fit; its
candidates join the sparse ones and the usual selection decides. On noisy data whose sparse
error is already at the noise floor, more search could only fit noise, so none runs.

The **noise floor** is estimated without a model: each row's target is predicted by a linear
fit on its nearest neighbours in the (standardised) inputs, leaving the row out. For a smooth
law the residual is noise plus a curvature term that shrinks with the neighbourhood, so its
mean square over the target's variance is an upper estimate of the relative noise variance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .expression import Node
from .gp import GPSettings, gp_candidates


@dataclass(frozen=True)
class FallbackSettings:
    """When and how long the GP stage runs (filled from the fit config)."""

    enabled: bool = True
    min_error: float = 1e-4
    """Run only when the best sparse validation error (1 - R²) is above this..."""
    ratio: float = 10.0
    """...and above this multiple of the estimated noise floor."""
    budget: float = 3.0
    """Seconds of pyoperon per fit, shared by the coordinates that need it."""
    per_coordinate: float = 2.0
    """At most this many seconds for one coordinate (pyoperon counts whole seconds, >= 1)."""


def noise_floor(X: np.ndarray, y: np.ndarray, max_rows: int = 400, seed: int = 0) -> float:
    """Relative noise variance of ``y`` (over its variance), from leave-one-out local linear
    fits on nearest neighbours (module docstring); 0 when the data are too few to tell."""
    n, d = X.shape
    var = float(np.var(y))
    if var <= 0 or n < 2 * d + 6:
        return 0.0
    sd = np.std(X, axis=0)
    keep = sd > 0
    Z = (X[:, keep] - X[:, keep].mean(axis=0)) / sd[keep]
    d = Z.shape[1]
    k = min(n - 1, 2 * d + 4)
    rows = np.arange(n)
    if n > max_rows:
        rows = np.sort(np.random.default_rng(seed).permutation(n)[:max_rows])
    _, nn = cKDTree(Z).query(Z[rows], k=k + 1)
    nn = nn[:, 1:]  # leave the row itself out
    A = np.concatenate([np.ones((len(rows), k, 1)), Z[nn] - Z[rows][:, None, :]], axis=2)
    b = y[nn]
    # the intercept of each local fit is its prediction at the left-out row
    coef = np.einsum("rpk,rk->rp", np.linalg.pinv(A, rcond=1e-8), b)
    resid = coef[:, 0] - y[rows]
    # a leave-one-out local prediction has its own error on top of the row's noise
    inflation = 1.0 + (d + 1) / k
    return float(np.mean(resid * resid) / inflation / var)


def should_fall_back(best_error: float, floor: float, settings: FallbackSettings) -> bool:
    """Whether the sparse stage's error is both short of the target and far above the floor."""
    return bool(
        settings.enabled
        and math.isfinite(best_error)
        and best_error > settings.min_error
        and best_error > settings.ratio * floor
    )


class GPBudget:
    """Seconds of pyoperon left in one fit."""

    def __init__(self, seconds: float):
        self.left = float(seconds)

    def take(self, settings: FallbackSettings) -> float:
        """Seconds for the next coordinate's run (0: the budget is spent)."""
        limit = min(self.left, settings.per_coordinate)
        return float(math.floor(limit)) if limit >= 1.0 else 0.0

    def spend(self, seconds: float) -> None:
        self.left -= seconds


def gp_fallback_candidates(
    X: np.ndarray, y: np.ndarray, names: Sequence[str], seconds: float, base: GPSettings,
    seed: int, max_rows: int = 500,
) -> tuple[list[tuple[Node, str]], dict]:
    """One pyoperon run of ``seconds`` on at most ``max_rows`` rows; candidates relabelled."""
    rows = np.arange(len(y))
    if len(rows) > max_rows:
        rows = np.sort(np.random.default_rng(seed).permutation(rows)[:max_rows])
    settings = GPSettings(
        time_limit=seconds,
        population_size=base.population_size,
        max_length=base.max_length,
        symbols=base.symbols,
        max_candidates=base.max_candidates,
        local_iterations=base.local_iterations,
    )
    t0 = time.perf_counter()
    found, info = gp_candidates(X[rows], y[rows], names, settings, seed)
    info = dict(info, seconds=round(time.perf_counter() - t0, 3), rows=int(len(rows)))
    return [(tree, "gp fallback: " + src.removeprefix("gp: ")) for tree, src in found], info


def best_refined_error(raw: Sequence[tuple[Node, str]], data, maxiter: int, top: int = 2) -> float:
    """The lowest validation error among the ``top`` most accurate raw candidates after BFGS:
    what the sparse stage reaches (its frequencies, scales and denominators refined)."""
    from .refine import refine_constants
    from .selection import assess

    scored = []
    for tree, source in raw:
        cand = assess(tree, data, source)
        if cand is not None:
            scored.append((cand.val_rel_mse, tree))
    scored.sort(key=lambda t: t[0])
    best = scored[0][0] if scored else float("inf")
    for _err, tree in scored[:top]:
        res = refine_constants(tree, data.variables, data.X_train, data.y_train, maxiter)
        cand = assess(res.tree, data, "")
        if cand is not None:
            best = min(best, cand.val_rel_mse)
    return best
