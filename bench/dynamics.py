"""World-model benchmark: symbolic dynamics (sparse, gp) against SINDy, raw pyoperon and an MLP
ensemble, on the three MuJoCo tasks and three classic systems, all on the same data.

For each system and method, per state coordinate:

* **held-out R²**: R² of the increment (next - current, wrapped for angles) on fresh random
  transitions from other episodes (DESIGN.md, "Metrics");
* **extrapolation R²**: trained only on transitions whose key coordinates (a position or angle,
  a velocity and an action or a second state, see ``EXTRAPOLATION``) all lie in the central
  60 % of their range, tested on transitions with at least one key outside it;
* **open-loop rollout error** after 1, 10 and 50 steps: the model is fed its own predictions
  and the recorded actions from a real state; median absolute error (wrapped for angles) over
  up to 100 starts in the held-out episodes;
* **size**: nodes of the expression tree (of the increment for ours and pyoperon, of the next
  value for SINDy, whose expression includes the identity term); the MLP ensemble's weight count
  is in the summary;
* **fit time** of the whole model, in seconds, on this machine.

Methods (same training data for all):

* ``sparse``, ``gp``: :class:`SymbolicDynamics` with its two search backends (candidates,
  BFGS on the constants, ranking on an internal validation split);
* ``sparse-noinv`` (Car2d only): ``sparse`` without the task's invariant coordinates, so the
  car's position may enter any expression (the ablation of ``TaskSpec.invariant_coords``);
* ``sindy``: pysindy's ``DiscreteSINDy`` with control, next state from (state, action) with the
  angle targets unwrapped, a library as close to ours as pysindy allows (cubic polynomials of
  every input, sin/cos of angles, their products with quadratic polynomials of the other
  inputs) and an STLSQ threshold picked from 1e-6..1e-2 on a 20 % validation split;
* ``operon``: raw pyoperon per coordinate with the same settings as ``gp`` (500-row search
  subset, 5 local iterations, increment targets, the whole time budget in one run), taking
  the front member with the lowest training error (its default pick, minimum description
  length with unit noise, chose far too simple models on these small increments); no BFGS, no
  ranking on held-out data, no check of the data margin;
* ``ensemble``: :class:`EnsembleDynamics`, MBPO's probabilistic MLP ensemble (mean of elites).

    python bench/dynamics.py [--seed 0] [--quick] [--systems pendulum,cartpole] [--methods ...]
    python bench/dynamics.py --suite [options of bench/world_model_suite.py]

``--suite`` runs the world-model suite (systems with known laws, exact structure, noise);
see bench/world_model_suite.py.

Writes the tables to bench/results/dynamics.md and the configuration and every number to
bench/results/dynamics.json (``--quick`` writes dynamics_quick.*, a subset of ``--systems``
dynamics_<system>_<system>.*, and a subset of ``--methods`` adds their names).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from classic_systems import SYSTEMS as CLASSIC  # noqa: E402

from sym_mbrl_ros.dynamics import SymbolicDynamics, increment_r2, wrap_angle  # noqa: E402
from sym_mbrl_ros.dynamics.expression import (  # noqa: E402
    ExpressionError,
    increment_tree,
    node_count,
    parse_expression,
)
from sym_mbrl_ros.dynamics.gp import operon_to_grammar  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MUJOCO = ("pendulum", "reacher", "car2d")
SYSTEM_ORDER = MUJOCO + ("cartpole", "duffing", "unicycle")
METHODS = ("sparse", "sparse-noinv", "gp", "transformer", "sindy", "operon", "ensemble")
HORIZONS = (1, 10, 50)
# (kind, name) of the coordinates restricted for the extrapolation test
EXTRAPOLATION = {
    "pendulum": [("state", "theta"), ("state", "theta_dot"), ("action", "torque")],
    "reacher": [("state", "elbow"), ("state", "shoulder_vel"), ("state", "elbow_vel")],
    # position and speed: a model fitted near the origin must hold farther away
    "car2d": [("state", "x"), ("state", "y"), ("state", "v")],
    "cartpole": [("state", "theta"), ("state", "theta_dot"), ("action", "force")],
    "duffing": [("state", "x"), ("state", "v"), ("action", "force")],
    "unicycle": [("state", "heading"), ("action", "v"), ("action", "omega")],
}
INNER_SHARE = 0.6


@dataclass
class System:
    """A system's names and the transitions the benchmark uses."""

    name: str
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    angle_coords: tuple[int, ...]
    static_coords: tuple[int, ...]
    dt: float
    train: dict
    test: dict
    extrap_train: dict
    extrap_test: dict
    extrap_box: dict = field(default_factory=dict)
    invariant_coords: tuple[int, ...] = ()
    """Coordinates the dynamics do not depend on (TaskSpec.invariant_coords); our symbolic
    model uses them in no expression, the other methods are not told."""

    @property
    def dynamic(self) -> list[int]:
        return [i for i in range(len(self.state_names)) if i not in self.static_coords]


