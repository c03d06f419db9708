"""Trajectory segments in a table of transitions, and the k-step windows cut from them.

Transitions are rows ``(s_t, a_t, s'_t)``. Rows ``t`` and ``t + 1`` belong to one *segment*
when the recorded next state of row ``t`` is the state of row ``t + 1`` (within a tolerance;
angle coordinates compared modulo 2 pi) and, where episode ids are given, both rows are in the
same episode. A segment is a piece of trajectory: a model can be rolled along it, which is what
the multi-step (simulation-error) loss of :func:`.refine.refine_rollout` needs, and resampling
whole pieces of it keeps that possible (:func:`block_bootstrap`).

Example::

    segs = find_segments(states, next_states)
    windows = make_windows(segs, states, actions, next_states, horizon=8)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONTIGUITY_TOL = 1e-9
"""Relative tolerance of "next state of row t = state of row t + 1": both values come from
one measurement, so they agree to round-off unless a row was dropped in between."""


def find_segments(
    states: np.ndarray,
    next_states: np.ndarray,
    episodes: np.ndarray | None = None,
    angle_coords: Sequence[int] = (),
    tol: float = CONTIGUITY_TOL,
) -> list[np.ndarray]:
    """Row indices of each segment, in order; every row is in exactly one segment."""
    n = len(states)
    if n == 0:
        return []
    gap = next_states[:-1] - states[1:]
    for i in angle_coords:
        gap[:, i] = (gap[:, i] + math.pi) % (2 * math.pi) - math.pi
    size = 1.0 + np.maximum(np.abs(next_states[:-1]), np.abs(states[1:]))
    joined = np.all(np.abs(gap) <= tol * size, axis=1)
    if episodes is not None:
        ep = np.asarray(episodes)
        joined &= ep[1:] == ep[:-1]
    cut = np.flatnonzero(~joined) + 1
    bounds = np.concatenate([[0], cut, [n]])
    return [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def split_blocks(segments: Sequence[np.ndarray], block: int) -> list[np.ndarray]:
    """Segments cut into consecutive blocks of at most ``block`` rows (the last may be shorter)."""
    out = []
    for seg in segments:
        out += [seg[k : k + block] for k in range(0, len(seg), max(1, block))]
    return out


def block_bootstrap(
    segments: Sequence[np.ndarray], block: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """A moving-block bootstrap: blocks of the segments drawn with replacement until they hold
    as many rows as the data. A long recording (one segment on a robot that never resets) is
    resampled as well as many short episodes are."""
    blocks = split_blocks(segments, block)
    total = sum(len(b) for b in blocks)
    out: list[np.ndarray] = []
    rows = 0
    while rows < total:
        b = blocks[int(rng.integers(len(blocks)))]
        out.append(b)
        rows += len(b)
    return out


@dataclass
class Windows:
    """Windows of up to ``horizon`` steps along segments, padded to one array shape."""

    start: np.ndarray
    """(W, n) observed state at the start of each window."""
    actions: np.ndarray
    """(W, k, m) action of each step (a padded step repeats the last real one)."""
    targets: np.ndarray
    """(W, k, n) observed state after each step."""
    dt: np.ndarray
    """(W, k) length of each step (padded steps repeat the last real one)."""
    mask: np.ndarray
    """(W, k) True where the step is real (inside the segment)."""

    @property
    def horizon(self) -> int:
        return int(self.mask.shape[1])

    def __len__(self) -> int:
        return int(self.start.shape[0])


def make_windows(
    segments: Sequence[np.ndarray],
    states: np.ndarray,
    actions: np.ndarray,
    next_states: np.ndarray,
    horizon: int,
    dt: np.ndarray | None = None,
) -> Windows:
    """One window per row: from that row's state, the next ``horizon`` steps of its segment."""
    k = max(1, int(horizon))
    n_rows = sum(len(s) for s in segments)
    idx = np.zeros((n_rows, k), dtype=np.int64)
    mask = np.zeros((n_rows, k), dtype=bool)
    w = 0
    for seg in segments:
        L = len(seg)
        for j in range(L):
            m = min(k, L - j)
            idx[w, :m] = seg[j : j + m]
            idx[w, m:] = seg[j + m - 1]
            mask[w, :m] = True
            w += 1
    step_dt = np.ones(len(states)) if dt is None else np.asarray(dt, dtype=np.float64)
    return Windows(
        start=states[idx[:, 0]],
        actions=actions[idx],
        targets=next_states[idx],
        dt=step_dt[idx],
        mask=mask,
    )
