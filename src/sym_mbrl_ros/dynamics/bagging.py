"""Bagging a symbolic model: members fitted on bootstrap resamples of trajectory blocks.

A member is the model fitted again on a moving-block bootstrap of the data
(:func:`.segments.block_bootstrap`): blocks of the trajectory segments drawn with replacement.
By default a member keeps the chosen structure and refits its constants (one Levenberg-Marquardt
run on the k-step loss along the resampled blocks, from the model's constants); with
``bagging_structure`` it is a whole fit (search, selection and all) on the resampled rows.

The spread of the members' predictions is the model's uncertainty: where the data pin the
constants down the members agree, away from the data they drift apart (a constant of ``x**3``
that is uncertain by 1 % moves the prediction by 1 % of ``x**3``, which grows with ``x``).
:func:`disagreement` puts it in units of each coordinate's typical one-step change, so one
threshold serves every coordinate (``MBPOConfig.rollout_max_disagreement``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .expression import Node
from .multistep import coordinate_weights, model_stepper, subsample
from .refine import refine_rollout
from .segments import block_bootstrap, make_windows

if TYPE_CHECKING:
    from .symbolic import SymbolicDynamics


def fit_members(
    model: SymbolicDynamics,
    trees: Sequence[Node],
    segments: Sequence[np.ndarray],
    s: np.ndarray,
    a: np.ndarray,
    s2: np.ndarray,
    dt_rows: np.ndarray | None,
    increments: np.ndarray,
    rng: np.random.Generator,
) -> tuple[list[list[Node]], dict[str, Any]]:
    """``bagging_members`` members of a fitted model and a record of how they were made."""
    cfg = model.config
    members: list[list[Node]] = []
    horizon = max(1, int(cfg.multistep_horizon))
    weights = coordinate_weights(model, increments)
    for _ in range(int(cfg.bagging_members)):
        blocks = block_bootstrap(segments, cfg.bagging_block, rng)
        if cfg.bagging_structure:
            members.append(_refit(model, blocks, s, a, s2, dt_rows))
            continue
        windows = subsample(make_windows(blocks, s, a, s2, horizon, dt_rows),
                            cfg.multistep_max_windows, rng)
        exprs, step = model_stepper(model, trees)
        fit = refine_rollout(step, [e.params for e in exprs], windows, weights,
                             model.angle_coords, cfg.multistep_max_evaluations)
        members.append([e.with_params(p) for e, p in zip(exprs, fit.params)])
    info = {
        "members": len(members),
        "kind": "structure" if cfg.bagging_structure else "constants",
        "block": int(cfg.bagging_block),
        "horizon": horizon,
    }
    return members, info


def _refit(model: SymbolicDynamics, blocks, s, a, s2, dt_rows) -> list[Node]:
    """A whole fit on the rows of the resampled blocks, in block order."""
    rows = np.concatenate(blocks)
    settings = {**model.config.__dict__, "bagging_members": 0}
    member = type(model)(model.state_names, model.action_names, model.angle_coords,
                         model.static_coords, backend=model.backend, seed=model.seed,
                         invariant_coords=model.invariant_coords, dt=model.dt, **settings)
    dt = None if dt_rows is None else dt_rows[rows]
    member.fit(s[rows], a[rows], s2[rows], dt=dt)
    if model.is_continuous:
        member.integrator = model.integrator  # one integrator: the spread is the laws'
        return member.derivative_trees()
    return member.trees()


def member_models(model: SymbolicDynamics, members: Sequence[Sequence[Node]]) -> list:
    """One :class:`SymbolicDynamics` per member (sharing the model's settings), for prediction."""
    out = []
    for trees in members:
        m = copy.copy(model)
        m._members = []
        m._member_models = None
        if model.is_continuous:
            m._set_derivatives(list(trees), model.integrator)
        else:
            m._set_trees(list(trees))
        out.append(m)
    return out


def spread(predictions, centre, angle_coords: Sequence[int]):
    """Standard deviation over members (axis 0) of (K, B, n) predictions, deviations taken from
    ``centre`` (B, n) and wrapped for angle coordinates; numpy or torch."""
    dev = predictions - centre[None]
    if angle_coords:
        if isinstance(dev, np.ndarray):
            dev = dev.copy()
            dev[..., list(angle_coords)] = (dev[..., list(angle_coords)] + math.pi) % (
                2 * math.pi) - math.pi
        else:
            import torch

            cols = list(dev.unbind(-1))
            for i in angle_coords:
                cols[i] = torch.remainder(cols[i] + math.pi, 2 * math.pi) - math.pi
            dev = torch.stack(cols, dim=-1)
    mean = dev.mean(0)
    return ((dev - mean[None]) ** 2).mean(0) ** 0.5


def disagreement(std, scale: np.ndarray):
    """Per row, the largest member spread of a coordinate in units of its typical one-step
    change (``scale``; coordinates with scale 0 are left out); numpy or torch."""
    keep = [i for i, v in enumerate(scale) if v > 0]
    if not keep:
        return std[..., 0] * 0.0
    ratio = std[..., keep] / (scale[keep] if isinstance(std, np.ndarray)
                              else std.new_tensor(scale[keep]))
    return ratio.max(-1) if isinstance(std, np.ndarray) else ratio.amax(-1)
