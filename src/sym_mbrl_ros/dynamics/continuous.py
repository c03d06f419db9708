"""Fitting a continuous-time symbolic model ``x' = f(x, u)`` from sampled transitions.

A discrete model of a sampled ODE has to spell out the integrator's one-step map, a Taylor
series in ``dt`` with a term for every product of the law's pieces; a continuous model states
the law itself (``theta_ddot = 15*sin(theta) + 3*torque``) and lets an integrator do the rest.

0. **An exact warm start is kept.** When the previous model, through an integrator whose
   substeps are chosen on the new rows (step 2), predicts every coordinate's increment on the
   new rows to within ``exact_error`` (1 - R²), nothing is searched: the law is the law, and
   its only challengers are itself less a term (backward elimination through the integrator).
   Judged on midpoint targets instead, a cart-pole law that had been exact for hundreds of steps
   looked wrong on the rows where the pole spun at 25 rad/s (the midpoint rule is only O(dt²)),
   and each refit searched again for a minute, and sometimes kept a worse law.

For each state coordinate (static ones have ``x' = 0``):

1. **Candidates** for the derivative come from the search backend run on midpoint targets:
   ``(x1 - x0) / dt`` against the inputs at the step's midpoint ``((x0 + x1) / 2, u)``, which
   is exact to O(dt²). Each state coordinate that is not an angle is also a candidate on its
   own (``theta' = theta_dot``), and a warm start's derivative is one too. Their constants are
   first refined (BFGS) on the midpoint targets.
2. The **substeps** of the integrator are the fewest (1, 2, 4, ...) for which halving the step
   changes the one-step prediction of the midpoint model by less than ``integrator_tol`` of each
   increment's standard deviation, unless the config fixes them.
3. **Through the integrator**: each candidate's constants are refined by Levenberg-Marquardt on
   the one-step prediction error of its coordinate's increment, the other coordinates' laws held
   at their current choice, and it is assessed on the validation rows the same way. The pick is
   :func:`~sym_mbrl_ros.dynamics.selection.select`'s (the simplest within one standard error of
   the best), followed by backward elimination (a term goes while the rule still accepts).
   Two sweeps over the coordinates let each law settle against the others' final form.
4. A last joint polish of every constant on all rows, and constants snapped to 0, integers or
   12 digits where that costs nothing measurable (``theta_dot`` rather than
   ``1.0000000003*theta_dot``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.optimize import least_squares

from .expression import (
    CompiledExpression,
    ExpressionError,
    Name,
    Node,
    Num,
    fold_like_terms,
    simplify,
    to_string,
)
from .fallback import noise_floor
from .integrate import Integrator
from .refine import refine_constants, snap_with_loss
from .selection import (
    Candidate,
    FitData,
    backward_elimination,
    candidate_from_errors,
    evaluable,
    make_fit_data,
    rank,
    select,
)

if TYPE_CHECKING:
    from .symbolic import SymbolicDynamics

SUBSTEP_CHOICES = (1, 2, 4, 8, 16, 32)


@dataclass
class StepRows:
    """Transitions as the integrator sees them: inputs at the start, increments, step lengths."""

    X0: np.ndarray
    """(N, n + m) state and action at the start of each step."""
    D: np.ndarray
    """(N, n) increments (wrapped for angle coordinates)."""
    dt: np.ndarray
    """(N,) length of each step."""
    n_state: int

    def take(self, idx: np.ndarray) -> StepRows:
        return StepRows(self.X0[idx], self.D[idx], self.dt[idx], self.n_state)


@dataclass
class ContinuousFit:
    """What :func:`fit_continuous` found."""

    derivatives: list[Node]
    integrator: Integrator
    report: list[dict[str, Any]]
    validation_r2: dict[str, float | None] = field(default_factory=dict)
    fronts: dict[int, list[Node]] = field(default_factory=dict)
    """Per learned coordinate, the other members of the Pareto front it was picked from."""


class LawSet:
    """The derivative expressions of all coordinates, compiled, stepped by an integrator."""

    def __init__(self, trees: Sequence[Node], variables: Sequence[str], n_state: int):
        self.variables = tuple(variables)
        self.n_state = n_state
        self.compiled = [CompiledExpression(t, self.variables) for t in trees]

    def replace(self, i: int, tree: Node) -> None:
        self.compiled[i] = CompiledExpression(tree, self.variables)

    def derivative(self, override: dict[int, tuple[CompiledExpression, np.ndarray]] | None = None):
        """``f(x, u)`` for numpy, with coordinate i's expression and parameters overridden."""
        override = override or {}

        def f(x: np.ndarray, u: np.ndarray) -> np.ndarray:
            X = np.concatenate([x, u], axis=1)
            out = np.empty_like(x)
            for i, expr in enumerate(self.compiled):
                if i in override:
                    e, p = override[i]
                    out[:, i] = e.numpy(X, p)
                else:
                    out[:, i] = expr.numpy(X)
            return out

        return f

    def increments(self, rows: StepRows, integrator: Integrator, override=None) -> np.ndarray:
        """Predicted increments (N, n) of one step from ``rows.X0`` over ``rows.dt``."""
        x0 = rows.X0[:, : self.n_state]
        u = rows.X0[:, self.n_state :]
        with np.errstate(all="ignore"):
            return integrator.step(self.derivative(override), x0, u, rows.dt) - x0


