"""BFGS refinement of an expression's constants (``scipy.optimize.minimize(method='BFGS')``).

The loss is the mean squared error divided by the target's variance. Its gradient is exact: the
Jacobian of the expression with respect to its constants comes from one reverse pass over the
compiled program (:meth:`CompiledExpression.value_and_jacobian`). Each constant is rescaled by
the root-mean-square of its Jacobian column, so that a coefficient of ``x**3`` and a phase inside
``sin`` take steps of comparable size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from .expression import CompiledExpression, Node, simplify


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
