"""The default search's last stage: genetic programming when the library cannot explain a law.

The sparse stage is fast and exact on laws its library spans. When a coordinate's best
(refined) sparse candidate still misses the validation error ``min_error`` (R² 0.9999 by
default) *and* sits well above the noise floor of its data, the law is outside the library,
and pyoperon (:mod:`.gp`) searches for it within a time budget shared by the whole fit; its
candidates join the sparse ones and the usual selection decides. On noisy data whose sparse
error is already at the noise floor, more search could only fit noise, so none runs.

The **noise floor** is estimated from the sparse candidate's own residual on the training rows:
each row's residual is predicted by a local quadratic fit on its nearest neighbours in the
(standardised) inputs, leaving the row out. A residual that is noise cannot be predicted, and
the estimate is its whole variance: the sparse stage is at the floor. A residual that is a
smooth function of the inputs (a law the library does not span) is predicted, and the estimate
falls far below the error: the law is missing, and the search is worth its time.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .expression import Node
from .gp import GPSettings, gp_candidates, subsample_rows


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


def noise_floor(X: np.ndarray, residual: np.ndarray, y_var: float) -> float:
    """Relative noise variance (over ``y_var``) left in ``residual``: the mean square of its
    leave-one-out local quadratic prediction error (module docstring); 0 when too few rows."""
    n, d = X.shape
    sd = np.std(X, axis=0)
    Z = (X[:, sd > 0] - X[:, sd > 0].mean(axis=0)) / sd[sd > 0]
    d = Z.shape[1]
    quadratic = list(itertools.combinations_with_replacement(range(d), 2))
    if 1 + d + len(quadratic) > n / 8:
        quadratic = []  # too many inputs for local quadratics on these rows: local planes
    p = 1 + d + len(quadratic)
    k = 2 * p + 2
    if y_var <= 0 or n < k + 2:
        return 0.0
    _, nn = cKDTree(Z).query(Z, k=k + 1)
    D = Z[nn[:, 1:]] - Z[:, None, :]  # neighbours relative to the left-out row
    A = np.concatenate(
        [np.ones(D.shape[:2] + (1,)), D] + [D[..., i : i + 1] * D[..., j : j + 1]
                                             for i, j in quadratic],
        axis=2,
    )
    # the intercept of each local fit is its prediction at the left-out row
    coef = np.einsum("rpk,rk->rp", np.linalg.pinv(A, rcond=1e-8), residual[nn[:, 1:]])
    err = coef[:, 0] - residual
    # a local fit's own error adds about p/k of the noise to the left-out row's
    return float(np.mean(err * err) / (1.0 + p / k) / y_var)


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
    rows = subsample_rows(len(y), max_rows, seed)
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


def best_refined(
    raw: Sequence[tuple[Node, str]], data, maxiter: int, top: int = 2
) -> tuple[float, Node | None]:
    """The lowest validation error among the ``top`` most accurate raw candidates after BFGS,
    and that candidate: what the sparse stage reaches (frequencies, scales, denominators
    refined)."""
    from .refine import refine_constants
    from .selection import assess

    scored = []
    for tree, source in raw:
        cand = assess(tree, data, source)
        if cand is not None:
            scored.append((cand.val_rel_mse, tree))
    scored.sort(key=lambda t: t[0])
    best, best_tree = (scored[0][0], scored[0][1]) if scored else (float("inf"), None)
    for _err, tree in scored[:top]:
        res = refine_constants(tree, data.variables, data.X_train, data.y_train, maxiter)
        cand = assess(res.tree, data, "")
        if cand is not None and cand.val_rel_mse < best:
            best, best_tree = cand.val_rel_mse, res.tree
    return best, best_tree