@dataclass
class Fitted:
    """A fitted model, seen from the benchmark."""

    predict: Callable[[np.ndarray, np.ndarray], np.ndarray]
    seconds: float
    sizes: dict[int, int | None]
    weights: int | None = None
    notes: str = ""
    expressions: dict[int, str] = field(default_factory=dict)
    """Per dynamic coordinate, the increment in our grammar (in ``expression_names``)."""
    expression_names: tuple[str, ...] = ()


# --- data --------------------------------------------------------------------------------------


def record(name: str, n: int, seed: int) -> dict:
    """``n`` random-action transitions of a system, episode by episode."""
    if name in MUJOCO:
        from sym_mbrl_ros.commands.collect import collect_random
        from sym_mbrl_ros.envs import get_task

        data = collect_random(get_task(name), n, seed)
        return {k: data[k] for k in ("states", "actions", "next_states", "episode")}
    return CLASSIC[name].episodes(n, seed)


def take(data: dict, rows: np.ndarray) -> dict:
    return {k: v[rows] for k, v in data.items()}


def restrict(name: str, pool: dict, state_names, action_names, n_train: int, n_test: int, seed):
    """Training rows inside the central box of the key coordinates, test rows outside it."""
    rng = np.random.default_rng(seed)
    inside = np.ones(len(pool["states"]), dtype=bool)
    box = {}
    lo_q, hi_q = (1 - INNER_SHARE) / 2, 1 - (1 - INNER_SHARE) / 2
    for kind, key in EXTRAPOLATION[name]:
        names = state_names if kind == "state" else action_names
        col = pool["states" if kind == "state" else "actions"][:, names.index(key)]
        lo, hi = np.quantile(col, [lo_q, hi_q])
        box[f"{kind} {key}"] = [float(lo), float(hi)]
        inside &= (col >= lo) & (col <= hi)
    train = rng.permutation(np.flatnonzero(inside))[:n_train]
    test = rng.permutation(np.flatnonzero(~inside))[:n_test]
    return take(pool, np.sort(train)), take(pool, np.sort(test)), box


def make_system(name: str, sizes: dict, seed: int) -> System:
    if name in MUJOCO:
        from sym_mbrl_ros.envs import get_task

        task = get_task(name)
        meta = (task.state_names, task.action_names, task.angle_coords, task.static_coords, task.dt)
    else:
        s = CLASSIC[name]
        meta = (s.state_names, s.action_names, s.angle_coords, s.static_coords, s.dt)
    n_train = sizes["train"][name]
    train = record(name, n_train, seed)
    test = record(name, sizes["test"], seed + 1000)
    pool = record(name, sizes["pool"], seed + 2000)
    ex_train, ex_test, box = restrict(name, pool, meta[0], meta[1], n_train, sizes["test"], seed)
    invariant = tuple(task.invariant_coords) if name in MUJOCO else ()
    return System(name, *meta, train, test, ex_train, ex_test, box, invariant)


# --- methods -----------------------------------------------------------------------------------


def fit_symbolic(system: System, data: dict, backend: str, seed: int, gp_time: float) -> Fitted:
    config = {"gp_time": gp_time} if backend == "gp" else {}
    model = SymbolicDynamics(
        system.state_names,
        system.action_names,
        system.angle_coords,
        system.static_coords,
        backend=backend,
        seed=seed,
        invariant_coords=system.invariant_coords,
        **config,
    )
    t0 = time.perf_counter()
    model.fit(data["states"], data["actions"], data["next_states"])
    seconds = time.perf_counter() - t0
    trees = model.trees()
    sizes = {i: node_count(increment_tree(model.state_names[i], trees[i])) for i in system.dynamic}
    return Fitted(model.predict, seconds, sizes)


def _unwrapped_next(system: System, s: np.ndarray, s2: np.ndarray) -> np.ndarray:
    out = s2.copy()
    for i in system.angle_coords:
        out[:, i] = s[:, i] + wrap_angle(s2[:, i] - s[:, i])
    return out


