"""The ``gp`` search backend: genetic programming with pyoperon.

pyoperon's NSGA-II run (objectives: R² and length) gives a Pareto front of expressions of
increasing size. Each front member is printed with pyoperon's ``get_model_string`` using our
coordinate names, converted to our grammar (pyoperon writes powers as ``^``) and read with our
whitelisted parser; a string the parser rejects is skipped and counted. The caller then refines
and ranks the candidates like any other backend's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .expression import ExpressionError, Node, parse_expression

if TYPE_CHECKING:
    from .selection import FitData
    from .symbolic import SymbolicDynamics, SymbolicDynamicsConfig


@dataclass
class GPSettings:
    """pyoperon's knobs (filled from the fit config)."""

    time_limit: float = 2.0
    population_size: int = 500
    max_length: int = 30
    symbols: str = "add,sub,mul,div,constant,variable,sin,cos"
    max_candidates: int = 12
    local_iterations: int = 5


def operon_to_grammar(text: str) -> str:
    """pyoperon's infix text in our grammar (``^`` becomes ``**``)."""
    return text.replace("^", "**")


def gp_candidates(
    X: np.ndarray, y: np.ndarray, variables: Sequence[str], settings: GPSettings, seed: int
) -> tuple[list[tuple[Node, str]], dict]:
    """Candidate increment expressions from one pyoperon run, plus facts for the report."""
    from pyoperon.sklearn import SymbolicRegressor

    regressor = SymbolicRegressor(
        allowed_symbols=settings.symbols,
        objectives=["r2", "length"],
        population_size=settings.population_size,
        max_length=settings.max_length,
        optimizer_iterations=settings.local_iterations,
        generations=100_000,
        max_evaluations=10**9,
        max_time=max(1, int(math.ceil(settings.time_limit))),
        n_threads=1,
        random_state=int(seed) % (2**32),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        regressor.fit(np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64))
    front = sorted(regressor.pareto_front_, key=lambda m: m["length"])
    if len(front) > settings.max_candidates:
        # keep the shortest and longest and spread the rest evenly along the front
        pick = np.unique(
            np.linspace(0, len(front) - 1, settings.max_candidates).round().astype(int)
        )
        front = [front[k] for k in pick]
    out: list[tuple[Node, str]] = []
    rejected = 0
    names = list(variables)
    for k, model in enumerate(front):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            text = regressor.get_model_string(model["tree"], 17, names=names)
        try:
            tree = parse_expression(operon_to_grammar(text), names)
        except ExpressionError:
            rejected += 1
            continue
        out.append(
            (
                tree,
                f"gp: pyoperon Pareto front member {k + 1}/{len(front)} (length {model['length']})",
            )
        )
    info = {
        "front_size": len(regressor.pareto_front_),
        "unparsable": rejected,
        "generations": regressor.stats_.get("generations"),
    }
    return out, info


# --- the backend (:mod:`.backends`) -------------------------------------------------------------


def subsample_rows(n: int, max_rows: int, seed: int) -> np.ndarray:
    """All row indices of ``n``, or a seeded sorted subset of ``max_rows`` of them (pyoperon's
    time per generation grows with the rows)."""
    rows = np.arange(n)
    if n > max_rows:
        rows = np.sort(np.random.default_rng(seed).permutation(rows)[:max_rows])
    return rows


def settings_from(cfg: SymbolicDynamicsConfig) -> GPSettings:
    """The gp backend's settings from the fit config (``gp_time`` shared by ``gp_runs``)."""
    runs = max(1, cfg.gp_runs)
    return GPSettings(
        time_limit=cfg.gp_time / runs,
        population_size=cfg.gp_population,
        max_length=cfg.gp_max_length,
        symbols=cfg.gp_symbols,
        max_candidates=cfg.gp_candidates,
        local_iterations=cfg.gp_local_iterations,
    )


def generate(model: SymbolicDynamics, i: int, data: FitData, attempt: int
             ) -> tuple[list[tuple[Node, str]], dict[str, Any]]:
    """Candidates for coordinate ``i`` from ``gp_runs`` independent pyoperon runs (own seed
    and row subset each, so that one that gets stuck is outvoted), pooled."""
    cfg = model.config
    poly, angles = model._inputs()
    cols = [model.variables.index(v) for v in poly + angles]
    names = [model.variables[c] for c in cols]
    settings = settings_from(cfg)
    raw: list[tuple[Node, str]] = []
    infos = []
    for run in range(max(1, cfg.gp_runs)):
        seed = model.seed * 7919 + 101 * i + 13 * attempt + run
        rows = subsample_rows(len(data.y_train), cfg.gp_max_rows, seed)
        found, info = gp_candidates(
            data.X_train[rows][:, cols], data.y_train[rows], names, settings, seed
        )
        raw += [(tree, f"{source}, run {run + 1}") for tree, source in found]
        infos.append(dict(info, rows=int(len(rows))))
    return raw, {"runs": infos}