def fit_continuous(
    model: SymbolicDynamics,
    rows: StepRows,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    X_margin: np.ndarray,
    init: list[Node] | None,
    init_r2: dict,
    init_note: str = "",
) -> ContinuousFit:
    """Learn one derivative expression per coordinate (see the module docstring)."""
    cfg = model.config
    n = rows.n_state
    variables = model.variables
    train, val = rows.take(train_idx), rows.take(val_idx)
    floor = cfg.selection_floor
    poly, _angles = model._inputs()
    kinematic = [v for v in poly if v in model.state_names]
    broken: dict[int, float] = {}
    if init is not None:
        kept, errors, floors = _keep_exact_warm_start(model, rows, train, val, init, init_note)
        if kept is not None:
            return kept
        # a law that was exact and now misses by far more than the new rows' noise has met
        # data it does not explain (a first fit on slow swings, where force*cos(theta) and
        # force*cos(theta)**2 look alike): its midpoint R² may still pass init_accept_r2, so it
        # faces a search again. Sensor noise alone (error near the floor) keeps it.
        broken = {i: err for i, err in errors.items()
                  if err > cfg.exact_error and err > BROKEN_RATIO * floors.get(i, 0.0)
                  and is_exact(init_r2.get(model.state_names[i]), cfg.exact_error)}

    # 1. candidates per coordinate on midpoint targets
    end = rows.X0[:, :n] + rows.D
    X_mid = rows.X0.copy()
    X_mid[:, :n] = 0.5 * (rows.X0[:, :n] + end)
    Z = rows.D / rows.dt[:, None]
    rates = rate_coordinates(model.state_names, Z[train_idx], X_mid[train_idx],
                             [i for i in range(n) if i not in model.static_coords])
    current: list[Node] = []
    pools: dict[int, list[tuple[Node, str]]] = {}
    reports: dict[int, dict[str, Any]] = {}
    for i, name in enumerate(model.state_names):
        if i in model.static_coords or np.all(rows.D[:, i] == 0.0):
            current.append(Num(0.0))
            reports[i] = _fixed_report(name, static=i in model.static_coords)
            continue
        data = make_fit_data(
            variables, X_mid[train_idx], Z[train_idx, i], X_mid[val_idx], Z[val_idx, i],
            X_margin, cfg.margin_bound, rates,
        )
        raw: list[tuple[Node, str]] = []
        if init is not None:
            raw.append((init[i], "init: previous model"))
        raw += [(Name(v), "kinematic: another coordinate") for v in kinematic if v != name]
        rep: dict[str, Any] = {"coordinate": name, "kind": "learned",
                               "angle": i in model.angle_coords}
        pool, rejected, note = _midpoint_pool(model, i, data, raw,
                                              init is not None and i not in broken, init_r2)
        if i in broken:
            note = (f"the warm-start law was exact and is not on the new rows (1 - R² = "
                    f"{broken[i]:.1e} through the integrator): {note}")
        rep["search"] = (init_note + "; " if init_note else "") + note
        rep["n_rejected"] = rejected
        if not pool:
            pool = [(Num(float(np.mean(data.y_train))), "fallback: mean derivative")]
            rep["search"] += "; no candidate could be evaluated, kept the mean derivative"
        best, front = _midpoint_front(pool, data, cfg.validation_folds, floor)
        keep = {to_string(t) for t in front}
        # the integrator refines the midpoint front, plus every warm start and kinematic law
        pools[i] = [(t, s) for t, s in pool
                    if to_string(t) in keep or s.startswith(("init", "kinematic"))]
        reports[i] = rep
        current.append(best)

    # 2. substeps
    laws = LawSet(current, variables, n)
    integrator = _choose_integrator(cfg, laws, rows)

    # 3. through the integrator, two sweeps
    learned = sorted(pools)
    selections: dict[int, Any] = {}
    counts: dict[int, int] = {}
    for sweep in range(2):
        for i in learned:
            if sweep == 0:
                members = list(pools[i])
            else:
                members = [(c.tree, c.source) for c in selections[i].front]
            cands = []
            for tree, source in members:
                cand = _through_integrator(laws, integrator, i, tree, source, train, val, cfg)
                if cand is not None:
                    cands.append(cand)
            if not cands:  # every refinement diverged: keep the midpoint choice
                cand = _through_integrator(laws, integrator, i, current[i], "midpoint choice",
                                           train, val, cfg, refine=False)
                cands = [cand] if cand is not None else []
            if not cands:
                continue
            sel = select(cands, floor)
            if sweep == 1:
                sel = backward_elimination(
                    sel, cands,
                    lambda tree, source, i=i: _through_integrator(
                        laws, integrator, i, tree, source, train, val, cfg),
                    floor,
                )
            selections[i] = sel
            counts[i] = counts.get(i, 0) + len(cands)
            current[i] = sel.chosen.tree
            laws.replace(i, current[i])

    # 4. joint polish on all rows, then snap
    current = _joint_polish(laws, integrator, current, learned, rows, cfg)
    for i in learned:
        current[i] = _snap(laws, integrator, i, current[i], rows, cfg.error_floor)
        laws.replace(i, current[i])

    return _finish(model, current, integrator, reports, selections, counts)