def _finish(system: System, s: np.ndarray, dyn_next: np.ndarray) -> np.ndarray:
    """Full next states from the dynamic coordinates' predictions (statics copied, angles
    wrapped)."""
    out = s.copy()
    out[:, system.dynamic] = dyn_next
    for i in system.angle_coords:
        out[:, i] = wrap_angle(out[:, i])
    return out


def sindy_library(system: System):
    import pysindy as ps

    dyn = system.dynamic
    n_in = len(dyn) + len(system.action_names)
    angles = [dyn.index(i) for i in system.angle_coords if i in dyn]
    others = [k for k in range(n_in) if k not in angles]
    if not angles:
        return ps.PolynomialLibrary(degree=3)
    return ps.GeneralizedLibrary(
        [
            ps.PolynomialLibrary(degree=3),
            ps.FourierLibrary(n_frequencies=1),
            ps.PolynomialLibrary(degree=2),
        ],
        tensor_array=[[0, 1, 1]],
        inputs_per_library=[list(range(n_in)), angles, others],
        exclude_libraries=[2],
    )


def sindy_size(feature_names: list[str], coefs: np.ndarray, n_x: int, n_u: int) -> int:
    """Node count of SINDy's expression for one coordinate, in our grammar."""
    names = [f"x{k}" for k in range(n_x)] + [f"u{k}" for k in range(n_u)]
    total, terms = 0, 0
    for name, c in zip(feature_names, coefs):
        if c == 0:
            continue
        terms += 1
        if name.strip() == "1":
            total += 1
            continue
        text = " ".join(name.split()).replace("^", "**").replace(" ", "*")
        try:
            total += 2 + node_count(parse_expression(text, names))
        except ExpressionError:
            total += 2 + len(name.split())
    return total + max(terms - 1, 0)


