"""The ``sparse`` search backend: sequentially thresholded least squares over a term library.

For one coordinate's increment it builds the library matrix (columns scaled to unit RMS, the
target to unit variance), runs STLSQ for a path of thresholds, and returns the distinct supports
it finds, each with its least-squares coefficients. The Pareto front of those supports
(validation error against size) goes on to BFGS refinement, both as they are and with a
frequency and phase inside each ``sin``/``cos`` (``c*sin(w*q + p)``, started at w=1, p=0); the
final pick among the refined ones is :func:`~sym_mbrl_ros.dynamics.selection.select`'s.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .expression import BinOp, CompiledExpression, Node, names_in, node_count
from .fallback import (
    FallbackSettings,
    best_refined,
    gp_fallback_candidates,
    noise_floor,
    should_fall_back,
)
from .families import FamilySettings, extend_library, noisy_alternatives
from .gp import settings_from as gp_settings
from .library import (
    LibrarySpec,
    build_library,
    count_trig_calls,
    evaluate_library,
    library_size,
    linear_combination,
    with_inner_constants,
)
from .selection import FitData

if TYPE_CHECKING:
    from .symbolic import SymbolicDynamics, SymbolicDynamicsConfig


@dataclass
class SparseSettings:
    """The sparse backend's knobs (filled from the fit config)."""

    spec: LibrarySpec
    n_thresholds: int = 50
    max_iterations: int = 10
    n_refine: int = 8
    forward_terms: int = 10
    max_terms: int = 20
    refine_inner: bool = True
    max_inner_calls: int = 8
    floor: float = 1e-8


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


def forward_supports(
    A: np.ndarray, b: np.ndarray, max_terms: int
) -> list[tuple[float, tuple[int, ...]]]:
    """Supports of forward stepwise least squares (``min |A_S c - b|``): one term at a time, the
    column that lowers the residual most, for 1..``max_terms`` terms.

    STLSQ thresholds the full solution's coefficients, and where columns are nearly collinear
    (``v`` and ``v**3`` over a small range) it can keep the wrong one of a pair; the forward path
    decides by residual, so the two searches miss different laws, and their union misses fewer.
    """
    k = A.shape[1]
    basis = np.zeros((A.shape[0], 0))
    res = b.astype(float).copy()
    chosen: list[int] = []
    out = []
    cols = A.astype(float).copy()
    norms = np.sqrt(np.sum(cols * cols, axis=0))
    for step in range(min(max_terms, k)):
        with np.errstate(all="ignore"):
            if basis.shape[1]:
                cols = cols - basis @ (basis.T @ cols)
            sq = np.sum(cols * cols, axis=0)
            gain = np.where(sq > 1e-20 * (norms * norms + 1e-300), (cols.T @ res) ** 2 / sq, -1)
        gain[chosen] = -1
        j = int(np.argmax(gain))
        if gain[j] <= 0:
            break
        chosen.append(j)
        u = cols[:, j] / np.sqrt(sq[j])
        basis = np.hstack([basis, u[:, None]])
        res = res - u * (u @ res)
        out.append((float("nan"), tuple(sorted(chosen))))
        if step and float(res @ res) <= 1e-24 * float(b @ b):
            break
    return out