RATE_MAX_ERROR = 0.1
"""A coordinate v is another coordinate q's rate when ``q' = v`` leaves at most this share of
the variance of q's derivative targets (R² >= 0.9): exact data leave ~1e-8, an encoder with 1 %
velocity noise ~1e-3; 5 % noise on a 20 Hz trajectory can leave more, and then nothing is
excluded (the search is as it was)."""


def rate_coordinates(names: Sequence[str], Z: np.ndarray, X: np.ndarray,
                     learned: Sequence[int]) -> tuple[str, ...]:
    """The state coordinates that are the rate of another (``q' = v``: a joint's velocity).

    A velocity is never the argument of a sine in a mechanical law, but it is bounded, so
    the term families would try ``trig(v)``, pair it with the angles and put ``cos(v)**2`` in
    a denominator; on noisy data those candidates join the search (a fake robot's first model
    printed ``.../(cos(theta_dot)**2 + 10.7)``). ``Z``: derivative targets (rows, n), ``X``:
    the inputs whose first n columns are the states, ``learned``: the coordinates to look at.
    """
    out: list[str] = []
    for q in learned:
        z = Z[:, q]
        var = float(np.var(z))
        if not len(z) or var <= 0:
            continue
        for v in learned:
            if v == q or names[v] in out or np.ptp(X[:, v]) == 0:
                continue
            if float(np.mean((z - X[:, v]) ** 2)) <= RATE_MAX_ERROR * var:
                out.append(names[v])
    return tuple(out)


def _finish(model: SymbolicDynamics, current: list[Node], integrator: Integrator,
            reports: dict[int, dict[str, Any]], selections: dict[int, Any],
            counts: dict[int, int]) -> ContinuousFit:
    """The fit's result: laws, integrator, per-coordinate reports and fronts."""
    cfg = model.config
    report: list[dict[str, Any]] = []
    val_r2: dict[str, float | None] = {}
    for i, name in enumerate(model.state_names):
        rep = reports[i]
        if i in selections:
            sel = selections[i]
            ranked = rank([c for c in sel.front if c is not sel.chosen])
            rep.update(
                chosen=sel.chosen.summary(name, text=law_text(name, current[i], 4)),
                reason=sel.reason,
                runner_ups=[
                    c.summary(name, text=law_text(name, c.tree, 4))
                    for c in ranked[: cfg.runner_ups]
                ],
                n_candidates=counts.get(i, 0),
                integrator=integrator.to_dict(),
            )
            rep["chosen"]["source"] = sel.chosen.source
            val_r2[name] = sel.chosen.val_r2
        else:
            val_r2[name] = None
        report.append(rep)
    fronts = {i: [c.tree for c in sel.front if c is not sel.chosen]
              for i, sel in selections.items()}
    return ContinuousFit(current, integrator, report, val_r2, fronts)


