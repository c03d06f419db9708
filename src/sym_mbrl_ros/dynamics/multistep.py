"""The k-step (simulation-error) refinement of a fitted :class:`SymbolicDynamics`.

After the search and the one-step selection, the model is rolled ``horizon`` steps along the
data's trajectory segments (:func:`.segments.find_segments`):

1. **selection on trajectories** (:func:`select_on_trajectories`): per coordinate, the chosen
   expression and the other members of its one-step Pareto front get their constants refined
   on the k-step error of the training windows (the other coordinates held), and the pick is
   :func:`.selection.select`'s rule on the k-step error of the validation windows (the newest
   rows), followed by backward elimination; a law longer than the one-step pick must beat it by
   :data:`SWITCH_SE` standard errors. On noisy states the one-step errors are mostly
   noise, and the rule then keeps too few terms (a damping term lost at 5 % noise) or the wrong
   ones; over k steps a law's effect accumulates while the noise does not.
2. **joint refinement** (:func:`refine_multistep`): every constant of the model at once by
   Levenberg-Marquardt on the k-step error of all windows (:func:`.refine.refine_rollout`).
   On clean data the one-step fit is already at that optimum and nothing changes; on noisy
   states the one-step fit is biased (errors in variables) and this is the standard remedy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .expression import (
    CompiledExpression,
    ExpressionError,
    Node,
    increment_tree,
    next_value_tree,
    simplify,
    to_string,
)
from .refine import RolloutStep, refine_rollout, rollout_residuals, window_errors
from .segments import Windows, make_windows
from .selection import backward_elimination, candidate_from_errors, select, within_noise

if TYPE_CHECKING:
    from .symbolic import SymbolicDynamics

SWITCH_SE = 2.0
"""The trajectory selection replaces the one-step pick by a longer law only when the pick's
k-step validation error exceeds that law's by more than this many paired standard errors (a
shorter law needs the usual one). With one standard error, short noisy segments let one
coordinate's law absorb the errors of the others' (``x' = v`` traded for six terms on 1 %
noisy drag data), and five folds give a loose estimate of that error."""

IMPROVEMENT = 1e-3
"""The refined constants are kept only when they lower the k-step loss by this share: a smaller
gain is round-off, and it would only blur constants that the one-step fit snapped."""


def model_stepper(
    model: SymbolicDynamics, trees: Sequence[Node]
) -> tuple[list[CompiledExpression], RolloutStep]:
    """The model's expressions compiled, and one step of the model as a function of their
    constants (discrete: the next-value expressions; continuous: the laws through the model's
    integrator), static coordinates copied and angles wrapped."""
    exprs = [CompiledExpression(t, model.variables) for t in trees]
    static = list(model.static_coords)
    angles = list(model.angle_coords)
    integrator = model.integrator if model.is_continuous else None

    def evaluate(params: Sequence[np.ndarray], x: np.ndarray, u: np.ndarray) -> np.ndarray:
        X = np.concatenate([x, u], axis=1)
        out = np.empty_like(x)
        for i, expr in enumerate(exprs):
            out[:, i] = expr.numpy(X, params[i])
        return out

    def step(params: Sequence[np.ndarray], x: np.ndarray, u: np.ndarray, dt: np.ndarray):
        if integrator is None:
            nxt = evaluate(params, x, u)
        else:
            nxt = integrator.step(lambda xx, uu: evaluate(params, xx, uu), x, u, dt)
            nxt[:, static] = x[:, static]
        if angles:
            nxt[:, angles] = (nxt[:, angles] + np.pi) % (2 * np.pi) - np.pi
        return nxt

    return exprs, step


def coordinate_weights(model: SymbolicDynamics, increments: np.ndarray) -> np.ndarray:
    """1 / standard deviation of each coordinate's one-step increment (0 for static and
    unchanging coordinates): every coordinate's error counts in units of its typical step."""
    sd = np.std(increments, axis=0)
    w = np.where(sd > 0, 1.0 / np.where(sd > 0, sd, 1.0), 0.0)
    w[list(model.static_coords)] = 0.0
    return w


def subsample(windows: Windows, max_windows: int, rng: np.random.Generator) -> Windows:
    """At most ``max_windows`` windows, a seeded random subset (the cost is linear in them)."""
    if len(windows) <= max_windows:
        return windows
    keep = np.sort(rng.choice(len(windows), size=max_windows, replace=False))
    return Windows(windows.start[keep], windows.actions[keep], windows.targets[keep],
                   windows.dt[keep], windows.mask[keep])