@dataclass
class LibraryMatrix:
    """A library evaluated on the training and validation rows, shared by all coordinates."""

    terms: list[Node | None]
    theta: np.ndarray
    """(n_train, K) term values on the training rows."""
    theta_val: np.ndarray
    """(n_val, K) term values on the validation rows."""
    rms: np.ndarray
    """(K,) root-mean-square of each column: the scaling of the columns."""
    q: np.ndarray
    """Thin QR factors of the scaled training matrix, ``theta / rms = q @ r``."""
    r: np.ndarray
    sizes: np.ndarray
    """(K,) node count of ``c*term`` for each term (the complexity it adds to a candidate)."""
    denominator: Node | None = None
    """When set, every column is a term divided by it, and candidates are ``sum / denominator``
    (:mod:`.families`' rational form)."""

    @classmethod
    def build(
        cls,
        poly_inputs: Sequence[str],
        angle_inputs: Sequence[str],
        spec: LibrarySpec,
        variables: Sequence[str],
        X_train: np.ndarray,
        X_val: np.ndarray,
    ) -> LibraryMatrix:
        """Evaluate the library; columns that are zero or not finite are left out."""
        terms = build_library(poly_inputs, angle_inputs, spec)
        theta = evaluate_library(terms, variables, X_train)
        theta_val = evaluate_library(terms, variables, X_val)
        return cls.from_values(terms, theta, theta_val)

    @classmethod
    def from_values(
        cls,
        terms: list[Node | None],
        theta: np.ndarray,
        theta_val: np.ndarray,
        denominator: Node | None = None,
    ) -> LibraryMatrix:
        """A library from term values computed elsewhere (e.g. averaged over a step's two ends,
        or divided by ``denominator``); columns that are zero or not finite are left out."""
        with np.errstate(all="ignore"):
            rms = np.sqrt(np.mean(theta * theta, axis=0))
        usable = (
            np.isfinite(rms)
            & (rms > 1e-300)
            & np.all(np.isfinite(theta), axis=0)
            & np.all(np.isfinite(theta_val), axis=0)
        )
        keep = np.flatnonzero(usable)
        terms = [terms[j] for j in keep]
        theta, theta_val, rms = theta[:, keep], theta_val[:, keep], rms[keep]
        q, r = np.linalg.qr(theta / rms)
        sizes = np.array([node_count(linear_combination([t], [1.0])) for t in terms], dtype=int)
        return cls(terms, theta, theta_val, rms, q, r, sizes, denominator)


def sparse_candidates(
    data: FitData, library: LibraryMatrix, settings: SparseSettings
) -> tuple[list[tuple[Node, str]], dict]:
    """Candidate increment expressions for one coordinate, plus facts for the report.

    Least squares on a support S uses the QR factors of the whole scaled library:
    ``min |theta_S c - y|`` equals ``min |r_S c - q^T y|``, a problem of K rows instead of n.
    """
    terms, rms, r = library.terms, library.rms, library.r
    y = data.y_train
    y_sd = float(np.std(y)) or float(np.sqrt(np.mean(y * y))) or 1.0
    qty = library.q.T @ y
    G = r.T @ r
    b = r.T @ (qty / y_sd)
    full = np.linalg.lstsq(r, qty / y_sd, rcond=None)[0]
    top = float(np.max(np.abs(full))) if full.size else 1.0
    thresholds = np.geomspace(1e-8, max(top, 1e-7), settings.n_thresholds)
    supports = stlsq_supports(G, b, thresholds, settings.max_iterations)
    seen = {s for _, s in supports}
    supports += [(lam, s) for lam, s in forward_supports(r, qty / y_sd, settings.forward_terms)
                 if s not in seen]

    scored = []
    for lam, support in supports:
        idx = list(support)
        coefs = np.zeros(len(terms))
        if idx:
            sol = np.linalg.lstsq(r[:, idx], qty, rcond=None)[0]
            coefs[idx] = sol / rms[idx]
        if len(data.y_val):
            val = float(np.mean((library.theta_val @ coefs - data.y_val) ** 2) / data.y_var)
        else:  # no validation split: rank on the training error
            val = float(np.mean((library.theta @ coefs - y) ** 2) / data.y_var)
        if not np.isfinite(val) or len(idx) > settings.max_terms:
            continue
        # node count of the tree c_1*t_1 + c_2*t_2 + ...: the terms plus one '+' between each two
        size = int(library.sizes[idx].sum()) + max(len(idx) - 1, 0) if idx else 1
        scored.append((size, val, lam, len(idx), coefs))
    front = support_front(scored, settings.floor, settings.n_refine)

    out: list[tuple[Node, str]] = []
    for _size, _val, lam, k, coefs in front:
        tree = linear_combination(terms, coefs)
        how = "forward stepwise" if np.isnan(lam) else f"STLSQ threshold {lam:.2g}"
        source = f"sparse: {how}, {k} term{'s' if k != 1 else ''}"
        trees = [(tree, source)]
        den = library.denominator
        # over a denominator the frequencies stay 1: the law's trig terms are those of one
        # angle, and each inner pair would cost two more constants in every refinement
        if (settings.refine_inner and den is None
                and 0 < count_trig_calls(tree) <= settings.max_inner_calls):
            trees.append((with_inner_constants(tree), source + ", with frequencies and phases"))
        if den is not None:
            trees = [(BinOp("/", t, den), s + ", over a fitted denominator") for t, s in trees]
        out += trees
    den = library.denominator
    best_row = min(front, key=lambda row: row[1], default=None)
    best = best_row[1] if best_row is not None else float("inf")
    info = {"library_terms": len(terms), "supports": len(supports), "front": len(front),
            "best_validation_error": best}
    if best_row is not None:
        tree = linear_combination(terms, best_row[4])
        info["best_tree"] = tree if den is None else BinOp("/", tree, den)
    return out, info