# --- step 0: an exact warm start ---------------------------------------------------------------


def _fixed_report(name: str, static: bool) -> dict[str, Any]:
    """The report of a coordinate that is not learned: static, or constant in the data."""
    if static:
        return {"coordinate": name, "kind": "static",
                "chosen": {"expression": f"{law_name(name)} = 0"},
                "reason": "static coordinate: copied through unchanged", "runner_ups": []}
    return {"coordinate": name, "kind": "constant",
            "chosen": {"expression": f"{law_name(name)} = 0", "source": "no change"},
            "reason": "the coordinate never changes in the data", "runner_ups": []}


BROKEN_RATIO = 10.0
"""A once-exact warm start whose error on new rows exceeds this multiple of their noise floor
(:func:`.fallback.noise_floor` of its residuals) is searched again."""


def is_exact(r2: float | None, exact_error: float) -> bool:
    """Whether a validation R² (of an increment) leaves at most ``exact_error`` unexplained."""
    return r2 is not None and bool(np.isfinite(r2)) and 1.0 - float(r2) <= exact_error


def _keep_exact_warm_start(model: SymbolicDynamics, rows: StepRows, train: StepRows,
                           val: StepRows, init: list[Node], init_note: str
                           ) -> tuple[ContinuousFit | None, dict[int, float], dict[int, float]]:
    """The warm start, challenged only by itself less a term, when it is exact on every row
    (module docstring, step 0), else None; each learned coordinate's error (1 - R² of its
    increment through the integrator) on the new rows, and for the inexact ones the noise
    floor of those residuals (both empty when the law cannot be evaluated)."""
    cfg = model.config
    n = rows.n_state
    fixed = [i for i in range(n) if i in model.static_coords or np.all(rows.D[:, i] == 0.0)]
    learned = [i for i in range(n) if i not in fixed]
    if not learned or len(init) != n:
        return None, {}, {}
    current = [Num(0.0) if i in fixed else init[i] for i in range(n)]
    try:
        laws = LawSet(current, model.variables, n)
    except ExpressionError:
        return None, {}, {}
    integrator = _choose_integrator(cfg, laws, rows)
    pred = laws.increments(rows, integrator)
    errors: dict[int, float] = {}
    for i in learned:
        y = rows.D[:, i]
        var = float(np.var(y)) or float(np.mean(y * y)) or 1.0
        with np.errstate(all="ignore"):
            err = float(np.mean((pred[:, i] - y) ** 2)) / var
        errors[i] = err if np.isfinite(err) else float("inf")
    if any(err > cfg.exact_error for err in errors.values()):
        floors = {}
        for i, err in errors.items():
            y = rows.D[:, i]
            r = pred[:, i] - y
            if err > cfg.exact_error and np.all(np.isfinite(r)):
                floors[i] = noise_floor(rows.X0, r, float(np.var(y)) or 1.0)
        return None, errors, floors
    reports: dict[int, dict[str, Any]] = {}
    selections: dict[int, Any] = {}
    counts: dict[int, int] = {}
    note = (init_note + "; " if init_note else "") + (
        "skipped: the warm-start law predicts every row's increment through the integrator to "
        f"within 1 - R² <= {cfg.exact_error:g}; challenged by itself less a term")
    for i, name in enumerate(model.state_names):
        if i in fixed:
            reports[i] = _fixed_report(name, static=i in model.static_coords)
            continue
        cand = _through_integrator(laws, integrator, i, current[i], "init: previous model",
                                   train, val, cfg, refine=False)
        if cand is None:
            return None, errors, {}
        sel = backward_elimination(
            select([cand], cfg.selection_floor), [cand],
            lambda tree, source, i=i: _through_integrator(
                laws, integrator, i, tree, source, train, val, cfg),
            cfg.selection_floor,
        )
        selections[i] = sel
        counts[i] = 1 + len(sel.front)
        current[i] = sel.chosen.tree
        laws.replace(i, current[i])
        reports[i] = {"coordinate": name, "kind": "learned", "angle": i in model.angle_coords,
                      "search": note, "n_rejected": 0}
    return _finish(model, current, integrator, reports, selections, counts), errors, {}


