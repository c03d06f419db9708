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

import numpy as np

from .expression import ExpressionError, Node, parse_expression


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