def support_front(scored: list[tuple], floor: float, limit: int) -> list[tuple]:
    """The Pareto front of ``(size, error, ...)`` rows (errors below ``floor`` tie), simplest
    first. When it is longer than ``limit``: the most accurate member, and the members from two
    below the simplest one within 10x of the best error upwards (where the rule will pick)."""
    front: list[tuple] = []
    for row in sorted(scored, key=lambda r: (r[0], r[1])):
        if not front or max(row[1], floor) < max(front[-1][1], floor):
            front.append(row)
    if len(front) > limit > 0:
        best = min(front, key=lambda r: r[1])
        band = next(k for k, r in enumerate(front) if r[1] <= 10.0 * (best[1] + floor))
        start = max(0, band - 2)
        front = front[start : start + limit - 1]
        if not any(r is best for r in front):
            front.append(best)
    return front


# --- the backend (:mod:`.backends`) -------------------------------------------------------------


def library_spec(
    poly: Sequence[str], angles: Sequence[str], cfg: SymbolicDynamicsConfig, attempt: int
) -> LibrarySpec:
    """The library spec for this attempt, lowered until it has at most ``max_library_terms``."""
    spec = LibrarySpec(
        cfg.degree, tuple(cfg.trig), cfg.trig_pairs, cfg.products, cfg.product_degree
    )
    if attempt:
        spec = dataclasses.replace(spec, degree=max(1, spec.degree - attempt))
    while library_size(len(poly), len(angles), spec) > cfg.max_library_terms:
        if spec.products and spec.product_degree > 1:
            spec = dataclasses.replace(spec, product_degree=spec.product_degree - 1)
        elif spec.trig_pairs:
            spec = dataclasses.replace(spec, trig_pairs=False)
        elif spec.degree > 1:
            spec = dataclasses.replace(spec, degree=spec.degree - 1)
        elif spec.products:
            spec = dataclasses.replace(spec, products=False)
        else:
            break
    return spec


def settings_from(cfg: SymbolicDynamicsConfig, spec: LibrarySpec) -> SparseSettings:
    """The sparse backend's settings from the fit config."""
    return SparseSettings(
        spec=spec,
        n_thresholds=cfg.n_thresholds,
        n_refine=cfg.n_refine,
        max_terms=cfg.max_candidate_terms,
        refine_inner=cfg.refine_inner,
        max_inner_calls=cfg.max_inner_calls,
        floor=cfg.selection_floor,
    )


def generate(model: SymbolicDynamics, i: int, data: FitData, attempt: int
             ) -> tuple[list[tuple[Node, str]], dict[str, Any]]:
    """Candidates for coordinate ``i``: STLSQ over the library (extended by the term families
    that win, on the first attempt), then pyoperon where they fall short (:func:`gp_fallback`)."""
    cfg = model.config
    poly, angles = model._inputs()
    spec = library_spec(poly, angles, cfg, attempt)
    cache = model._library_cache
    key = (spec, data.X_train.shape, data.X_val.shape)
    library = cache.get(key)
    if library is None:  # every coordinate shares the library matrix and its QR
        library = LibraryMatrix.build(poly, angles, spec, model.variables, data.X_train,
                                      data.X_val)
        cache[key] = library
    settings = settings_from(cfg, spec)
    states = [v for v in poly if v in model.state_names]
    base = library
    if cfg.families and attempt == 0:
        fam = FamilySettings(gain=cfg.family_gain, floor=cfg.error_floor)
        library, choice = extend_library(
            cache, library, data, states, poly, angles, spec, cfg.max_library_terms, fam,
        )
    raw, info = sparse_candidates(data, library, settings)
    best_tree = info.pop("best_tree", None)
    info["library"] = asdict(spec)
    if cfg.families and attempt == 0:
        info["families"] = choice.as_dict()
        _add_noisy_alternatives(cache, base, data, settings, fam, raw, info, best_tree,
                                choice.families)
    gp_fallback(model, i, data, raw, info, poly + angles)
    return raw, info