# --- step 1: candidates on midpoint targets ------------------------------------------------------


def _midpoint_pool(
    model: SymbolicDynamics,
    i: int,
    data: FitData,
    raw: list[tuple[Node, str]],
    warm: bool,
    init_r2: dict,
) -> tuple[list[tuple[Node, str]], int, str]:
    """Evaluable candidates with constants refined on the midpoint targets; the backend search
    runs unless a warm start already explains the coordinate."""
    cfg = model.config
    pool: list[tuple[Node, str]] = []
    rejected = 0

    def consider(tree: Node, source: str) -> Candidate | None:
        nonlocal rejected
        tree = simplify(fold_like_terms(tree))
        if not evaluable(tree, data):
            rejected += 1
            return None
        res = refine_constants(tree, data.variables, data.X_train, data.y_train, cfg.bfgs_maxiter)
        refined = res.tree if evaluable(res.tree, data) else tree
        pool.append((refined, source))
        expr = CompiledExpression(refined, data.variables)
        X, y = (data.X_val, data.y_val) if len(data.y_val) else (data.X_train, data.y_train)
        sq = (expr.numpy(X) - y) ** 2
        return candidate_from_errors(refined, source, sq, sq, data.y_var, 1)

    warm_cands = [consider(t, s) for t, s in raw if s.startswith("init")]
    for tree, source in raw:
        if not source.startswith("init"):
            consider(tree, source)
    name = model.state_names[i]
    threshold = cfg.init_accept_r2
    prev = init_r2.get(name)
    if prev is not None:
        threshold = min(threshold, prev - 1e-3)
    good = [c for c in warm_cands if c is not None and c.val_r2 >= threshold]
    if warm and good:
        return pool, rejected, (
            f"skipped: the warm-start law reaches midpoint validation R² "
            f"{good[0].val_r2:.6f} >= {threshold:.6f}; simpler challengers tried"
        )
    attempts, info = 0, {}
    for attempt in range(cfg.max_regenerations + 1):
        attempts = attempt + 1
        generated, info = model._generate(i, data, attempt)
        kept = sum(consider(tree, source) is not None for tree, source in generated)
        if kept:
            break
    note = f"{model.backend} search on midpoint derivative targets"
    if attempts > 1:
        note += f", regenerated {attempts - 1} time(s) because no candidate could be evaluated"
    noisy = (info.get("families") or {}).get("noise") or {}
    if noisy.get("noisy") and noisy.get("libraries"):
        note += (f"; noise is a large part of the error (floor {noisy['noise_floor']:.2g} of "
                 f"the target's variance), so these libraries also gave candidates: "
                 f"{', '.join(noisy['libraries'])}")
    return pool, rejected, note


def _midpoint_front(pool, data: FitData, n_folds: int, floor: float) -> tuple[Node, list[Node]]:
    """The pick on the midpoint targets and the Pareto front it was picked from."""
    cands = []
    for tree, source in pool:
        expr = CompiledExpression(tree, data.variables)
        train_sq = (expr.numpy(data.X_train) - data.y_train) ** 2
        val_sq = (expr.numpy(data.X_val) - data.y_val) ** 2
        cand = candidate_from_errors(tree, source, train_sq, val_sq, data.y_var, n_folds)
        if cand is not None:
            cands.append(cand)
    if not cands:
        return pool[0][0], [t for t, _ in pool]
    sel = select(cands, floor)
    return sel.chosen.tree, [c.tree for c in sel.front]


# --- step 2: substeps -----------------------------------------------------------------------------


