"""The benchmark protocol: one set of rules for every benchmark and for ``sym-mbrl train``.

* **Seeds.** Presets are tuned on :data:`TUNING_SEEDS` (0-4) only; results are reported on
  :func:`report_seeds` (100 and up). The two sets are disjoint, so no reported run used a seed
  that a preset was tuned on.
* **Evaluation episodes.** Every evaluation of a run plays fresh episodes: evaluation ``k`` of
  the run with seed ``s`` resets its episodes with :func:`eval_episode_seeds`, a block of
  seeds of its own, disjoint from every other evaluation and from the training seeds (a
  training environment resets with the run's seed, far below :data:`EVAL_SEED_BASE`). Two
  learners with the same run seed meet the same episodes at the same evaluation (a paired
  comparison). Every evaluation plays :data:`EVAL_EPISODES` episodes.
* **Evaluation grid.** :func:`eval_grid` gives the real-step counts at which a run is
  evaluated; every learner is evaluated on the same grid (dense early, where the model-based
  learners solve, and sparser later), so no learner is resolved more finely than another.
* **Sustained threshold.** :func:`sustained_step` is the first evaluation from which *every*
  later evaluation of the run stays at or above the threshold. A run that dips below the
  threshold later has not solved the task at its first crossing.
* **Statistics.** Over report seeds: the median with a percentile-bootstrap 95 % interval
  (:func:`median_interval`; runs that never solve count as "> budget") and the IQM, the
  interquartile mean, with its bootstrap interval (:func:`iqm_interval`), the statistics of
  Agarwal et al. (2021), the ``rliable`` library (the tests check that they agree with it).
* **Provenance.** :func:`provenance` records the git commit and a hash of the code that
  decides a run's result (:func:`code_hash`); a cached run is reused only when its hash
  equals the current one (:func:`same_code`), so a run made by other code is re-run.
"""

from __future__ import annotations

import hashlib
import math
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .errors import UserError

TUNING_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
"""The only seeds a preset may be tuned on."""
REPORT_SEED_START = 100
"""Reported results use seeds from here on."""
EVAL_SEED_BASE = 1_000_000
"""Evaluation episodes reset with seeds from here on (training resets use the run seed)."""
EVAL_SEED_SPAN = 100_000
"""Seeds reserved per run seed: enough for 5,000 evaluations of 20 episodes."""

EVAL_EPISODES = 20
"""Episodes per evaluation, for every task and learner. Pendulum episodes start anywhere on
the circle, so even a good policy's returns spread widely: a SAC policy with a mean of -141
over 200 episodes scored between -370 and 0 (std 85). With 5 episodes per evaluation, its
mean falls below -200 at 6 % of evaluations, and a run of 40 evaluations holds the threshold
throughout with probability 0.09: the sustained rule would measure luck. With 20 episodes:
0.1 % and 0.95. A success-rate threshold of 90 % is then 18 of 20, not "all 5"."""

DENSE_EVERY, DENSE_UNTIL = 50, 1000
"""Up to DENSE_UNTIL real steps, an evaluation every DENSE_EVERY steps..."""
MID_EVERY, MID_UNTIL = 250, 5000
"""... then every MID_EVERY steps up to MID_UNTIL ..."""
LATE_EVERY = 1000
"""... and every LATE_EVERY steps after that (and always at the end of the budget)."""

BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95

# The code whose change can change a run's result: the learners, models, tasks, data, and
# the training/evaluation driver. Paths relative to the package directory.
_RESULT_CODE = ("agents", "dynamics", "envs", "data", "commands/train.py", "protocol.py")


def report_seeds(n: int, start: int = REPORT_SEED_START) -> list[int]:
    """``n`` report seeds: ``start, start + 1, ...`` (``start`` must not be below 100)."""
    if n <= 0:
        raise UserError(f"the number of report seeds must be positive, got {n}")
    if start < REPORT_SEED_START:
        raise UserError(f"report seeds start at {REPORT_SEED_START} or later (0-4 are for "
                        f"tuning presets), got {start}")
    return list(range(start, start + n))


def is_report_seed(seed: int) -> bool:
    """Whether ``seed`` may appear in a reported result."""
    return seed >= REPORT_SEED_START


def eval_episode_seeds(run_seed: int, evaluation: int, episodes: int) -> list[int]:
    """Reset seeds of the ``episodes`` episodes of evaluation number ``evaluation`` (0, 1, ...)
    of the run with seed ``run_seed``: disjoint across evaluations, runs and training."""
    if run_seed < 0 or evaluation < 0 or episodes <= 0:
        raise UserError("run seed and evaluation index must be >= 0 and episodes > 0")
    if (evaluation + 1) * episodes > EVAL_SEED_SPAN:
        raise UserError(f"{evaluation + 1} evaluations of {episodes} episodes exceed the "
                        f"{EVAL_SEED_SPAN} evaluation seeds a run has")
    first = EVAL_SEED_BASE + run_seed * EVAL_SEED_SPAN + evaluation * episodes
    return list(range(first, first + episodes))


