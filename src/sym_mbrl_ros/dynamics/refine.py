"""Refinement of constants: BFGS on one expression's one-step error, and Levenberg-Marquardt on
a whole model's k-step simulation error along trajectory segments (:func:`refine_rollout`).

BFGS: the loss is the mean squared error divided by the target's variance. Its gradient is
exact: the Jacobian of the expression with respect to its constants comes from one reverse pass
over the compiled program (:meth:`CompiledExpression.value_and_jacobian`). Each constant is
rescaled by the root-mean-square of its Jacobian column, so that a coefficient of ``x**3`` and a
phase inside ``sin`` take steps of comparable size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares, minimize

from .expression import CompiledExpression, Node, simplify
from .segments import Windows


@dataclass
class RefineResult:
    """Outcome of :func:`refine_constants`."""

    tree: Node
    """The expression with refined constants (the input tree if nothing improved)."""
    loss_before: float
    loss_after: float
    n_params: int
    iterations: int


def refine_constants(
    tree: Node,
    variables: Sequence[str],
    X: np.ndarray,
    y: np.ndarray,
    maxiter: int = 200,
) -> RefineResult:
    """Refine the constants of ``tree`` by BFGS to fit ``y`` on the rows of ``X``."""
    expr = CompiledExpression(tree, variables)
    p0 = expr.params.copy()
    var = float(np.var(y)) or float(np.mean(y * y)) or 1.0
    n = X.shape[0]
    f0, J0 = expr.value_and_jacobian(X, p0)
    loss0 = float(np.mean((f0 - y) ** 2) / var) if np.all(np.isfinite(f0)) else np.inf
    if expr.n_params == 0 or not np.isfinite(loss0):
        return RefineResult(tree, loss0, loss0, expr.n_params, 0)
    col = np.sqrt(np.mean(J0 * J0, axis=0) / var) if np.all(np.isfinite(J0)) else np.ones(len(p0))
    scale = np.where(np.isfinite(col) & (col > 1e-12), 1.0 / np.where(col > 1e-12, col, 1.0), 1.0)
    best = {"loss": loss0, "p": p0}

    def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
        p = z * scale
        f, J = expr.value_and_jacobian(X, p)
        r = f - y
        loss = float(np.mean(r * r) / var)
        if not np.isfinite(loss) or not np.all(np.isfinite(J)):
            # a large finite value makes the line search step back instead of stopping
            return 1e30, np.zeros_like(z)
        if loss < best["loss"]:
            best["loss"], best["p"] = loss, p.copy()
        grad = (2.0 / (n * var)) * (J.T @ r) * scale
        return loss, grad

    res = minimize(
        objective,
        p0 / scale,
        jac=True,
        method="BFGS",
        options={"maxiter": maxiter, "gtol": 1e-12},
    )
    if best["loss"] >= loss0:
        return RefineResult(tree, loss0, loss0, expr.n_params, int(res.nit))
    return RefineResult(
        expr.with_params(best["p"]), loss0, best["loss"], expr.n_params, int(res.nit)
    )


def snap_constants(
    tree: Node,
    variables: Sequence[str],
    X: np.ndarray,
    y: np.ndarray,
    floor: float = 1e-12,
    max_params: int = 40,
) -> Node:
    """Set constants to 0, to the nearest integer, or to 12 significant digits where that costs
    nothing measurable (relative MSE up by at most ``1e-6`` relative plus ``floor``).

    This removes the round-off debris of refinement (``1e-16 + ...``, ``sin(1.0000000002*q)``)
    so that an exact model prints as one; the tree is then simplified.
    """
    expr = CompiledExpression(tree, variables)
    var = float(np.var(y)) or float(np.mean(y * y)) or 1.0

    def loss(p: np.ndarray) -> float:
        r = expr.numpy(X, p) - y
        return float(np.mean(r * r) / var)

    return snap_with_loss(expr, loss, floor, max_params)


def snap_with_loss(
    expr: CompiledExpression,
    loss: Callable[[np.ndarray], float],
    floor: float = 1e-12,
    max_params: int = 40,
) -> Node:
    """:func:`snap_constants` for any loss of the parameters (e.g. through an integrator)."""
    tree = expr.tree
    if expr.n_params == 0 or expr.n_params > max_params:
        return tree

    def safe(p: np.ndarray) -> float:
        value = loss(p)
        return value if np.isfinite(value) else np.inf

    p = expr.params.copy()
    base = safe(p)
    if not np.isfinite(base):
        return tree
    for k in np.argsort(np.abs(p)):
        c = p[k]
        options = [0.0]
        if abs(c - round(c)) <= 1e-8 * max(1.0, abs(c)):
            options.append(float(round(c)))
        options.append(float(f"{c:.12g}"))
        for value in options:
            if value == c:
                break
            trial = p.copy()
            trial[k] = value
            new = safe(trial)
            if new <= base * (1 + 1e-6) + floor:
                p, base = trial, new
                break
    return simplify(expr.with_params(p))


# --- multi-step (simulation-error) refinement --------------------------------------------------

RolloutStep = Callable[[Sequence[np.ndarray], np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""(constants of each expression, states (W, n), actions (W, m), step lengths (W,)) -> next
states (W, n): one step of the whole model."""