def refine_multistep(
    model: SymbolicDynamics,
    trees: Sequence[Node],
    windows: Windows,
    weights: np.ndarray,
    max_evaluations: int,
    floor: float,
) -> tuple[list[Node], dict[str, Any]]:
    """The trees with constants refined on the k-step loss along ``windows``, and a record of
    what happened (kept only when the loss drops by :data:`IMPROVEMENT` and is above
    ``floor``, the loss of an exact model)."""
    t0 = time.perf_counter()
    exprs, step = model_stepper(model, trees)
    fit = refine_rollout(step, [e.params for e in exprs], windows, weights, model.angle_coords,
                         max_evaluations)
    accepted = fit.loss_before > floor and fit.loss_after < (1 - IMPROVEMENT) * fit.loss_before
    out = [e.with_params(p) for e, p in zip(exprs, fit.params)] if accepted else list(trees)
    info = {
        "horizon": windows.horizon,
        "windows": len(windows),
        "loss_before": fit.loss_before,
        "loss_after": fit.loss_after if accepted else fit.loss_before,
        "accepted": bool(accepted),
        "evaluations": fit.evaluations,
        "seconds": round(time.perf_counter() - t0, 4),
    }
    return out, info


def multistep_loss(model: SymbolicDynamics, trees: Sequence[Node], windows: Windows,
                   weights: np.ndarray) -> float:
    """The k-step loss of a model's expressions along ``windows`` (mean weighted squared error)."""
    exprs, step = model_stepper(model, trees)
    r = rollout_residuals(step, [e.params for e in exprs], windows, weights, model.angle_coords)
    return float(r @ r)


def trajectory_windows(model: SymbolicDynamics, segments, s, a, s2, dt_rows, horizon: int,
                       max_windows: int, rng: np.random.Generator) -> Windows:
    """Windows of ``horizon`` steps from every row of the segments, subsampled to at most
    ``max_windows``."""
    return subsample(make_windows(segments, s, a, s2, horizon, dt_rows), max_windows, rng)


def split_segments(segments, n_train: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Segments cut at the train/validation boundary (rows ``>= n_train`` are validation), so
    no training window reaches into the validation rows."""
    train = [seg[seg < n_train] for seg in segments]
    val = [seg[seg >= n_train] for seg in segments]
    return [seg for seg in train if len(seg)], [seg for seg in val if len(seg)]


def select_on_trajectories(
    model: SymbolicDynamics,
    trees: Sequence[Node],
    fronts: dict[int, list[Node]],
    train: Windows,
    val: Windows,
    weights: np.ndarray,
) -> tuple[list[Node], dict[str, Any]]:
    """Per coordinate with a front, the pick among the chosen tree and its front on the k-step
    validation error (module docstring, step 1); returns the trees and what was chosen.

    Discrete models' fronts and picks are increments (``x' = x + increment``), so that
    backward elimination never offers to drop the identity.
    """
    cfg = model.config
    trees = list(trees)
    discrete = not model.is_continuous
    info: dict[str, Any] = {}
    for i in sorted(fronts):
        name = model.state_names[i]

        def consider(tree: Node, source: str, i=i, name=name):
            trial = list(trees)
            trial[i] = next_value_tree(name, tree) if discrete else tree
            try:
                exprs, step = model_stepper(model, trial)
            except ExpressionError:
                return None
            fit = refine_rollout(step, [e.params for e in exprs], train, weights,
                                 model.angle_coords, cfg.multistep_max_evaluations, free=[i])
            refined = simplify(exprs[i].with_params(fit.params[i]))
            if discrete:
                refined = increment_tree(name, refined)
            tr = window_errors(step, fit.params, train, weights, model.angle_coords)
            va = window_errors(step, fit.params, val, weights, model.angle_coords)
            return candidate_from_errors(refined, source, tr, va, 1.0, cfg.validation_folds)

        current = increment_tree(name, trees[i]) if discrete else trees[i]
        seen, cands = set(), []
        for k, tree in enumerate([current, *fronts[i]]):
            key = to_string(tree)
            if key in seen:
                continue
            seen.add(key)
            cand = consider(tree, "one-step pick" if k == 0 else "one-step front")
            if cand is not None:
                cands.append(cand)
        if not cands:
            continue
        sel = backward_elimination(select(cands, cfg.selection_floor), cands, consider,
                                   cfg.selection_floor)
        final = sel.chosen
        pick = cands[0] if cands[0].source == "one-step pick" else None
        if pick is not None and final.complexity > pick.complexity and within_noise(
            pick, final, cfg.selection_floor, SWITCH_SE
        ):
            final = pick  # a longer law than the one-step pick needs more than noise to win
        chosen = final.tree
        trees[i] = next_value_tree(name, chosen) if discrete else chosen
        info[name] = {
            "chosen": to_string(chosen, 4),
            "source": final.source,
            "candidates": len(cands),
            "validation_loss": final.val_rel_mse,
            "changed": to_string(chosen) != to_string(current),
        }
    return trees, info