def eval_grid(budget: int) -> list[int]:
    """The real-step counts at which a run of ``budget`` steps is evaluated, for every learner:
    every 50 steps to 1,000, every 250 to 5,000, every 1,000 after, and at ``budget``."""
    if budget <= 0:
        raise UserError(f"the step budget must be positive, got {budget}")
    steps = set(range(DENSE_EVERY, min(budget, DENSE_UNTIL) + 1, DENSE_EVERY))
    steps |= set(range(MID_EVERY, min(budget, MID_UNTIL) + 1, MID_EVERY))
    steps |= set(range(LATE_EVERY, budget + 1, LATE_EVERY))
    steps.add(budget)
    return sorted(steps)


def sustained_step(
    steps: Sequence[float], values: Sequence[float | None], threshold: float
) -> int | None:
    """The first evaluation step from which every later value is >= ``threshold``; None when
    the last evaluation is below it (or missing). ``steps`` must be increasing."""
    found = None
    for step, value in zip(steps, values, strict=True):
        ok = value is not None and not math.isnan(float(value)) and float(value) >= threshold
        if ok and found is None:
            found = int(step)
        elif not ok:
            found = None
    return found


def sustained_from_rows(rows: Sequence[dict[str, Any]], column: str, threshold: float
                        ) -> int | None:
    """:func:`sustained_step` over evaluation rows (``env_steps`` and ``column``)."""
    return sustained_step([r["env_steps"] for r in rows], [r.get(column) for r in rows],
                          threshold)


def first_crossing(steps: Sequence[float], values: Sequence[float | None], threshold: float
                   ) -> int | None:
    """The first evaluation step at or above ``threshold`` (the old, lenient rule; reported
    beside the sustained one only to show the difference)."""
    for step, value in zip(steps, values, strict=True):
        if value is not None and not math.isnan(float(value)) and float(value) >= threshold:
            return int(step)
    return None


# ------------------------------------------------------------------------------ statistics
class Interval(NamedTuple):
    """A point estimate with its bootstrap confidence interval (``inf``: beyond the budget)."""

    value: float
    low: float
    high: float


def iqm(values: Iterable[float]) -> float:
    """Interquartile mean: the mean of the middle 50 % (``scipy.stats.trim_mean(x, 0.25)``)."""
    from scipy.stats import trim_mean

    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise UserError("the IQM of no values is undefined")
    return float(trim_mean(x, 0.25))


def _bootstrap(x: np.ndarray, stat, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(BOOTSTRAP_RESAMPLES, len(x)))
    return np.array([stat(x[i]) for i in idx])


def _interval(x: np.ndarray, stat, seed: int) -> Interval:
    boot = _bootstrap(x, stat, seed)
    alpha = (1.0 - CONFIDENCE) / 2
    # order statistics, not interpolation: an interval end may be +inf (runs beyond budget)
    low, high = np.quantile(boot, [alpha, 1.0 - alpha], method="inverted_cdf")
    return Interval(float(stat(x)), float(low), float(high))


def median_interval(values: Iterable[float | None], seed: int = 0) -> Interval:
    """Median over runs with a percentile-bootstrap 95 % interval. A None (a run that never
    solved within its budget) counts as +inf: it is larger than every solved run."""
    x = np.array([math.inf if v is None else float(v) for v in values], dtype=float)
    if x.size == 0:
        raise UserError("the median of no runs is undefined")
    # the lower median for an even count: with censored runs the mean of the middle two can be
    # inf/nan, and the lower one is the conservative reading for "steps to solve" anyway
    return _interval(x, lambda v: float(np.quantile(v, 0.5, method="inverted_cdf")), seed)


def iqm_interval(values: Iterable[float], seed: int = 0) -> Interval:
    """IQM over runs with a percentile-bootstrap 95 % interval (finite values only)."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise UserError("the IQM needs at least one value, all finite")
    return _interval(x, iqm, seed)


def format_steps(interval: Interval, budget: int | None = None) -> str:
    """``"300 [250–450]"``; an infinite end reads ``">BUDGET"`` (or ``">budget"``)."""
    def one(v: float) -> str:
        if math.isinf(v):
            return f">{budget}" if budget else ">budget"
        return f"{v:.0f}"

    return f"{one(interval.value)} [{one(interval.low)}–{one(interval.high)}]"


# ------------------------------------------------------------------------------ provenance
def package_dir() -> Path:
    """The directory of the installed (or checked-out) ``sym_mbrl_ros`` package."""
    return Path(__file__).resolve().parent


def code_hash() -> str:
    """SHA-256 over the source of the code that decides a run's result (learners, models,
    tasks, data, the training driver and this protocol), file names included."""
    root = package_dir()
    digest = hashlib.sha256()
    files: list[Path] = []
    for rel in _RESULT_CODE:
        path = root / rel
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    for f in files:
        digest.update(f.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(f.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def git_commit() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout the package runs from; ``(None, None)`` outside
    a git checkout (an installed package)."""
    cwd = package_dir()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=cwd,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit.stdout.strip(), bool(status.stdout.strip())


def provenance() -> dict[str, Any]:
    """What a run folder records about the code that made it."""
    commit, dirty = git_commit()
    return {"git_commit": commit, "git_dirty": dirty, "code_hash": code_hash()}


def same_code(recorded: dict[str, Any] | None) -> bool:
    """Whether a run with provenance ``recorded`` was made by the code running now."""
    return bool(recorded) and recorded.get("code_hash") == code_hash()
