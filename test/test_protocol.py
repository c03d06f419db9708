"""The benchmark protocol: seeds, evaluation grid, the sustained rule, statistics, provenance."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from sym_mbrl_ros import protocol
from sym_mbrl_ros.errors import UserError
from sym_mbrl_ros.protocol import (
    EVAL_SEED_BASE,
    TUNING_SEEDS,
    eval_episode_seeds,
    eval_grid,
    format_steps,
    iqm,
    iqm_interval,
    median_interval,
    report_seeds,
    sustained_step,
)


def test_report_seeds_never_include_a_tuning_seed():
    seeds = report_seeds(10)
    assert seeds == list(range(100, 110))
    assert not set(seeds) & set(TUNING_SEEDS)
    with pytest.raises(UserError, match="tuning"):
        report_seeds(3, start=2)


def test_every_evaluation_plays_fresh_episodes_disjoint_from_training_seeds():
    blocks = [eval_episode_seeds(run, k, 20) for run in (0, 4, 100, 109) for k in range(300)]
    flat = [s for b in blocks for s in b]
    assert len(flat) == len(set(flat))  # no episode seed is used twice, across runs either
    assert min(flat) >= EVAL_SEED_BASE  # training environments reset with the run seed (< 1e6)
    # a paired comparison: two learners with the same run seed meet the same episodes
    assert eval_episode_seeds(101, 7, 5) == eval_episode_seeds(101, 7, 5)


def test_eval_grid_is_dense_early_and_ends_at_the_budget():
    grid = eval_grid(6500)
    assert grid[:3] == [50, 100, 150] and 1000 in grid and 1050 not in grid
    assert 1250 in grid and 5000 in grid and 5250 not in grid and 6000 in grid
    assert grid[-1] == 6500 and grid == sorted(set(grid))
    assert eval_grid(120) == [50, 100, 120]


def test_sustained_threshold_ignores_a_crossing_the_run_does_not_hold():
    # the example: crosses at 1,100, dips to -4,939 at 1,000... and -425 at 1,500
    steps = [900, 1000, 1100, 1200, 1300, 1400, 1500, 1600, 1700]
    values = [-900, -4939, -180, -150, -160, -140, -425, -150, -130]
    assert sustained_step(steps, values, -200) == 1600
    assert protocol.first_crossing(steps, values, -200) == 1100
    assert sustained_step(steps, values[:-1] + [-250], -200) is None  # ends unsolved
    assert sustained_step([1, 2], [float("nan"), -100], -200) == 2  # a NaN evaluation fails


def test_median_interval_counts_unsolved_runs_as_beyond_the_budget():
    solved = median_interval([300, 250, 400, 350, 500])
    assert solved.value == 350 and solved.low <= 350 <= solved.high
    censored = median_interval([300, None, None, None, 200])
    assert math.isinf(censored.value)
    assert format_steps(censored, 3000).startswith(">3000 [")
    assert format_steps(protocol.Interval(300.0, 250.0, math.inf), 3000) == "300 [250–>3000]"


def test_iqm_and_its_interval_agree_with_rliable():
    rliable = pytest.importorskip("rliable.metrics")
    x = np.random.default_rng(0).normal(-200, 80, size=13)
    # the same estimator, computed two ways: only floating-point rounding may differ
    assert iqm(x) == pytest.approx(float(rliable.aggregate_iqm(x[:, None])), rel=1e-12)
    interval = iqm_interval(x)
    assert interval.low < interval.value < interval.high
    # 13 draws of sd 80: a 95 % interval of the IQM is some tens wide, not 0 and not 1,000
    assert 10 < interval.high - interval.low < 200


def test_code_hash_follows_the_learner_code(tmp_path, monkeypatch):
    copy = tmp_path / "sym_mbrl_ros"
    shutil.copytree(protocol.package_dir(), copy,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    monkeypatch.setattr(protocol, "package_dir", lambda: copy)
    before = protocol.code_hash()
    assert before == protocol.code_hash()
    (copy / "nodes" / "controller.py").write_text("# not learner code\n")
    assert protocol.code_hash() == before  # node code does not decide a benchmark's result
    sac = copy / "agents" / "sac.py"
    sac.write_text(sac.read_text() + "\n# changed\n")
    assert protocol.code_hash() != before
    assert not protocol.same_code({"code_hash": before})
    assert not protocol.same_code(None)