@dataclass
class RolloutFit:
    """Outcome of :func:`refine_rollout`."""

    params: list[np.ndarray]
    """Constants of each expression (the starting ones if nothing improved)."""
    loss_before: float
    loss_after: float
    evaluations: int


def rollout_errors(
    step: RolloutStep,
    params: Sequence[np.ndarray],
    windows: Windows,
    weights: np.ndarray,
    angle_coords: Sequence[int] = (),
) -> np.ndarray:
    """(W, k, n) weighted errors of the model rolled along every window, each step against the
    observed state (0 on padded steps); a prediction that is not finite counts as 1e3."""
    x = windows.start
    out = []
    for j in range(windows.horizon):
        with np.errstate(all="ignore"):
            x = step(params, x, windows.actions[:, j], windows.dt[:, j])
            err = x - windows.targets[:, j]
        for i in angle_coords:
            err[:, i] = (err[:, i] + np.pi) % (2 * np.pi) - np.pi
        err = np.where(np.isfinite(err), err * weights, 1e3)
        out.append(np.where(windows.mask[:, j, None], err, 0.0))
    return np.stack(out, axis=1)


def rollout_residuals(
    step: RolloutStep,
    params: Sequence[np.ndarray],
    windows: Windows,
    weights: np.ndarray,
    angle_coords: Sequence[int] = (),
) -> np.ndarray:
    """:func:`rollout_errors` flattened and divided by the root of the number of real entries,
    so that the sum of squares is the mean weighted squared error."""
    err = rollout_errors(step, params, windows, weights, angle_coords)
    count = max(1, int(windows.mask.sum())) * max(1, int(np.sum(weights > 0)))
    return err.ravel() / np.sqrt(count)


def window_errors(
    step: RolloutStep,
    params: Sequence[np.ndarray],
    windows: Windows,
    weights: np.ndarray,
    angle_coords: Sequence[int] = (),
) -> np.ndarray:
    """(W,) mean weighted squared error of each window (over its real steps and the weighted
    coordinates)."""
    err = rollout_errors(step, params, windows, weights, angle_coords)
    per = np.sum(err * err, axis=(1, 2))
    return per / (np.maximum(1, windows.mask.sum(1)) * max(1, int(np.sum(weights > 0))))


def refine_rollout(
    step: RolloutStep,
    params: Sequence[np.ndarray],
    windows: Windows,
    weights: np.ndarray,
    angle_coords: Sequence[int] = (),
    max_evaluations: int = 20,
    free: Sequence[int] | None = None,
) -> RolloutFit:
    """Refine the constants of the expressions ``free`` (default: all) at once by
    Levenberg-Marquardt on the k-step simulation error along ``windows``
    (:func:`rollout_residuals`); the others stay as they are.

    With noisy states the one-step fit is biased: the regressors carry the same noise as the
    target (errors in variables), and the fit pays to explain it. Rolled over k steps the
    law's effect grows with each step while the noise of the start state does not, so the
    constants that minimise the simulation error are much less biased.
    ``max_evaluations`` is per constant (the Jacobian is by finite differences).
    """
    start = [np.asarray(p, dtype=np.float64).copy() for p in params]
    free = list(range(len(start))) if free is None else list(free)
    sizes = [len(start[k]) for k in free]
    bounds = np.cumsum([0] + sizes)

    def split(z: np.ndarray) -> list[np.ndarray]:
        out = list(start)
        for k, e in enumerate(free):
            out[e] = z[bounds[k] : bounds[k + 1]]
        return out

    def resid(z: np.ndarray) -> np.ndarray:
        return rollout_residuals(step, split(z), windows, weights, angle_coords)

    z0 = np.concatenate([start[k] for k in free]) if sum(sizes) else np.zeros(0)
    r0 = resid(z0)
    loss0 = float(r0 @ r0)
    if not len(z0) or not np.isfinite(loss0) or len(r0) <= len(z0):
        return RolloutFit(start, loss0, loss0, 1)
    try:
        res = least_squares(resid, z0, method="lm", x_scale="jac", xtol=1e-10, ftol=1e-10,
                            gtol=1e-12, max_nfev=max_evaluations * (len(z0) + 1))
    except (ValueError, np.linalg.LinAlgError):
        return RolloutFit(start, loss0, loss0, 1)
    loss = 2.0 * float(res.cost)
    if not np.all(np.isfinite(res.x)) or not loss < loss0:
        return RolloutFit(start, loss0, loss0, int(res.nfev))
    return RolloutFit(split(res.x), loss0, loss, int(res.nfev))