def fit_sindy(system: System, data: dict, seed: int) -> Fitted:
    import pysindy as ps

    dyn = system.dynamic
    s, a, s2 = data["states"], data["actions"], data["next_states"]
    x, target = s[:, dyn], _unwrapped_next(system, s, s2)[:, dyn]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_val = len(x) // 5
    val, tr = order[:n_val], order[n_val:]
    t0 = time.perf_counter()
    best = None
    for threshold in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2):
        model = ps.DiscreteSINDy(
            feature_library=sindy_library(system),
            optimizer=ps.STLSQ(threshold=threshold, alpha=1e-6),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x[tr], t=system.dt, x_next=target[tr], u=a[tr])
            err = float(
                np.mean(
                    (model.predict(x[val], u=a[val]) - target[val]) ** 2
                    / np.var(target[val] - x[val], axis=0)
                )
            )
        if np.isfinite(err) and (best is None or err < best[0]):
            best = (err, threshold)
    model = ps.DiscreteSINDy(
        feature_library=sindy_library(system), optimizer=ps.STLSQ(threshold=best[1], alpha=1e-6)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, t=system.dt, x_next=target, u=a)
    seconds = time.perf_counter() - t0
    coefs = model.coefficients()
    names = model.get_feature_names()
    sizes = {i: sindy_size(names, coefs[k], len(dyn), a.shape[1]) for k, i in enumerate(dyn)}

    def predict(s_in: np.ndarray, a_in: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nxt = np.asarray(model.predict(s_in[:, dyn], u=a_in))
        return _finish(system, s_in, nxt)

    return Fitted(predict, seconds, sizes, notes=f"threshold {best[1]:g}")


def fit_operon(system: System, data: dict, seed: int, gp_time: float) -> Fitted:
    from pyoperon.sklearn import SymbolicRegressor

    dyn = system.dynamic
    s, a, s2 = data["states"], data["actions"], data["next_states"]
    X = np.hstack([s[:, dyn], a])
    names = [f"v{k}" for k in range(X.shape[1])]  # any names a file may hold are fine here
    inc = _unwrapped_next(system, s, s2) - s
    regs, sizes, expressions = {}, {}, {}
    t0 = time.perf_counter()
    rows = np.arange(len(X))
    if len(rows) > 500:  # the same search subset size as the gp backend
        rows = np.sort(np.random.default_rng(seed).permutation(rows)[:500])
    for k, i in enumerate(dyn):
        reg = SymbolicRegressor(
            allowed_symbols="add,sub,mul,div,constant,variable,sin,cos",
            objectives=["r2", "length"],
            population_size=500,
            max_length=30,
            optimizer_iterations=5,
            model_selection_criterion="mean_squared_error",
            generations=100_000,
            max_evaluations=10**9,
            max_time=max(1, int(math.ceil(gp_time))),
            n_threads=1,
            random_state=seed * 7919 + k,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reg.fit(X[rows], inc[rows, i])
        regs[i] = reg
        text = operon_to_grammar(reg.get_model_string(reg.model_, 17, names=names))
        try:
            sizes[i] = node_count(parse_expression(text, names))
            expressions[i] = text
        except ExpressionError:
            sizes[i] = int(reg.stats_["model_length"])
    seconds = time.perf_counter() - t0

    def predict(s_in: np.ndarray, a_in: np.ndarray) -> np.ndarray:
        X_in = np.hstack([s_in[:, dyn], a_in])
        nxt = np.stack([s_in[:, i] + regs[i].predict(X_in) for i in dyn], axis=1)
        return _finish(system, s_in, nxt)

    return Fitted(predict, seconds, sizes, expressions=expressions, expression_names=tuple(names))


def fit_ensemble(system: System, data: dict, seed: int, hparams: dict) -> Fitted:
    from sym_mbrl_ros.dynamics.ensemble import EnsembleDynamics

    model = EnsembleDynamics(
        system.state_names,
        system.action_names,
        system.angle_coords,
        system.static_coords,
        seed=seed,
        **hparams,
    )
    t0 = time.perf_counter()
    model.fit(data["states"], data["actions"], data["next_states"])
    seconds = time.perf_counter() - t0
    weights = sum(p.numel() for p in model.net.parameters())
    return Fitted(model.predict, seconds, {i: None for i in system.dynamic}, weights=weights)


def fit_method(method: str, system: System, data: dict, args, cfg: dict) -> Fitted:
    if method in ("sparse", "gp", "transformer"):
        return fit_symbolic(system, data, method, args.seed, cfg["gp_time"])
    if method == "sparse-noinv":  # the ablation: invariant coordinates may enter expressions
        free = replace(system, invariant_coords=())
        return fit_symbolic(free, data, "sparse", args.seed, cfg["gp_time"])
    if method == "sindy":
        return fit_sindy(system, data, args.seed)
    if method == "operon":
        return fit_operon(system, data, args.seed, cfg["gp_time"])
    return fit_ensemble(system, data, args.seed, cfg["ensemble"])


# --- metrics -----------------------------------------------------------------------------------


def r2_per_coordinate(system: System, fitted: Fitted, data: dict) -> dict[int, float]:
    s, a, s2 = data["states"], data["actions"], data["next_states"]
    with np.errstate(all="ignore"):
        pred = fitted.predict(s, a)
    out = {}
    for i in system.dynamic:
        if not np.all(np.isfinite(pred[:, i])):
            out[i] = float("nan")
            continue
        out[i] = increment_r2(s[:, i], s2[:, i], pred[:, i], i in system.angle_coords)
    return out


def rollout_starts(episode: np.ndarray, horizon: int, n: int, seed: int) -> np.ndarray:
    """Rows from which ``horizon`` consecutive transitions stay in one episode."""
    ok = []
    for ep in np.unique(episode):
        rows = np.flatnonzero(episode == ep)
        ok.extend(rows[: max(len(rows) - horizon + 1, 0)])
    ok = np.asarray(ok, dtype=int)
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(ok)[:n])


def rollout_errors(system: System, fitted: Fitted, data: dict, seed: int) -> dict[int, dict]:
    """Median |error| per coordinate after each horizon, open loop from real states."""
    horizon = max(HORIZONS)
    starts = rollout_starts(data["episode"], horizon, 100, seed)
    out: dict[int, dict] = {i: {} for i in system.dynamic}
    if len(starts) == 0:
        return out
    s = data["states"][starts].copy()
    with np.errstate(all="ignore"):
        for k in range(1, horizon + 1):
            s = fitted.predict(s, data["actions"][starts + k - 1])
            if k in HORIZONS:
                true = data["next_states"][starts + k - 1]
                for i in system.dynamic:
                    err = s[:, i] - true[:, i]
                    if i in system.angle_coords:
                        err = wrap_angle(err)
                    err = np.where(np.isfinite(err), np.abs(err), np.inf)
                    out[i][k] = float(np.median(err))
    return out


# --- output ------------------------------------------------------------------------------------


def fmt_r2(x) -> str:
    if x is None:
        return "-"
    if not np.isfinite(x):
        return "nan"
    if x >= 0.9999995 and x < 1:
        return f"1-{1 - x:.0e}"
    if x == 1.0:
        return "1"
    if x < -999:
        return "< -999"
    return f"{x:.6f}"


def fmt_err(x) -> str:
    if x is None:
        return "-"
    if not np.isfinite(x):
        return "diverged"
    return f"{x:.2e}"


def system_table(system: System, rows: dict) -> list[str]:
    lines = [
        f"### {system.name}",
        "",
        f"{len(system.train['states'])} training transitions, {len(system.test['states'])} "
        f"held-out; extrapolation: {len(system.extrap_train['states'])} training transitions "
        f"inside {json.dumps(system.extrap_box)}, {len(system.extrap_test['states'])} outside.",
        "",
        "| method | coordinate | held-out R² | extrap. R² | err 1 step | err 10 | err 50 "
        "| size | fit s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, res in rows.items():
        for n, i in enumerate(system.dynamic):
            roll = res["rollout"].get(i, {})
            size = res["sizes"].get(i)
            cells = [
                method if n == 0 else "",
                system.state_names[i],
                fmt_r2(res["heldout"].get(i)),
                fmt_r2(res["extrap"].get(i)),
                *(fmt_err(roll.get(h)) for h in HORIZONS),
                "-" if size is None else str(size),
                "",
            ]
            if n == 0:
                note = f" ({res['notes']})" if res["notes"] else ""
                cells[-1] = f"{res['seconds']:.2f}{note}"
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def summary_table(results: dict) -> list[str]:
    lines = [
        "| system | method | min held-out R² | min extrap. R² "
        "| median 50-step error (max over coords) | size | fit s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for sys_name, rows in results.items():
        for method, res in rows.items():
            held = [v for v in res["heldout"].values()]
            ext = [v for v in res["extrap"].values()]
            err50 = [r.get(50) for r in res["rollout"].values() if r.get(50) is not None]
            sizes = [v for v in res["sizes"].values() if v is not None]
            size = f"{sum(sizes)} nodes" if sizes else f"{res['weights']:,} weights"
            lines.append(
                f"| {sys_name} | {method} | {fmt_r2(_nanmin(held))} | {fmt_r2(_nanmin(ext))} | "
                f"{fmt_err(max(err50) if err50 else None)} | {size} | {res['seconds']:.2f} |"
            )
    return lines + [""]


def _nanmin(values):
    if not values:
        return None
    if any(not np.isfinite(v) for v in values):
        return float("nan")
    return min(values)


def target_checks(results: dict) -> list[str]:
    out = []

    def get(sys_name, method):
        return results.get(sys_name, {}).get(method)

    pend = get("pendulum", "sparse")
    if pend:
        held = min(pend["heldout"].values())
        out.append(
            _check(
                "Pendulum sparse, held-out R² >= 0.9999 on both coordinates",
                held >= 0.9999,
                fmt_r2(held),
            )
        )
        err = pend["rollout"][0].get(50)
        out.append(
            _check(
                "Pendulum sparse, median 50-step open-loop angle error < 0.05 rad",
                err is not None and err < 0.05,
                fmt_err(err),
            )
        )
        out.append(
            _check("Pendulum sparse fit <= 5 s", pend["seconds"] <= 5.0, f"{pend['seconds']:.2f} s")
        )
        ext = min(pend["extrap"].values())
        out.append(_check("Pendulum sparse, extrapolation R² >= 0.999", ext >= 0.999, fmt_r2(ext)))
    ens = get("pendulum", "ensemble")
    if ens:
        ext = _nanmin(list(ens["extrap"].values()))
        out.append(
            _check(
                "Pendulum MLP ensemble, extrapolation R² below 0.9 (the claim)",
                not (ext >= 0.9),
                fmt_r2(ext),
            )
        )
    for name in ("reacher", "car2d"):
        res = get(name, "sparse")
        if res:
            held = min(res["heldout"].values())
            out.append(
                _check(
                    f"{name} sparse, held-out R² >= 0.999 on every coordinate",
                    held >= 0.999,
                    fmt_r2(held),
                )
            )
    return out


def _check(what: str, ok: bool, value: str) -> str:
    return f"- {'PASS' if ok else 'MISS'}: {what} (measured {value})"


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else list(argv)
    if "--suite" in raw:  # the world-model suite: bench/world_model_suite.py takes the rest
        import world_model_suite

        return world_model_suite.main([a for a in raw if a != "--suite"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="store_true", help="run bench/world_model_suite.py")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small data and budgets (a smoke run)")
    parser.add_argument("--systems", default=",".join(SYSTEM_ORDER))
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(systems) - set(SYSTEM_ORDER) | set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown systems or methods: {', '.join(sorted(unknown))}")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    big = 1000 if args.quick else 5000
    cfg = {
        "seed": args.seed,
        "quick": args.quick,
        "systems": systems,
        "methods": methods,
        "sizes": {
            "train": {
                "pendulum": 500,
                "reacher": big,
                "car2d": big,
                "cartpole": 500 if args.quick else 2000,
                "duffing": 500 if args.quick else 2000,
                "unicycle": 500 if args.quick else 2000,
            },
            "test": 1000 if args.quick else 2000,
            "pool": 6000 if args.quick else 20000,
        },
        "extrapolation": {k: [list(x) for x in v] for k, v in EXTRAPOLATION.items()},
        "extrapolation_inner_share": INNER_SHARE,
        "gp_time": 2.0 if args.quick else 4.0,
        "ensemble": (
            {"ensemble_size": 3, "num_elites": 2, "hidden_sizes": (64, 64), "max_epochs": 30}
            if args.quick
            else {
                "ensemble_size": 7,
                "num_elites": 5,
                "hidden_sizes": (200, 200, 200),
                "max_epochs": 200,
            }
        ),
        "horizons": list(HORIZONS),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "command": "python bench/dynamics.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    results: dict = {}
    md = [
        "# World-model benchmark",
        "",
        f"`{cfg['command'].strip()}`: seed {args.seed}{', quick' if args.quick else ''}; "
        f"{os.cpu_count()} CPUs shared with other work, so fit times are indicative. "
        "R² is on the increment (wrapped for angles); rollout errors are median absolute errors "
        "(radians for angles) of open-loop predictions from real states with the recorded "
        "actions. See the docstring of bench/dynamics.py for the methods.",
        "",
    ]
    tables: list[str] = []
    for name in systems:
        t_sys = time.perf_counter()
        system = make_system(name, cfg["sizes"], args.seed)
        results[name] = {}
        for method in methods:
            if method == "sparse-noinv" and not system.invariant_coords:
                continue  # the same as sparse there
            t0 = time.perf_counter()
            fitted = fit_method(method, system, system.train, args, cfg)
            heldout = r2_per_coordinate(system, fitted, system.test)
            rollout = rollout_errors(system, fitted, system.test, args.seed)
            extrap_model = fit_method(method, system, system.extrap_train, args, cfg)
            extrap = r2_per_coordinate(system, extrap_model, system.extrap_test)
            results[name][method] = {
                "heldout": heldout,
                "extrap": extrap,
                "rollout": rollout,
                "sizes": fitted.sizes,
                "weights": fitted.weights,
                "seconds": fitted.seconds,
                "notes": fitted.notes,
            }
            print(
                f"{name:<9} {method:<9} held-out R² min {fmt_r2(_nanmin(list(heldout.values())))}, "
                f"extrap. min {fmt_r2(_nanmin(list(extrap.values())))}, fit {fitted.seconds:.2f} s "
                f"({time.perf_counter() - t0:.0f} s with evaluation)",
                flush=True,
            )
        tables += system_table(system, results[name])
        print(f"{name}: {time.perf_counter() - t_sys:.0f} s", flush=True)

    md += ["## Targets", ""] + target_checks(results) + [""]
    md += ["## Summary", ""] + summary_table(results)
    md += ["## Per coordinate", ""] + tables
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "dynamics_quick" if args.quick else "dynamics"
    if not args.quick and systems != list(SYSTEM_ORDER):  # a subset keeps the full tables
        stem = "dynamics_" + "_".join(systems)
    if not args.quick and methods != list(METHODS):
        stem += "_" + "_".join(methods)
    (RESULTS / f"{stem}.md").write_text("\n".join(md) + "\n")
    payload = {"config": cfg, "results": _jsonable(results)}
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=1) + "\n")
    print("\n".join(md))
    print(f"\nwrote {RESULTS / (stem + '.md')} and {RESULTS / (stem + '.json')}")
    return 0


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


if __name__ == "__main__":
    sys.exit(main())
