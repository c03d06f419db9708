"""The ``sparse`` search backend: sequentially thresholded least squares over a term library.

For one coordinate's increment it builds the library matrix (columns scaled to unit RMS, the
target to unit variance), runs STLSQ for a path of thresholds, and returns the distinct supports
it finds, each with its least-squares coefficients, best first by validation error plus a
complexity penalty. The best few go on to BFGS refinement, both as they are and with a
frequency and phase inside each ``sin``/``cos`` (``c*sin(w*q + p)``, started at w=1, p=0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .expression import Node, node_count
from .library import (
    LibrarySpec,
    build_library,
    count_trig_calls,
    evaluate_library,
    linear_combination,
    with_inner_constants,
)
from .selection import FitData


@dataclass
class SparseSettings:
    """The sparse backend's knobs (filled from the fit config)."""

    spec: LibrarySpec
    n_thresholds: int = 50
    max_iterations: int = 10
    n_refine: int = 4
    refine_inner: bool = True
    max_inner_calls: int = 8
    penalty: float = 0.01
    floor: float = 1e-12


def stlsq_supports(
    G: np.ndarray, b: np.ndarray, thresholds: Sequence[float], max_iterations: int
) -> list[tuple[float, tuple[int, ...]]]:
    """Distinct supports found by STLSQ on the normal equations ``G xi = b``, one per threshold."""
    k = G.shape[0]
    ridge = 1e-10 * (np.trace(G) / max(k, 1))
    eye = np.eye(k)

    def solve(S: np.ndarray) -> np.ndarray:
        xi = np.zeros(k)
        if S.any():
            idx = np.flatnonzero(S)
            try:
                xi[idx] = np.linalg.solve(
                    G[np.ix_(idx, idx)] + ridge * eye[: len(idx), : len(idx)], b[idx]
                )
            except np.linalg.LinAlgError:
                xi[idx] = np.linalg.lstsq(G[np.ix_(idx, idx)], b[idx], rcond=None)[0]
        return xi

    full = solve(np.ones(k, dtype=bool))
    found: dict[tuple[int, ...], float] = {}
    for lam in thresholds:
        S = np.abs(full) >= lam
        xi = full
        for _ in range(max_iterations):
            xi = solve(S)
            S_new = np.abs(xi) >= lam
            S_new &= S
            if np.array_equal(S_new, S):
                break
            S = S_new
        support = tuple(int(j) for j in np.flatnonzero(S))
        found.setdefault(support, float(lam))
    return [(lam, s) for s, lam in found.items()]


def sparse_candidates(
    data: FitData,
    poly_inputs: Sequence[str],
    angle_inputs: Sequence[str],
    settings: SparseSettings,
) -> tuple[list[tuple[Node, str]], dict]:
    """Candidate increment expressions for one coordinate, plus facts for the report."""
    terms = build_library(poly_inputs, angle_inputs, settings.spec)
    theta = evaluate_library(terms, data.variables, data.X_train)
    theta_val = evaluate_library(terms, data.variables, data.X_val)
    rms = np.sqrt(np.mean(theta * theta, axis=0))
    usable = np.isfinite(rms) & (rms > 1e-300) & np.all(np.isfinite(theta_val), axis=0)
    keep = np.flatnonzero(usable)
    terms = [terms[j] for j in keep]
    theta, theta_val, rms = theta[:, keep], theta_val[:, keep], rms[keep]
    y = data.y_train
    y_sd = float(np.std(y)) or float(np.sqrt(np.mean(y * y))) or 1.0
    scaled = theta / rms
    G = scaled.T @ scaled
    b = scaled.T @ (y / y_sd)
    full = np.linalg.lstsq(scaled, y / y_sd, rcond=None)[0]
    top = float(np.max(np.abs(full))) if full.size else 1.0
    thresholds = np.geomspace(1e-8, max(top, 1e-7), settings.n_thresholds)
    supports = stlsq_supports(G, b, thresholds, settings.max_iterations)

    scored = []
    for lam, support in supports:
        idx = list(support)
        coefs = np.zeros(len(terms))
        if idx:
            sol = np.linalg.lstsq(scaled[:, idx], y, rcond=None)[0]
            coefs[idx] = sol / rms[idx]
        tree = linear_combination(terms, coefs)
        pred_val = theta_val @ coefs
        val = float(np.mean((pred_val - data.y_val) ** 2) / data.y_var) if len(data.y_val) else 0.0
        if not np.isfinite(val):
            continue
        score = float(np.log(val + settings.floor) + settings.penalty * node_count(tree))
        scored.append((score, lam, len(idx), tree))
    scored.sort(key=lambda t: (t[0], t[2]))

    out: list[tuple[Node, str]] = []
    for _score, lam, k, tree in scored[: settings.n_refine]:
        source = f"sparse: STLSQ threshold {lam:.2g}, {k} term{'s' if k != 1 else ''}"
        out.append((tree, source))
        if settings.refine_inner and 0 < count_trig_calls(tree) <= settings.max_inner_calls:
            out.append((with_inner_constants(tree), source + ", with frequencies and phases"))
    info = {"library_terms": len(terms), "supports": len(supports)}
    return out, info