def _add_noisy_alternatives(cache: dict, base: LibraryMatrix, data: FitData,
                            settings: SparseSettings, fam: FamilySettings, raw: list,
                            info: dict, best_tree: Node | None, chosen: Sequence[str]
                            ) -> None:
    """On noisy data, the candidates of the family libraries that search best join ``raw``
    (:func:`.families.noisy_alternatives`). The noise floor is the fallback's estimate, on the
    best sparse candidate's training residual and the inputs that candidate uses; it is only
    computed where the error is large enough to matter (a simulator's fits skip it)."""
    searched: dict[int, tuple[list, dict]] = {}

    def run(lib: LibraryMatrix) -> tuple[list, dict]:
        if id(lib) not in searched:
            searched[id(lib)] = (lib, *sparse_candidates(data, lib, settings))
        return searched[id(lib)][1:]

    def search(lib: LibraryMatrix) -> float:
        return float(run(lib)[1].get("best_validation_error", float("inf")))

    best = float(info.get("best_validation_error", float("inf")))
    floor = 0.0
    if best_tree is not None and np.isfinite(best) and best >= fam.noisy_min_error:
        floor = _residual_floor(best_tree, data, data.variables, data.variables)
    libraries, noisy = noisy_alternatives(cache, base, data, fam, search, best, floor, chosen)
    info["families"]["noise"] = noisy
    for lib in libraries:
        found, more = run(lib)
        raw += found
        best = min(best, float(more.get("best_validation_error", float("inf"))))
        info["best_validation_error"] = best


def _residual_floor(tree: Node, data: FitData, variables: Sequence[str],
                    names: Sequence[str]) -> float:
    """The relative noise floor (:func:`.fallback.noise_floor`) of ``tree``'s training residual,
    judged against the inputs among ``names`` that the tree uses (all of ``names`` when it
    uses none): a missing term is most often in them, and fewer dimensions give the local fits
    close neighbours. ``variables`` name the columns of ``data.X_train``."""
    variables = list(variables)
    used = names_in(tree) & set(names)
    near = [variables.index(v) for v in names if v in used or not used]
    residual = data.y_train - CompiledExpression(tree, variables).numpy(data.X_train)
    return noise_floor(data.X_train[:, near], residual, data.y_var)


def gp_fallback(model: SymbolicDynamics, i: int, data: FitData, raw: list, info: dict,
                names: list[str]) -> None:
    """Add pyoperon's candidates to ``raw`` where the sparse ones fall short
    (:mod:`.fallback`), within the fit's shared pyoperon budget."""
    cfg = model.config
    settings = FallbackSettings(cfg.gp_fallback, cfg.gp_fallback_error, cfg.gp_fallback_ratio,
                                cfg.gp_fallback_time)
    budget = model._library_cache.get("gp_budget")
    if not settings.enabled or budget is None or info.get("best_validation_error", 0) <= (
        settings.min_error
    ):
        return
    best, tree = best_refined(raw, data, cfg.bfgs_maxiter)
    if tree is None:
        return
    floor = _residual_floor(tree, data, model.variables, names)
    info["gp_fallback"] = {"sparse_error": best, "noise_floor": floor, "ran": False}
    if not should_fall_back(best, floor, settings):
        return
    seconds = budget.take(settings)
    if not seconds:
        info["gp_fallback"]["skipped"] = "the fit's pyoperon budget is spent"
        return
    gp = gp_settings(cfg)  # its time limit is the fallback's own budget (``seconds``)
    cols = [model.variables.index(v) for v in names]
    t0 = time.perf_counter()
    found, gp_info = gp_fallback_candidates(
        data.X_train[:, cols], data.y_train, names, seconds, gp, model.seed * 7919 + 101 * i,
        cfg.gp_max_rows,
    )
    budget.spend(time.perf_counter() - t0)
    raw += found
    info["gp_fallback"].update(ran=True, **gp_info)
