"""SymbolicDynamics: the symbolic world model, one expression per state coordinate.

The method follows Gorodetskiy, Mironov and Panov (2024, arXiv 2407.13518). A model is either

* **discrete-time** (``time="discrete"``): one expression per coordinate for its next value,
  ``s'_i = f_i(s, a)``, learned on the *increment* ``s'_i - s_i``; or
* **continuous-time** (``time="continuous"``): one expression per coordinate for its time
  derivative, ``x'_i = f_i(x, u)``, stepped over ``dt`` (one per sample if the stamps jitter)
  by the model's own integrator (RK4 with substeps, :mod:`.integrate`). This is the law as a
  roboticist writes it (``theta_ddot = 15*sin(theta) + 3*torque``), not the Taylor series of
  a simulator's one-step map; fitting is in :mod:`.continuous`.

For each coordinate:

1. a search backend (``sparse``: STLSQ over a term library; ``gp``: pyoperon genetic
   programming; ``transformer``) generates candidate expressions;
2. their constants are refined (BFGS; through the integrator for continuous time);
3. the pick is the simplest candidate on the Pareto front of error against size whose
   validation error is within one standard error of the best (:func:`.selection.select`),
   then terms are dropped while that still holds, so a refit can shrink a warm start. A
   candidate that is NaN/inf (or blows up) on the data or on a margin around it is dropped, and
   the search generates again.

Angle coordinates are learned on their wrapped increment ``wrap(s' - s)`` and predicted in
[-pi, pi). Static coordinates (a target) are copied through.

Example::

    model = SymbolicDynamics(["theta", "theta_dot"], ["u"], angle_coords=[0]).fit(s, a, s2)
    print("\\n".join(model.equations()))
    model.save("model.json")
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..data.transitions import check_transition_arrays, warn_dropped
from ..errors import UserError
from .backends import get as get_backend
from .backends import names as backend_names
from .bagging import disagreement, fit_members, member_models, spread
from .continuous import StepRows, fit_continuous, is_exact, law_name, law_text
from .expression import (
    FUNCTIONS,
    CompiledExpression,
    ExpressionError,
    Name,
    Node,
    Num,
    fold_like_terms,
    increment_tree,
    is_identifier,
    next_value_tree,
    parse_expression,
    simplify,
    to_string,
    to_sympy,
)
from .fallback import GPBudget
from .integrate import METHODS, Integrator
from .multistep import (
    coordinate_weights,
    refine_multistep,
    select_on_trajectories,
    split_segments,
    trajectory_windows,
)
from .refine import refine_constants, snap_constants
from .segments import find_segments
from .selection import (
    Candidate,
    assess,
    backward_elimination,
    evaluable,
    make_fit_data,
    margin_points,
    rank,
    select,
)

FORMAT = "sym-mbrl/dynamics-v1"
FORMAT_V2 = "sym-mbrl/dynamics-v2"
FORMATS = (FORMAT, FORMAT_V2)
BACKENDS = backend_names()
"""The search backends registered at import (:mod:`.backends`; ``backend_names()`` for the
current list)."""
TIMES = ("discrete", "continuous")
CONTINUOUS_TASKS = ("pendulum", "cartpole")
"""Tasks whose world model is continuous-time by default (:meth:`SymbolicDynamics.for_task`):
where the law is both smaller and as accurate, and the fit stays fast (docs/world_model.md has
the measurements; Reacher's and Car2d's continuous fits were smaller but slower). Cart-pole:
only the continuous fit writes the textbook law, numerators over a denominator in cos²θ."""


@dataclass
class SymbolicDynamicsConfig:
    """Settings of :class:`SymbolicDynamics`; each one can be passed as a keyword argument."""

    # --- time ---
    time: str = "discrete"
    """``"discrete"`` (next value per coordinate) or ``"continuous"`` (time derivative per
    coordinate, integrated over dt; needs the step length)."""
    integrator: str = "rk4"
    """Continuous time: ``"rk4"`` or ``"euler"``."""
    substeps: int = 0
    """Continuous time: integrator substeps per step (0: the fewest that resolve the data)."""
    integrator_tol: float = 1e-4
    """Continuous time, ``substeps=0``: halving the substep may change the one-step prediction
    by at most this share of each increment's standard deviation."""
    lm_max_evaluations: int = 30
    """Continuous time: Levenberg-Marquardt evaluations per constant when refining through the
    integrator."""
    # --- sparse library ---
    degree: int = 3
    """Highest total degree of the polynomial terms in the state and action coordinates."""
    trig: tuple[str, ...] = ("sin", "cos")
    """Functions applied to the angle coordinates (a subset of sin, cos)."""
    trig_pairs: bool = True
    """Also use products of two trig terms (``sin(q1)*cos(q2)``, ``cos(q)**2``)."""
    products: bool = True
    """Also use trig terms times polynomial terms (``theta_dot*sin(theta)``)."""
    product_degree: int = 2
    """Highest degree of the polynomial factor in a trig product."""
    angle_polynomials: bool = False
    """Also use the raw angle coordinates as polynomial variables (they jump at +-pi)."""
    static_inputs: bool = False
    """Let the learned expressions depend on the static coordinates."""
    max_library_terms: int = 500
    """Upper bound on the library size; product and polynomial degrees are lowered to fit."""
    n_thresholds: int = 50
    """Number of STLSQ thresholds on the path (log-spaced)."""
    n_refine: int = 8
    """Members of the STLSQ Pareto front (error against size) passed on to refinement."""
    max_candidate_terms: int = 20
    """Sparse supports with more terms are not candidates: on an extended library the most
    accurate support can hold 60 terms, and refining it (through the integrator, too) costs
    seconds while the rule would not pick it."""
    refine_inner: bool = True
    """Also refine a frequency and a phase inside each sin/cos (``c*sin(w*q + p)``)."""
    max_inner_calls: int = 8
    """Only add inner constants to candidates with at most this many sin/cos calls."""
    families: bool = True
    """Sparse backend: per coordinate, add the term families of :mod:`.families` that win on
    validation (sin/cos of every bounded coordinate, ``x*abs(x)``, ``tanh(x/eps)``, a
    denominator in ``cos(q)**2``); nothing needs declaring."""
    family_gain: float = 10.0
    """A family is added when it lowers the whole-library validation error by this factor."""
    # --- refinement and selection (all backends) ---
    bfgs_maxiter: int = 200
    """Iterations of BFGS per candidate."""
    validation_fraction: float = 0.2
    """Share of the fit data held out to rank candidates: the newest rows (rows are a time
    series, oldest first). A random split of a time series ranks candidates on rows between
    their neighbours; the newest rows reward the candidate that carries on beyond them (Car2d
    yaw, 500 random steps, newest 100 held out: 0.9977 with a random split, 0.9998 with this)."""
    validation_folds: int = 5
    """Folds of the validation rows; the spread of the error over them is the standard error
    of the one-standard-error rule."""
    selection_floor: float = 1e-8
    """Relative validation errors (1 - R²) below this count as exact: between such candidates
    the simplest wins, so round-off and integrator error never buy terms."""
    exact_error: float = 1e-6
    """A law whose one-step error (1 - R² of the increment) is at most this counts as exact for
    a refit's shortcuts: a warm start this exact on every new row is kept without a search
    (only its terms are challenged), and an exact coordinate skips the selection on
    trajectories and the k-step refinement. 1e-6 is 0.1 % of the spread in RMS: far below any
    sensor's noise, so on measured data the full fit always runs, and above a simulator's own
    integration error (a cart-pole pole at 29 rad/s: 2e-8), which no search can remove."""
    error_floor: float = 1e-12
    """Snapping a constant (to 0, an integer, 12 digits) may raise the relative error by this."""
    margin: float = 0.25
    """A candidate must evaluate on the data box expanded by this fraction on each side."""
    margin_samples: int = 256
    """Random points drawn in the expanded box for that check (plus its corners)."""
    margin_bound: float = 1e3
    """...and stay within this factor of the target's scale there."""
    max_regenerations: int = 3
    """How often the search generates again when no candidate can be evaluated."""
    init_accept_r2: float = 0.999
    """With ``init=``, skip the search for a coordinate whose warm-started expression reaches
    this validation R² (or its previous validation R², whichever is lower, minus 1e-3)."""
    min_samples: int = 20
    """Fewest finite transitions a fit accepts."""
    # --- noise: trajectories and bagging (docs/world_model.md, "Noise") ---
    multistep_horizon: int = 8
    """Steps of the simulation-error refinement: after selection, every constant is refined
    on the error of the model rolled this many steps along the data's trajectory segments
    (rows whose next state is the following row's state); 0: off."""
    multistep_max_windows: int = 1000
    """The simulation-error loss uses at most this many windows (a seeded random subset)."""
    multistep_max_evaluations: int = 20
    """Levenberg-Marquardt evaluations per constant of the simulation-error refinement."""
    bagging_members: int = 0
    """Ensemble members fitted on bootstrap resamples of trajectory blocks; their spread is
    the model's uncertainty (:meth:`SymbolicDynamics.uncertainty`); 0: none."""
    bagging_block: int = 20
    """Rows per block of the moving-block bootstrap."""
    bagging_structure: bool = False
    """Members are whole fits (search and selection too) rather than the chosen structure
    with its constants refitted (about ``bagging_members`` times the fit time)."""
    # --- gp fallback of the sparse backend ---
    gp_fallback: bool = True
    """Sparse backend: run pyoperon on a coordinate whose best sparse candidate misses
    ``gp_fallback_error`` and sits ``gp_fallback_ratio`` times above the data's noise floor
    (:mod:`.fallback`)."""
    gp_fallback_time: float = 3.0
    """Seconds of pyoperon per fit for the fallback, shared by the coordinates that need it."""
    gp_fallback_error: float = 1e-4
    """The fallback runs only where the best sparse validation error (1 - R²) exceeds this."""
    gp_fallback_ratio: float = 10.0
    """...and exceeds this multiple of the estimated noise floor."""
    # --- gp backend ---
    gp_time: float = 4.0
    """Seconds of pyoperon search per coordinate, shared by the runs (each rounded up to whole
    seconds)."""
    gp_runs: int = 2
    """Independent pyoperon runs per coordinate (own seed and row subset), candidates pooled."""
    gp_population: int = 500
    """pyoperon population size."""
    gp_max_length: int = 30
    """Largest expression length pyoperon may build."""
    gp_symbols: str = "add,sub,mul,div,constant,variable,sin,cos"
    """pyoperon's allowed symbols."""
    gp_candidates: int = 12
    """Pareto-front members taken as candidates per run."""
    gp_local_iterations: int = 5
    """Levenberg-Marquardt iterations pyoperon spends on each individual's constants."""
    gp_max_rows: int = 500
    """pyoperon searches on at most this many training rows (a seeded random subset), so that
    its time budget buys generations; refinement and ranking use all rows."""
    # --- transformer backend ---
    tf_weights: str | None = None
    """Weights file of the transformer backend (None: the shipped mechanics weights)."""
    tf_beam: int = 32
    """Beam width of the transformer: decoded candidates per coordinate."""
    tf_points: int = 200
    """Training rows the transformer reads per coordinate (a seeded subset when there are more)."""
    tf_combine: bool = True
    """Also offer sums of the decoded expressions' additive terms, pruned one term at a time."""
    # --- reporting ---
    runner_ups: int = 3
    """Runner-up candidates listed in the selection report."""

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> SymbolicDynamicsConfig:
        """Build a config; an unknown key is a :class:`UserError` that lists the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise UserError(
                f"unknown SymbolicDynamics setting(s) {', '.join(unknown)}; "
                f"known settings: {', '.join(sorted(known))}"
            )
        kwargs = dict(kwargs)
        if "trig" in kwargs:
            kwargs["trig"] = tuple(kwargs["trig"])
            bad = set(kwargs["trig"]) - {"sin", "cos"}
            if bad:
                raise UserError(f"trig must be a subset of ('sin', 'cos'), got {kwargs['trig']}")
        cfg = cls(**kwargs)
        if not 0.0 <= cfg.validation_fraction < 0.9:
            raise UserError("validation_fraction must be in [0, 0.9)")
        if cfg.time not in TIMES:
            raise UserError(f"time must be one of {', '.join(TIMES)}, got {cfg.time!r}")
        if cfg.integrator not in METHODS:
            raise UserError(f"integrator must be one of {', '.join(METHODS)}, got "
                            f"{cfg.integrator!r}")
        if not 0 <= int(cfg.substeps) <= 1000:
            raise UserError(f"substeps must be in [0, 1000] (0: chosen from the data), got "
                            f"{cfg.substeps}")
        return cfg


def wrap_angle(x):
    """Map angles (numpy or torch) to [-pi, pi)."""
    return (x + math.pi) % (2 * math.pi) - math.pi


def increment_r2(
    current: np.ndarray, true_next: np.ndarray, pred_next: np.ndarray, angle: bool
) -> float:
    """R² of one coordinate computed on the increment (next - current), wrapped for angles.

    When the true increment has (near) zero variance, R² is undefined; it is then 1.0 if the
    predictions are exact (within 1e-9 relative) and 0.0 otherwise.
    """
    d_true = true_next - current
    d_pred = pred_next - current
    if angle:
        d_true, d_pred = wrap_angle(d_true), wrap_angle(d_pred)
    err = d_true - d_pred
    if angle:
        err = wrap_angle(err)
    ss_res = float(np.sum(err * err))
    centred = d_true - np.mean(d_true)
    ss_tot = float(np.sum(centred * centred))
    scale = 1.0 + float(np.max(np.abs(d_true), initial=0.0))
    if ss_tot <= (1e-12 * scale) ** 2 * len(d_true):
        return 1.0 if float(np.max(np.abs(err), initial=0.0)) <= 1e-9 * scale else 0.0
    return 1.0 - ss_res / ss_tot


class SymbolicDynamics:
    """A world model with one symbolic expression per state coordinate, fitted from transitions.

    Args:
        state_names: one name per state coordinate, used in the expressions.
        action_names: one name per action coordinate.
        angle_coords: indices of periodic state coordinates, predicted in [-pi, pi).
        static_coords: indices of coordinates copied through (``s'_i = s_i``).
        invariant_coords: indices of coordinates the dynamics do not depend on (a mobile
            robot's position on a flat floor): they are predicted like any other, but no
            expression may use them, so nothing is fitted to where the data happened to be.
        backend: ``"sparse"`` (library + STLSQ, fast, default) or ``"gp"`` (pyoperon).
        seed: seed of the validation split, the margin samples and the GP runs.
        dt: the step length in seconds (a continuous-time model's default step; ``fit`` and
            ``predict`` also take one per sample).
        **config: any field of :class:`SymbolicDynamicsConfig` (``time="continuous"`` for a
            continuous-time model).

    A name that cannot appear in an expression is replaced (see :func:`expression_names`): an
    action named like a state (Car2d's ``steer``) becomes ``steer_cmd``, ``x.pos`` becomes
    ``x_pos``. ``state_names`` and ``action_names`` hold the names used; ``renamed`` maps the
    given names that changed to them.
    """

    def __init__(
        self,
        state_names: Sequence[str],
        action_names: Sequence[str],
        angle_coords: Sequence[int] = (),
        static_coords: Sequence[int] = (),
        backend: str = "sparse",
        seed: int = 0,
        invariant_coords: Sequence[int] = (),
        dt: float | None = None,
        **config: Any,
    ):
        states = _check_names(state_names, "state")
        actions = _check_names(action_names, "action")
        self.state_names, self.action_names, self.renamed = expression_names(states, actions)
        n = len(self.state_names)
        self.angle_coords = _check_indices(angle_coords, n, "angle_coords")
        self.static_coords = _check_indices(static_coords, n, "static_coords")
        self.invariant_coords = _check_indices(invariant_coords, n, "invariant_coords")
        if set(self.invariant_coords) & set(self.static_coords):
            raise UserError("a coordinate cannot be both static and invariant")
        get_backend(backend)  # a one-sentence UserError naming the registered ones
        self.backend = backend
        self.seed = int(seed)
        self.config = SymbolicDynamicsConfig.from_kwargs(config)
        self.dt = _check_dt(dt)
        self.integrator: Integrator | None = None
        self._derivatives: list[Node] | None = None
        self.metrics: dict[str, Any] = {}
        self._report: list[dict[str, Any]] = []
        self._trees: list[Node] | None = None
        self._compiled: list[CompiledExpression] = []
        self.provenance: dict[str, Any] = {}
        self._library_cache: dict = {}
        self._members: list[list[Node]] = []
        self._member_scale: np.ndarray | None = None
        self._member_models: list | None = None

    @classmethod
    def for_task(cls, task, **kwargs: Any) -> SymbolicDynamics:
        """A model for a :class:`~sym_mbrl_ros.envs.base.TaskSpec` (its names, coordinates and
        dt); continuous time for the tasks in :data:`CONTINUOUS_TASKS` unless ``time=`` says
        otherwise."""
        continuous = getattr(task, "name", None) in CONTINUOUS_TASKS and getattr(task, "dt", None)
        defaults = {
            "invariant_coords": getattr(task, "invariant_coords", ()),
            "dt": getattr(task, "dt", None),
            "time": "continuous" if continuous else "discrete",
        }
        return cls(
            task.state_names,
            task.action_names,
            task.angle_coords,
            task.static_coords,
            **{**defaults, **kwargs},
        )

    # --- shape ---------------------------------------------------------------------------------

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def is_fitted(self) -> bool:
        return self._trees is not None or self._derivatives is not None

    @property
    def time(self) -> str:
        """``"discrete"`` or ``"continuous"``."""
        return self.config.time

    @property
    def is_continuous(self) -> bool:
        return self.config.time == "continuous"

    @property
    def variables(self) -> tuple[str, ...]:
        return self.state_names + self.action_names

    # --- fitting -------------------------------------------------------------------------------

    def fit(
        self,
        states,
        actions,
        next_states,
        init: SymbolicDynamics | str | Path | None = None,
        dt=None,
        episodes=None,
    ):
        """Learn one expression per state coordinate; returns ``self``.

        Rows with NaN or inf are dropped, counted in ``metrics["n_dropped_nonfinite"]`` and
        reported with a warning. ``init`` (a model or a model file) makes its expressions
        candidates and warm starts: their constants are refined on the new data, a coordinate
        they still explain well is not searched again, and simpler challengers (the same law
        less a term) are tried. ``dt`` (a number, or one per transition) is the step length of
        a continuous-time fit (default: the model's ``dt``). ``episodes`` (one id per
        transition) breaks trajectory segments where it changes; rows also join a segment only
        where the next state of one is the state of the next.
        """
        with _single_threaded_blas():
            return self._fit(states, actions, next_states, init, dt, episodes)

    def _fit(self, states, actions, next_states, init, dt=None, episodes=None) -> SymbolicDynamics:
        t_start = time.perf_counter()
        cfg = self.config
        s, a, s2, finite = check_transition_arrays(
            states,
            actions,
            next_states,
            state_dim=self.state_dim,
            action_dim=self.action_dim,
            what="fit",
        )
        n_total = s.shape[0]
        n_dropped = int((~finite).sum())
        warn_dropped(n_dropped, n_total, "SymbolicDynamics.fit")
        dt_rows = self._dt_rows(dt, n_total, "fit") if self.is_continuous else None
        s, a, s2 = s[finite], a[finite], s2[finite]
        if episodes is not None:
            episodes = np.asarray(episodes).reshape(-1)
            if episodes.shape != (n_total,):
                raise UserError(f"fit: episodes must hold one id per transition ({n_total}), "
                                f"got shape {episodes.shape}")
            episodes = episodes[finite]
        segments = find_segments(s, s2, episodes, self.angle_coords)
        if dt_rows is not None:
            dt_rows = dt_rows[finite]
            if self.dt is None:
                self.dt = float(np.median(dt_rows))
        n = s.shape[0]
        if n < cfg.min_samples:
            raise UserError(
                f"fit needs at least {cfg.min_samples} transitions without NaN or inf, got {n}"
                + (f" ({n_dropped} dropped)" if n_dropped else "")
                + "; collect more data"
            )
        init_trees, init_metrics = self._init_trees(init)

        X = np.hstack([s, a])
        increments = s2 - s
        for i in self.angle_coords:
            increments[:, i] = wrap_angle(increments[:, i])
        rng = np.random.default_rng(self.seed)
        n_val = int(round(cfg.validation_fraction * n))
        val_idx, train_idx = np.arange(n - n_val, n), np.arange(n - n_val)
        X_margin = margin_points(X, cfg.margin, cfg.margin_samples, rng)

        self._library_cache: dict = {"gp_budget": GPBudget(cfg.gp_fallback_time)}
        self._fronts: dict[int, list[Node]] = {}
        if self.is_continuous:
            assert dt_rows is not None
            return self._fit_continuous(
                s, a, s2, increments, dt_rows, train_idx, val_idx, X_margin, init, t_start,
                n_total, n_dropped, segments,
            )
        trees: list[Node] = []
        report: list[dict[str, Any]] = []
        val_r2: dict[str, float | None] = {}
        if init_trees is not None and init_metrics.get("__time") == "continuous":
            init_trees = None  # a law is not a one-step map: search afresh
        for i, name in enumerate(self.state_names):
            t0 = time.perf_counter()
            if i in self.static_coords:
                trees.append(Name(name))
                report.append(
                    {
                        "coordinate": name,
                        "kind": "static",
                        "chosen": {"expression": name},
                        "reason": "static coordinate: copied through unchanged",
                        "runner_ups": [],
                    }
                )
                val_r2[name] = None
                continue
            init_incr = None if init_trees is None else increment_tree(name, init_trees[i])
            prev_r2 = (init_metrics.get("validation_r2") or {}).get(name)
            incr, rep = self._fit_coordinate(
                i, X, increments[:, i], train_idx, val_idx, X_margin, init_incr, prev_r2
            )
            rep["seconds"] = round(time.perf_counter() - t0, 4)
            trees.append(next_value_tree(name, incr))
            report.append(rep)
            val_r2[name] = rep["chosen"].get("validation_r2")

        self._library_cache = {}
        self._set_trees(trees)
        self._report = report
        noise_info = self._fit_trajectories(segments, s, a, s2, None, increments, val_r2)
        self._finish_metrics(s, a, s2, None, n_total, n_dropped, train_idx, val_idx, val_r2,
                             t_start, init)
        self.metrics.update(noise_info)
        return self

    def _fit_continuous(self, s, a, s2, increments, dt_rows, train_idx, val_idx, X_margin,
                        init, t_start, n_total, n_dropped, segments) -> SymbolicDynamics:
        init_derivs, init_metrics = self._init_trees(init)
        note = ""
        if init_derivs is not None and init_metrics.get("__time") != "continuous":
            init_derivs, note = None, "the warm start is a discrete-time model: searched afresh"
        rows = StepRows(np.hstack([s, a]), increments, dt_rows, self.state_dim)
        result = fit_continuous(
            self, rows, train_idx, val_idx, X_margin, init_derivs,
            init_metrics.get("validation_r2") or {}, note,
        )
        self._library_cache = {}
        self._set_derivatives(result.derivatives, result.integrator)
        self._report = result.report
        self._fronts = result.fronts
        noise_info = self._fit_trajectories(segments, s, a, s2, dt_rows, increments,
                                            result.validation_r2)
        self._finish_metrics(s, a, s2, dt_rows, n_total, n_dropped, train_idx, val_idx,
                             result.validation_r2, t_start, init)
        self.metrics.update(noise_info)
        return self

    def _fit_trajectories(self, segments, s, a, s2, dt_rows, increments,
                          validation_r2=None) -> dict[str, Any]:
        """The simulation-error refinement of the chosen model and its bagged members
        (:mod:`.multistep`, :mod:`.bagging`); returns what they did, for the metrics.

        ``validation_r2`` (coordinate name: one-step validation R²): a coordinate whose pick
        is already exact (1 - R² at most ``exact_error``) keeps it without the selection on
        trajectories. Nothing on its front can beat an exact law over k steps either, and the
        selection refits every front member along every window: on the cart-pole's policy data
        that took minutes per fit, for no change.
        """
        cfg = self.config
        validation_r2 = validation_r2 or {}
        trees = list(self._derivatives if self.is_continuous else self._trees or [])
        lengths = [len(seg) for seg in segments]
        info: dict[str, Any] = {"segments": {"count": len(segments),
                                             "longest": max(lengths, default=0),
                                             "mean": float(np.mean(lengths)) if lengths else 0}}
        rng = np.random.default_rng(self.seed + 7)
        weights = coordinate_weights(self, increments)
        if cfg.multistep_horizon > 0 and max(lengths, default=0) > 1:
            n_train = len(s) - int(round(cfg.validation_fraction * len(s)))
            train_segs, val_segs = split_segments(segments, n_train)
            fronts = {i: f for i, f in self._fronts.items()
                       if not is_exact(validation_r2.get(self.state_names[i]), cfg.exact_error)}
            if len(fronts) < len(self._fronts):
                info["exact_one_step"] = sorted(self.state_names[i] for i in self._fronts
                                                if i not in fronts)
            if fronts and val_segs:
                train_w, val_w = (
                    trajectory_windows(self, segs, s, a, s2, dt_rows, cfg.multistep_horizon,
                                       cfg.multistep_max_windows, rng)
                    for segs in (train_segs, val_segs))
                trees, info["trajectory_selection"] = select_on_trajectories(
                    self, trees, fronts, train_w, val_w, weights)
            scored = [name for name, r2 in validation_r2.items() if r2 is not None]
            if scored and all(is_exact(validation_r2.get(name), cfg.exact_error)
                              for name in scored):
                # an exact model's k-step loss sits at its floor: refining cannot gain
                info["multistep"] = {"skipped": "every coordinate is exact one step ahead"}
            else:
                windows = trajectory_windows(self, segments, s, a, s2, dt_rows,
                                             cfg.multistep_horizon, cfg.multistep_max_windows,
                                             rng)
                trees, info["multistep"] = refine_multistep(
                    self, trees, windows, weights, cfg.multistep_max_evaluations,
                    cfg.selection_floor)
            if self.is_continuous:
                self._set_derivatives(trees, self.integrator)
            else:
                self._set_trees(trees)
        self._fronts = {}
        self._members, self._member_models = [], None
        self._member_scale = None
        if cfg.bagging_members > 0:
            self._members, info["bagging"] = fit_members(
                self, trees, segments, s, a, s2, dt_rows, increments, rng)
            self._member_scale = np.std(increments, axis=0)
            self._member_scale[list(self.static_coords)] = 0.0
        return info

    def _finish_metrics(self, s, a, s2, dt_rows, n_total, n_dropped, train_idx, val_idx, val_r2,
                        t_start, init) -> None:
        pred = self.predict(s, a, dt=dt_rows) if dt_rows is not None else self.predict(s, a)
        fit_r2 = {
            name: increment_r2(s[:, i], s2[:, i], pred[:, i], i in self.angle_coords)
            for i, name in enumerate(self.state_names)
        }
        self.metrics = {
            "n_samples": n_total,
            "n_used": int(s.shape[0]),
            "n_dropped_nonfinite": n_dropped,
            "n_train": int(len(train_idx)),
            "n_validation": int(len(val_idx)),
            "validation_r2": val_r2,
            "fit_r2": fit_r2,
            "fit_seconds": round(time.perf_counter() - t_start, 4),
            "warm_start": init is not None,
        }

    def _dt_rows(self, dt, n: int, what: str) -> np.ndarray:
        """One positive step length per row, from ``dt`` or the model's own."""
        if dt is None:
            if self.dt is None:
                raise UserError(
                    f"{what} of a continuous-time model needs the step length: pass dt= "
                    "(seconds, one number or one per transition) or build the model with dt="
                )
            return np.full(n, self.dt)
        arr = np.asarray(dt, dtype=np.float64)
        if arr.ndim == 0:
            arr = np.full(n, float(arr))
        if arr.shape != (n,):
            raise UserError(f"{what}: dt must be one number or one per transition ({n}), got "
                            f"shape {arr.shape}")
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise UserError(f"{what}: dt must be positive and finite in every row")
        return arr

    def _init_trees(self, init) -> tuple[list[Node] | None, dict]:
        if init is None:
            return None, {}
        if isinstance(init, (str, Path)):
            init = SymbolicDynamics.load(init)
        if not isinstance(init, SymbolicDynamics):
            raise UserError(
                f"init must be a SymbolicDynamics model or a model file, not {type(init).__name__}"
            )
        if not init.is_fitted:
            raise UserError("init model is not fitted; fit or load it first")
        if init.is_continuous:
            return list(init._derivatives or []), {**init.metrics, "__time": "continuous"}
        if init.state_names != self.state_names or init.action_names != self.action_names:
            raise UserError(
                f"init model has state names {list(init.state_names)} and action names "
                f"{list(init.action_names)}, but this model has {list(self.state_names)} and "
                f"{list(self.action_names)}; a warm start needs the same coordinates"
            )
        if set(init.angle_coords) != set(self.angle_coords):
            raise UserError(
                "init model has different angle coordinates; a warm start needs the same ones"
            )
        return list(init._trees or []), {**init.metrics, "__time": "discrete"}

    def _fit_coordinate(
        self,
        i: int,
        X: np.ndarray,
        y: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        X_margin: np.ndarray,
        init_incr: Node | None,
        prev_r2: float | None,
    ) -> tuple[Node, dict[str, Any]]:
        cfg = self.config
        name = self.state_names[i]
        variables = self.variables
        rep: dict[str, Any] = {
            "coordinate": name,
            "kind": "learned",
            "angle": i in self.angle_coords,
        }
        if np.all(y == y[0]):
            value = float(y[0])
            incr: Node = Num(value)
            rep.update(
                kind="constant",
                chosen={
                    "expression": to_string(next_value_tree(name, incr), 6),
                    "source": "constant increment",
                },
                reason="the increment is the same in every transition",
                runner_ups=[],
            )
            return incr, rep
        data = make_fit_data(
            variables,
            X[train_idx],
            y[train_idx],
            X[val_idx],
            y[val_idx],
            X_margin,
            cfg.margin_bound,
        )
        floor, folds = cfg.error_floor, cfg.validation_folds
        candidates: list[Candidate] = []
        rejected = 0

        def refine(tree: Node, source: str) -> Candidate | None:
            """Refine and assess one candidate; ``None`` when it cannot be evaluated."""
            nonlocal rejected
            tree = simplify(fold_like_terms(tree))
            if not evaluable(tree, data):
                rejected += 1
                return None
            res = refine_constants(tree, variables, data.X_train, data.y_train, cfg.bfgs_maxiter)
            refined = snap_constants(res.tree, variables, data.X_train, data.y_train, floor)
            note = {"bfgs_iterations": res.iterations, "constants": res.n_params}
            label = source if source.endswith("BFGS-refined") else source + ", BFGS-refined"
            cand = assess(refined, data, label, folds, note)
            if cand is None:  # refinement walked into a singularity: keep the unrefined one
                cand = assess(tree, data, source, folds)
            if cand is None:
                rejected += 1
            return cand

        def consider(tree: Node, source: str) -> int:
            """Refine and assess one generated candidate; returns how many were kept."""
            cand = refine(tree, source)
            if cand is not None:
                candidates.append(cand)
            return int(cand is not None)

        search_note = ""
        skip_search = False
        if init_incr is not None:
            consider(init_incr, "init: previous model")
            if candidates:
                threshold = cfg.init_accept_r2
                if prev_r2 is not None:
                    threshold = min(threshold, prev_r2 - 1e-3)
                best_init = max(candidates, key=lambda c: c.val_r2)
                if best_init.val_r2 >= threshold:
                    skip_search = True
                    search_note = (
                        f"skipped: the warm-start expression reaches validation R² "
                        f"{best_init.val_r2:.6f} >= {threshold:.6f}"
                    )

        attempts = 0
        backend_info: dict[str, Any] = {}
        if not skip_search:
            for attempt in range(cfg.max_regenerations + 1):
                attempts = attempt + 1
                raw, backend_info = self._generate(i, data, attempt)
                kept = sum(consider(tree, source) for tree, source in raw)
                if kept:
                    break
            search_note = f"{self.backend} search" + (
                f", regenerated {attempts - 1} time(s) because no candidate could be evaluated"
                if attempts > 1
                else ""
            )
        if not candidates:
            mean = Num(float(np.mean(data.y_train)))
            cand = assess(mean, data, "fallback: mean increment", folds)
            assert cand is not None
            candidates.append(cand)
            search_note += "; no candidate could be evaluated, kept the mean increment"

        sel = backward_elimination(
            select(candidates, cfg.selection_floor), candidates, refine, cfg.selection_floor
        )
        best = sel.chosen
        self._fronts[i] = [c.tree for c in sel.front if c is not best]
        ranked = [best] + [c for c in rank(sel.front) if c is not best]
        # final polish of the winner's constants on all fit data (train + validation)
        all_idx = np.concatenate([train_idx, val_idx])
        final = best.tree
        polish = refine_constants(best.tree, variables, X[all_idx], y[all_idx], cfg.bfgs_maxiter)
        if evaluable(polish.tree, data):
            final = snap_constants(polish.tree, variables, X[all_idx], y[all_idx], floor)
        rep.update(
            chosen=best.summary(name),
            reason=sel.reason,
            runner_ups=[c.summary(name) for c in ranked[1 : 1 + cfg.runner_ups]],
            n_candidates=len(rank(candidates)),
            n_rejected=rejected,
            search=search_note,
            backend_info=backend_info,
        )
        rep["chosen"]["expression"] = to_string(next_value_tree(name, final), 4)
        return final, rep

    def _generate(self, i: int, data, attempt: int) -> tuple[list[tuple[Node, str]], dict]:
        """One round of candidates from the backend (:mod:`.backends`); later attempts search
        differently."""
        return get_backend(self.backend).generate(self, i, data, attempt)

    def _inputs(self) -> tuple[list[str], list[str]]:
        """(polynomial inputs, angle inputs) that candidate expressions may use."""
        cfg = self.config
        poly, angles = [], []
        for i, name in enumerate(self.state_names):
            if i in self.static_coords and not cfg.static_inputs:
                continue
            if i in self.invariant_coords:
                continue
            if i in self.angle_coords:
                angles.append(name)
                if cfg.angle_polynomials:
                    poly.append(name)
            else:
                poly.append(name)
        return poly + list(self.action_names), angles

    # --- prediction ----------------------------------------------------------------------------

    def _set_trees(self, trees: Sequence[Node]) -> None:
        self._trees = list(trees)
        self._derivatives = None
        self._compiled = [CompiledExpression(t, self.variables) for t in self._trees]

    def _set_derivatives(self, derivatives: Sequence[Node], integrator: Integrator) -> None:
        self._derivatives = list(derivatives)
        self._trees = None
        self.integrator = integrator
        self._compiled = [CompiledExpression(t, self.variables) for t in self._derivatives]

    def derivative_numpy(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Time derivatives (B, n) of a continuous-time model (numpy)."""
        X = np.concatenate([states, actions], axis=1)
        out = np.empty_like(states)
        with np.errstate(all="ignore"):
            for i, expr in enumerate(self._compiled):
                out[:, i] = expr.numpy(X)
        return out

    def derivative_torch(self, states, actions):
        """Time derivatives (B, n) of a continuous-time model (torch, differentiable)."""
        import torch

        X = torch.cat([states, actions], dim=-1)
        return torch.stack([expr.torch(X) for expr in self._compiled], dim=-1)

    def _step_dt(self, dt, batch: int, what: str, torch_like=None):
        """The step length(s) of a prediction: a number, or one per row."""
        if dt is None:
            if self.dt is None:
                raise UserError(f"{what}: this continuous-time model has no dt; pass dt=")
            return self.dt
        if torch_like is not None:
            import torch

            if isinstance(dt, torch.Tensor):
                if dt.ndim == 0 or dt.numel() == 1:
                    return float(dt.reshape(()))
                if dt.shape != (batch,):
                    raise UserError(f"{what}: dt must be one number or one per row ({batch})")
                return dt.to(torch_like.dtype)
        arr = np.asarray(dt, dtype=np.float64)
        if arr.ndim == 0:
            if not (np.isfinite(arr) and arr > 0):
                raise UserError(f"{what}: dt must be positive and finite, got {float(arr)}")
            return float(arr)
        if arr.shape != (batch,):
            raise UserError(f"{what}: dt must be one number or one per row ({batch}), got "
                            f"shape {arr.shape}")
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise UserError(f"{what}: dt must be positive and finite in every row")
        return arr

    def _check_discrete_dt(self, dt, what: str) -> None:
        if dt is None:
            return
        arr = np.asarray(dt.detach().cpu() if hasattr(dt, "detach") else dt, dtype=np.float64)
        if self.dt is None or not np.allclose(arr, self.dt, rtol=1e-9, atol=0.0):
            raise UserError(
                f"{what}: a discrete-time model predicts one step of its own length "
                f"({self.dt if self.dt is not None else 'unknown'} s); fit a continuous-time "
                "model (time='continuous') to predict other steps"
            )

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise UserError("the model is not fitted yet; call fit() or SymbolicDynamics.load()")

    def predict(self, states, actions, dt=None, return_std=False):
        """Next states (B, n) for states (B, n) and actions (B, m); single rows work too.

        A continuous-time model integrates over ``dt`` (a number or one per row; default the
        model's ``dt``); a discrete-time one predicts its own step only. ``return_std``: also
        the spread of the bagged members' predictions (:meth:`uncertainty`)."""
        if return_std:
            return self.predict(states, actions, dt), self.uncertainty(states, actions, dt)
        self._require_fitted()
        s = np.asarray(states, dtype=np.float64)
        a = np.asarray(actions, dtype=np.float64)
        single = s.ndim == 1
        s2, a2 = np.atleast_2d(s), np.atleast_2d(a)
        if (
            s2.ndim != 2
            or s2.shape[1] != self.state_dim
            or a2.ndim != 2
            or a2.shape[1] != self.action_dim
        ):
            raise UserError(
                f"predict expects states (B, {self.state_dim}) and actions (B, {self.action_dim}), "
                f"got {s.shape} and {a.shape}"
            )
        if s2.shape[0] != a2.shape[0]:
            raise UserError(f"predict got {s2.shape[0]} states but {a2.shape[0]} actions")
        if self.is_continuous:
            assert self.integrator is not None
            step = self._step_dt(dt, s2.shape[0], "predict")
            with np.errstate(all="ignore"):
                out = self.integrator.step(self.derivative_numpy, s2, a2, step)
            for i in self.static_coords:
                out[:, i] = s2[:, i]
        else:
            self._check_discrete_dt(dt, "predict")
            X = np.hstack([s2, a2])
            out = np.empty_like(s2)
            for i, expr in enumerate(self._compiled):
                out[:, i] = expr.numpy(X)
        for i in self.angle_coords:
            out[:, i] = wrap_angle(out[:, i])
        return out[0] if single else out

    def predict_torch(self, states, actions, dt=None, return_std=False):
        """Next states for torch tensors (B, n), (B, m), in one vectorised call per coordinate.

        Same dtype and device in and out; agrees with :meth:`predict` to floating-point precision.
        ``dt`` as in :meth:`predict` (a number, or a tensor or array with one per row);
        ``return_std`` as in :meth:`predict`.
        """
        import torch

        if return_std:
            return (self.predict_torch(states, actions, dt),
                    self.uncertainty_torch(states, actions, dt))

        self._require_fitted()
        if states.shape[-1] != self.state_dim or actions.shape[-1] != self.action_dim:
            raise UserError(
                f"predict_torch expects states (B, {self.state_dim}) and actions "
                f"(B, {self.action_dim}), got {tuple(states.shape)} and {tuple(actions.shape)}"
            )
        if self.is_continuous:
            assert self.integrator is not None
            step = self._step_dt(dt, states.shape[0], "predict_torch", torch_like=states)
            if isinstance(step, np.ndarray):
                step = torch.as_tensor(step, dtype=states.dtype, device=states.device)
            out = self.integrator.step(
                self.derivative_torch, states, actions.to(states.dtype), step
            )
            if self.angle_coords or self.static_coords:
                cols = list(out.unbind(-1))
                for i in self.angle_coords:
                    cols[i] = torch.remainder(cols[i] + math.pi, 2 * math.pi) - math.pi
                for i in self.static_coords:
                    cols[i] = states[..., i]
                out = torch.stack(cols, dim=-1)
            return out
        self._check_discrete_dt(dt, "predict_torch")
        X = torch.cat([states, actions.to(states.dtype)], dim=-1)
        cols = []
        for i, expr in enumerate(self._compiled):
            col = expr.torch(X)
            if i in self.angle_coords:
                col = torch.remainder(col + math.pi, 2 * math.pi) - math.pi
            cols.append(col)
        return torch.stack(cols, dim=-1)

    # --- ensemble members (bagging) --------------------------------------------------------

    @property
    def n_members(self) -> int:
        """Bagged members kept with the model (``bagging_members`` at fit; 0: none)."""
        return len(self._members)

    def _members_or_fail(self, what: str) -> list:
        self._require_fitted()
        if not self._members:
            raise UserError(f"{what}: this model has no ensemble members; fit it with "
                            "bagging_members > 0 (e.g. SymbolicDynamics(..., bagging_members=5))")
        if self._member_models is None:
            self._member_models = member_models(self, self._members)
        return self._member_models

    def predict_members(self, states, actions, dt=None) -> np.ndarray:
        """Each member's next states, (K, B, n) (numpy)."""
        members = self._members_or_fail("predict_members")
        return np.stack([np.atleast_2d(m.predict(states, actions, dt)) for m in members])

    def predict_members_torch(self, states, actions, dt=None):
        """Each member's next states, (K, B, n) (torch)."""
        import torch

        members = self._members_or_fail("predict_members_torch")
        return torch.stack([m.predict_torch(states, actions, dt) for m in members])

    def uncertainty(self, states, actions, dt=None) -> np.ndarray:
        """Per row and coordinate, the standard deviation of the members' next states (B, n)
        (angle coordinates: of their wrapped deviations); 0 where they agree."""
        single = np.ndim(states) == 1
        pred = np.atleast_2d(self.predict(states, actions, dt))
        out = spread(self.predict_members(states, actions, dt), pred, self.angle_coords)
        return out[0] if single else out

    def uncertainty_torch(self, states, actions, dt=None):
        """:meth:`uncertainty` for torch tensors (B, n)."""
        pred = self.predict_torch(states, actions, dt)
        return spread(self.predict_members_torch(states, actions, dt), pred, self.angle_coords)

    def disagreement(self, states, actions, dt=None) -> np.ndarray:
        """Per row, the largest member spread of a coordinate in units of that coordinate's
        standard deviation of one-step change in the fit data (B,): 0.1 means the members
        disagree by a tenth of a typical step."""
        self._members_or_fail("disagreement")
        return disagreement(np.atleast_2d(self.uncertainty(states, actions, dt)),
                            self._member_scale)

    def disagreement_torch(self, states, actions, dt=None):
        """:meth:`disagreement` for torch tensors (B,)."""
        self._members_or_fail("disagreement_torch")
        return disagreement(self.uncertainty_torch(states, actions, dt), self._member_scale)

    def score(self, states, actions, next_states, dt=None) -> dict[str, float]:
        """R² per coordinate, on the increment (next - current; wrapped for angle coordinates).

        A coordinate whose true increment has ~zero variance scores 1.0 when predicted exactly
        and 0.0 otherwise. Rows with NaN or inf are dropped (with a warning). ``dt`` as in
        :meth:`predict`.
        """
        self._require_fitted()
        s, a, s2, finite = check_transition_arrays(
            states,
            actions,
            next_states,
            state_dim=self.state_dim,
            action_dim=self.action_dim,
            what="score",
        )
        warn_dropped(int((~finite).sum()), s.shape[0], "SymbolicDynamics.score")
        if dt is not None and np.ndim(dt):
            dt = np.asarray(dt, dtype=np.float64)
            if dt.shape != finite.shape:
                raise UserError(f"score: dt must be one number or one per transition "
                                f"({finite.shape[0]}), got shape {dt.shape}")
            dt = dt[finite]
        s, a, s2 = s[finite], a[finite], s2[finite]
        if s.shape[0] == 0:
            raise UserError("score needs at least one transition without NaN or inf")
        pred = self.predict(s, a, dt=dt)
        return {
            name: increment_r2(s[:, i], s2[:, i], pred[:, i], i in self.angle_coords)
            for i, name in enumerate(self.state_names)
        }

    # --- export --------------------------------------------------------------------------------

    def trees(self) -> list[Node]:
        """The parsed expression trees (next value of each coordinate) of a discrete-time
        model; a continuous-time model has :meth:`derivative_trees` instead."""
        self._require_fitted()
        if self.is_continuous:
            raise UserError(
                "a continuous-time model has no next-value expressions; use derivative_trees() "
                "(its laws) and predict() (the integrated step)"
            )
        return list(self._trees or [])

    def derivative_trees(self) -> list[Node]:
        """The time derivative of each coordinate (continuous-time models)."""
        self._require_fitted()
        if not self.is_continuous:
            raise UserError("a discrete-time model has no derivatives; use trees()")
        return list(self._derivatives or [])

    def expression_strings(self, precision: int | None = None) -> list[str]:
        """One string per coordinate for its next value (discrete) or its time derivative
        (continuous); full precision unless ``precision``."""
        trees = self.derivative_trees() if self.is_continuous else self.trees()
        return [to_string(t, precision) for t in trees]

    def expressions(self) -> list:
        """sympy expressions: the next value (discrete) or the time derivative (continuous) of
        each state coordinate."""
        trees = self.derivative_trees() if self.is_continuous else self.trees()
        return [to_sympy(t) for t in trees]

    def equations(self, precision: int = 4) -> list[str]:
        """Readable equations, constants rounded: ``theta' = theta + 0.05*theta_dot + ...``
        for a discrete-time model, :meth:`laws` for a continuous-time one."""
        if self.is_continuous:
            return self.laws(precision)
        return [
            f"{name}' = {text}"
            for name, text in zip(self.state_names, self.expression_strings(precision))
        ]

    def laws(self, precision: int = 4) -> list[str]:
        """The laws as a roboticist writes them, ``theta_ddot = 15*sin(theta) + 3*torque``.

        Left out: static coordinates, and kinematic identities whose two sides read the same
        (``theta_dot = theta_dot``: theta's derivative is the coordinate theta_dot). A
        discrete-time model has no laws; its :meth:`equations` are returned.
        """
        if not self.is_continuous:
            return self.equations(precision)
        out = []
        for i, (name, tree) in enumerate(zip(self.state_names, self.derivative_trees())):
            if i in self.static_coords or tree == Name(law_name(name)):
                continue
            out.append(law_text(name, tree, precision))
        return out

    def print(self, precision: int = 4) -> None:
        """Print the equations, one per line (like pysindy's ``model.print()``)."""
        for line in self.equations(precision):
            print(line)  # the builtin: a method name is not in scope inside the method

    def latex(self, precision: int = 4) -> list[str]:
        """One LaTeX equation per coordinate, constants rounded to ``precision`` digits."""
        import sympy

        out = []
        if self.is_continuous:
            for i, (name, tree) in enumerate(zip(self.state_names, self.derivative_trees())):
                if i in self.static_coords:
                    continue
                lhs = sympy.latex(sympy.Symbol(name))
                out.append(rf"\dot{{{lhs}}} = {sympy.latex(to_sympy(tree, precision))}")
            return out
        for name, tree in zip(self.state_names, self.trees()):
            lhs = sympy.latex(sympy.Symbol(name))
            out.append(f"{lhs}' = {sympy.latex(to_sympy(tree, precision))}")
        return out

    def report(self) -> list[dict[str, Any]]:
        """Per coordinate: what was chosen and why (validation R², complexity, runner-ups)."""
        return json.loads(json.dumps(self._report))

    def format_report(self) -> str:
        """The selection report as indented text (what ``sym-mbrl fit`` prints)."""
        lines = []
        for rep in self._report:
            chosen = rep.get("chosen", {})
            lines.append(f"{rep['coordinate']}: {rep.get('reason', '')}")
            if rep.get("kind") != "learned":
                continue
            lines.append(
                f"  chosen   {chosen.get('expression')}\n"
                f"           from {chosen.get('source')}; "
                f"validation R² {format_r2(chosen.get('validation_r2'))}, "
                f"complexity {chosen.get('complexity')}"
            )
            for k, ru in enumerate(rep.get("runner_ups", []), 1):
                lines.append(
                    f"  runner-up {k}: {ru['expression']}\n"
                    f"           from {ru['source']}; "
                    f"validation R² {format_r2(ru['validation_r2'])}, "
                    f"complexity {ru['complexity']}"
                )
            lines.append(
                f"  search   {rep.get('search', '')}; "
                f"{rep.get('n_candidates', 0)} candidates ranked, "
                f"{rep.get('n_rejected', 0)} dropped as not evaluable on the data margin"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        if not self.is_fitted:
            return (
                f"SymbolicDynamics(state={list(self.state_names)}, "
                f"action={list(self.action_names)}, unfitted)"
            )
        return "SymbolicDynamics(\n  " + "\n  ".join(self.equations()) + "\n)"

    # --- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready document: ``sym-mbrl/dynamics-v1`` (discrete time, ``expressions``)
        or ``sym-mbrl/dynamics-v2`` (continuous time, ``derivatives``, ``integrator``, ``dt``)."""
        self._require_fitted()
        if self.is_continuous:
            assert self.integrator is not None
            body: dict[str, Any] = {
                "format": FORMAT_V2,
                "time": "continuous",
                "derivatives": self.expression_strings(),
                "integrator": self.integrator.to_dict(),
                "dt": self.dt,
            }
        else:
            body = {"format": FORMAT, "expressions": self.expression_strings(), "dt": self.dt}
        if self._members:
            assert self._member_scale is not None
            body["members"] = {
                "expressions": [[to_string(tree) for tree in m] for m in self._members],
                "scale": [float(x) for x in self._member_scale],
            }
        return _clean_json(
            {
                **body,
                "state_names": list(self.state_names),
                "action_names": list(self.action_names),
                "metrics": self.metrics,
                "backend": self.backend,
                "angle_coords": list(self.angle_coords),
                "static_coords": list(self.static_coords),
                "invariant_coords": list(self.invariant_coords),
                "seed": self.seed,
                "config": asdict(self.config),
                "report": self._report,
                "renamed": self.renamed,
                "provenance": self.provenance,
                "created_by": f"sym_mbrl_ros {__version__}",
            }
        )

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> Path:
        """Write the model as JSON (``sym-mbrl/dynamics-v1`` or ``-v2``); returns the path."""
        path = Path(path)
        if not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, doc: Any, source: str = "model") -> SymbolicDynamics:
        """Rebuild a model from its JSON document; expressions go through the whitelisted parser."""
        if not isinstance(doc, dict):
            raise UserError(f"{source} is not a sym-mbrl dynamics model (expected a JSON object)")
        if doc.get("format") not in FORMATS:
            raise UserError(
                f"{source} is not a sym-mbrl dynamics model (format is {doc.get('format')!r}, "
                f"expected one of {', '.join(FORMATS)})"
            )
        continuous = doc["format"] == FORMAT_V2
        key_expr = "derivatives" if continuous else "expressions"
        for key in ("state_names", "action_names", key_expr):
            if not isinstance(doc.get(key), list):
                raise UserError(f"{source} has no {key} list")
        state_names, action_names = doc["state_names"], doc["action_names"]
        if not all(isinstance(x, str) for x in state_names + action_names):
            raise UserError(f"{source}: state and action names must be strings")
        if len(doc[key_expr]) != len(state_names):
            raise UserError(
                f"{source} has {len(doc[key_expr])} {key_expr} for {len(state_names)} "
                f"state coordinates; it needs one per coordinate"
            )
        dt = doc.get("dt")
        if dt is not None and (isinstance(dt, bool) or not isinstance(dt, (int, float))
                               or not math.isfinite(dt) or dt <= 0):
            raise UserError(f"{source}: dt must be a positive number of seconds, got {dt!r}")
        if continuous and dt is None:
            raise UserError(f"{source}: a continuous-time model needs its dt (seconds)")
        config = doc.get("config") or {}
        if not isinstance(config, dict):
            raise UserError(f"{source}: config must be a JSON object")
        known = {f.name for f in fields(SymbolicDynamicsConfig)}
        config = {k: v for k, v in config.items() if k in known}
        config["time"] = "continuous" if continuous else "discrete"
        try:
            model = cls(
                state_names,
                action_names,
                doc.get("angle_coords") or (),
                doc.get("static_coords") or (),
                backend=doc.get("backend", "sparse")
                if doc.get("backend") in backend_names()
                else "sparse",
                seed=int(doc.get("seed", 0) or 0),
                invariant_coords=doc.get("invariant_coords") or (),
                dt=dt,
                **config,
            )
        except (TypeError, ValueError) as exc:
            raise UserError(f"{source} is not a valid sym-mbrl dynamics model: {exc}") from None
        trees = []
        for name, text in zip(state_names, doc[key_expr]):
            try:
                trees.append(parse_expression(text, model.variables))
            except ExpressionError as exc:
                what = "derivative" if continuous else "expression"
                raise UserError(f"{source}: the {what} of {name} is invalid: {exc}") from None
        if continuous:
            model._set_derivatives(trees, Integrator.from_dict(doc.get("integrator"), source))
        else:
            model._set_trees(trees)
        if doc.get("members") is not None:
            model._members, model._member_scale = _read_members(doc["members"], model, source)
        backend = doc.get("backend")
        if isinstance(backend, str) and is_identifier(backend):
            model.backend = backend  # the label of a backend this build may not have
        metrics = doc.get("metrics")
        model.metrics = metrics if isinstance(metrics, dict) else {}
        report = doc.get("report")
        model._report = report if isinstance(report, list) else []
        renamed = doc.get("renamed")
        model.renamed = renamed if isinstance(renamed, dict) else {}
        prov = doc.get("provenance")
        model.provenance = prov if isinstance(prov, dict) else {}
        return model

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> SymbolicDynamics:
        """Rebuild a model from a JSON string (such as a ``/sym_mbrl/dynamics_model`` message)."""
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise UserError(f"{source} is not valid JSON ({exc})") from None
        return cls.from_dict(doc, source)

    @classmethod
    def load(cls, path: str | Path) -> SymbolicDynamics:
        """Read a model file written by :meth:`save`; bad files raise :class:`UserError`."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise UserError(f"model file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read model file {path} ({exc})") from None
        return cls.from_json(text, f"model file {path}")


# --- helpers -----------------------------------------------------------------------------------


def expression_names(
    state_names: Sequence[str], action_names: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, str]]:
    """Names usable in expressions: identifiers, not function names, all distinct.

    Characters other than letters, digits and ``_`` become ``_``; an action named like a state
    gets the suffix ``_cmd``. Returns the new state and action names and ``{old: new}`` for
    those that changed (``sym-mbrl fit`` prints them).
    """

    def fix(name: str) -> str:
        out = re.sub(r"[^A-Za-z0-9_]", "_", str(name)) or "x"
        if out[0].isdigit():
            out = "x_" + out
        return out + "_" if out in FUNCTIONS else out

    taken: set[str] = set()
    changed: dict[str, str] = {}

    def unique(name: str, suffix: str) -> str:
        base = fix(name)
        new = base if base not in taken else base + suffix
        k = 2
        while new in taken:
            new = f"{base}{suffix}{k}"
            k += 1
        taken.add(new)
        if new != name:
            changed[str(name)] = new
        return new

    states = tuple(unique(n, "_") for n in state_names)
    actions = tuple(unique(n, "_cmd") for n in action_names)
    return states, actions, changed


def _read_members(doc: Any, model: SymbolicDynamics, source: str):
    """The optional ``members`` of a model file: expressions per member, and the scale of
    each coordinate's one-step change."""
    n = model.state_dim
    if (not isinstance(doc, dict) or not isinstance(doc.get("expressions"), list)
            or not isinstance(doc.get("scale"), list) or len(doc["scale"]) != n):
        raise UserError(f"{source}: members must be an object with expressions (one list per "
                        f"member) and scale ({n} numbers)")
    try:
        scale = np.asarray(doc["scale"], dtype=np.float64)
    except (TypeError, ValueError):
        scale = np.full(n, np.nan)
    if not np.all(np.isfinite(scale)) or np.any(scale < 0):
        raise UserError(f"{source}: members scale must hold {n} non-negative numbers")
    members = []
    for k, texts in enumerate(doc["expressions"]):
        if not isinstance(texts, list) or len(texts) != n:
            raise UserError(f"{source}: member {k} needs one expression per state coordinate")
        try:
            members.append([parse_expression(str(x), model.variables) for x in texts])
        except ExpressionError as exc:
            raise UserError(f"{source}: member {k} has an invalid expression: {exc}") from None
    return members, scale


def _check_dt(dt) -> float | None:
    if dt is None:
        return None
    if isinstance(dt, bool) or not isinstance(dt, (int, float, np.floating, np.integer)):
        raise UserError(f"dt must be a number of seconds, got {dt!r}")
    if not (math.isfinite(float(dt)) and float(dt) > 0):
        raise UserError(f"dt must be positive and finite, got {dt}")
    return float(dt)


def _check_names(names: Sequence[str], kind: str) -> tuple[str, ...]:
    if isinstance(names, str):
        raise UserError(f"{kind} names must be a list of names, not one string {names!r}")
    out = tuple(names)
    for name in out:
        if not isinstance(name, str) or not name:
            raise UserError(f"{kind} names must be non-empty strings, got {name!r}")
    return out


def _check_indices(indices: Sequence[int], n: int, what: str) -> tuple[int, ...]:
    out = []
    for k in indices:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) < n:
            raise UserError(f"{what} must hold indices between 0 and {n - 1}, got {k!r}")
        out.append(int(k))
    return tuple(sorted(set(out)))


@contextlib.contextmanager
def _single_threaded_blas():
    """Run BLAS on one thread: the matrices here are small, and threads only contend."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only speed depends on it
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def format_r2(x: float | None) -> str:
    """R² for people: six decimals, and the gap to 1 when six decimals would read 1.000000."""
    if x is None:
        return "n/a"
    if 0.9999995 <= x < 1.0:
        return f"{x:.6f} (1 - {1.0 - x:.1e})"
    return f"{x:.6f}"


def _clean_json(x):
    """Make a structure JSON-safe: tuples to lists, numpy scalars to Python, NaN/inf to None."""
    if isinstance(x, dict):
        return {str(k): _clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean_json(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.ndarray):
        return _clean_json(x.tolist())
    return x