def _choose_integrator(cfg, laws: LawSet, rows: StepRows) -> Integrator:
    """The fewest substeps whose halving moves the predicted increments by at most
    ``integrator_tol`` of each coordinate's spread in RMS, and no single row's by more than
    thirty times that.

    Every row counts, the validation rows too (only the model's own predictions are compared,
    no target). Judged by the RMS over the training rows alone, a cart-pole model chosen on the
    first, slow swings kept 2e-6 of error on the newest rows, where the pole spun at 25 rad/s.
    That error looked like a missing term; the selections then paid for one (a pyoperon
    fragment in x' = x_dot) and a warm refit took a minute. The per-row bound (3e-3 of the
    spread) is loose on purpose: bounding every row by ``integrator_tol`` itself doubled the
    MuJoCo cart-pole's fit time (more substeps through every refinement) for accuracy nobody
    needs, 1e-12 instead of 1e-9.
    """
    if cfg.substeps:
        return Integrator(cfg.integrator, int(cfg.substeps))
    sd = np.std(rows.D, axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    previous = None
    for k in SUBSTEP_CHOICES:
        pred = laws.increments(rows, Integrator(cfg.integrator, k))
        if previous is not None:
            diff = np.abs(pred - previous)
            change = np.sqrt(np.mean(diff**2, axis=0)) / sd
            worst = np.max(diff, axis=0) / sd
            finite = bool(np.all(np.isfinite(change)) and np.all(np.isfinite(worst)))
            if not finite or (np.max(change) <= cfg.integrator_tol
                              and np.max(worst) <= 30 * cfg.integrator_tol):
                return Integrator(cfg.integrator, k // 2 if finite else k)
        previous = pred
    return Integrator(cfg.integrator, SUBSTEP_CHOICES[-1])


# --- step 3: through the integrator -------------------------------------------------------------


def _coordinate_loss(
    laws: LawSet, integrator: Integrator, i: int, expr: CompiledExpression, rows: StepRows
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """Residuals (scaled to unit target variance and sqrt(N)) of coordinate i's increment, and
    their forward-difference Jacobian.

    The Jacobian integrates every perturbed parameter vector in one batch: the rows are
    repeated once per parameter, and each block gets its own
    constants (a constant may be a column, one value per row). An expression evaluation costs
    about as much for 500 rows as for 5,000, so this is several times faster than perturbing
    one parameter per integration, with the same steps as scipy's ``2-point`` rule.
    """
    y = rows.D[:, i]
    n = len(y)
    scale = 1.0 / np.sqrt((float(np.var(y)) or float(np.mean(y * y)) or 1.0) * n)
    k = expr.n_params
    tiled: list[StepRows] = []  # the rows once per parameter, made on the first Jacobian
    recent: dict[bytes, np.ndarray] = {}  # the last residuals, by parameter vector

    def resid(p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        inc = laws.increments(rows, integrator, {i: (expr, p)})[:, i]
        r = (inc - y) * scale
        r = np.where(np.isfinite(r), r, 1e6)
        if len(recent) >= 4:
            recent.pop(next(iter(recent)))
        recent[p.tobytes()] = r
        return r

    def jac(p: np.ndarray) -> np.ndarray:
        # MINPACK asks for the Jacobian at a point whose residuals it has just had: those are
        # reused, and only the k perturbed copies are integrated
        p = np.asarray(p, dtype=np.float64)
        r0 = recent.get(p.tobytes())
        if r0 is None:
            r0 = resid(p)
        h = JAC_STEP * np.where(p >= 0, 1.0, -1.0) * np.maximum(1.0, np.abs(p))
        h = (p + h) - p  # the step as represented, as scipy takes it
        if not tiled:
            tiled.append(StepRows(np.tile(rows.X0, (k, 1)), np.tile(rows.D, (k, 1)),
                                  np.tile(rows.dt, k), rows.n_state))
        P = np.repeat(p[:, None], k * n, axis=1)
        for j in range(k):
            P[j, j * n:(j + 1) * n] += h[j]
        inc = laws.increments(tiled[0], integrator, {i: (expr, P)})[:, i]
        r = np.where(np.isfinite(r := (inc - tiled[0].D[:, i]) * scale), r, 1e6).reshape(k, n)
        return ((r - r0) / h[:, None]).T

    return resid, jac


JAC_STEP = float(np.sqrt(np.finfo(np.float64).eps))
"""Relative forward-difference step of :func:`_coordinate_loss`'s Jacobian (scipy's for
``2-point``)."""


def _through_integrator(
    laws: LawSet,
    integrator: Integrator,
    i: int,
    tree: Node,
    source: str,
    train: StepRows,
    val: StepRows,
    cfg,
    refine: bool = True,
) -> Candidate | None:
    """Refine a candidate's constants on the one-step error and assess it on validation rows."""
    try:
        expr = CompiledExpression(tree, laws.variables)
    except ExpressionError:
        return None
    p = expr.params.copy()
    notes: dict[str, Any] = {}
    if refine and expr.n_params:
        resid, jac = _coordinate_loss(laws, integrator, i, expr, train)
        r0 = resid(p)
        try:
            res = least_squares(resid, p, jac=jac, method="lm", max_nfev=cfg.lm_max_evaluations
                                * (expr.n_params + 1), xtol=1e-12, ftol=1e-14, gtol=1e-14)
            if np.all(np.isfinite(res.x)) and res.cost <= 0.5 * float(r0 @ r0):
                p = res.x
                notes = {"lm_evaluations": int(res.nfev), "constants": expr.n_params}
        except (ValueError, np.linalg.LinAlgError):
            pass
        tree = simplify(expr.with_params(p))
        expr = CompiledExpression(tree, laws.variables)
        p = expr.params
    y_var = float(np.var(train.D[:, i])) or float(np.mean(train.D[:, i] ** 2)) or 1.0
    inc_train = laws.increments(train, integrator, {i: (expr, p)})[:, i]
    inc_val = laws.increments(val, integrator, {i: (expr, p)})[:, i] if len(val.dt) else None
    train_sq = (inc_train - train.D[:, i]) ** 2
    val_sq = (inc_val - val.D[:, i]) ** 2 if inc_val is not None else train_sq[:0]
    label = source if not refine or not expr.n_params else source + ", refined through "
    if label.endswith("through "):
        label += f"{integrator.method}"
    return candidate_from_errors(tree, label, train_sq, val_sq, y_var, cfg.validation_folds,
                                 notes)


# --- step 4: polish and snap -------------------------------------------------------------------


def _joint_polish(laws: LawSet, integrator: Integrator, current: list[Node], learned: list[int],
                  rows: StepRows, cfg) -> list[Node]:
    exprs = {i: CompiledExpression(current[i], laws.variables) for i in learned}
    sizes = [exprs[i].n_params for i in learned]
    if not sum(sizes):
        return current
    scales = {}
    for i in learned:
        y = rows.D[:, i]
        scales[i] = 1.0 / np.sqrt((float(np.var(y)) or float(np.mean(y * y)) or 1.0) * len(y))
    bounds = np.cumsum([0] + sizes)

    def split(p: np.ndarray) -> dict:
        return {i: (exprs[i], p[bounds[k]:bounds[k + 1]]) for k, i in enumerate(learned)}

    def resid(p: np.ndarray) -> np.ndarray:
        inc = laws.increments(rows, integrator, split(p))
        r = np.concatenate([(inc[:, i] - rows.D[:, i]) * scales[i] for i in learned])
        return np.where(np.isfinite(r), r, 1e6)

    p0 = np.concatenate([exprs[i].params for i in learned])
    r0 = resid(p0)
    try:
        res = least_squares(resid, p0, method="lm", xtol=1e-12, ftol=1e-14, gtol=1e-14,
                            max_nfev=cfg.lm_max_evaluations * (len(p0) + 1))
    except (ValueError, np.linalg.LinAlgError):
        return current
    if not np.all(np.isfinite(res.x)) or res.cost > 0.5 * float(r0 @ r0):
        return current
    out = list(current)
    for k, i in enumerate(learned):
        out[i] = simplify(exprs[i].with_params(res.x[bounds[k]:bounds[k + 1]]))
        laws.replace(i, out[i])
    return out


def _snap(laws: LawSet, integrator: Integrator, i: int, tree: Node, rows: StepRows,
          floor: float) -> Node:
    expr = CompiledExpression(tree, laws.variables)
    resid, _jac = _coordinate_loss(laws, integrator, i, expr, rows)
    return snap_with_loss(expr, lambda p: float(np.sum(resid(p) ** 2)), floor)


# --- printing -----------------------------------------------------------------------------------


def law_name(name: str) -> str:
    """What a roboticist calls the derivative of a coordinate: theta_dot -> theta_ddot, x ->
    x_dot."""
    if name.endswith("_ddot"):
        return name[: -len("_ddot")] + "_dddot"
    if name.endswith("_dot"):
        return name[: -len("_dot")] + "_ddot"
    return name + "_dot"


def law_text(name: str, derivative: Node, precision: int | None = 4) -> str:
    """``theta_ddot = 15*sin(theta) + 3*torque``."""
    return f"{law_name(name)} = {to_string(derivative, precision)}"
