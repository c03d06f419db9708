"""bench/sample_efficiency.py: one training per run folder at a time."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_sample_efficiency",
                                                  ROOT / "bench" / "sample_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks are POSIX")
def test_a_second_training_into_a_busy_run_folder_is_refused(tmp_path):
    # two invocations training one seed into one folder interleaved their curves (a killed
    # invocation's pool workers trained on); the second must stop instead
    bench = _bench()
    out = tmp_path / "runs" / "cartpole" / "sym-mbpo-s100"
    with bench.claim_run_folder(out):
        with pytest.raises(bench.RunFolderBusy, match="in use by another process"):
            bench.claim_run_folder(out)
    bench.claim_run_folder(out).close()  # released with the first: free again


def test_pool_workers_ask_to_die_with_the_bench():
    _bench()._die_with_parent()  # best effort, never raises (Linux: PR_SET_PDEATHSIG)


def test_sac_variants_follow_a_given_sac_budget():
    # `--steps sac=20000` left SB3's anchor at the task's 30,000 (it must get SAC's budget)
    steps = _bench().parse_steps("sac=20000", "cartpole")
    assert steps["sb3-sac"] == 20000 and steps["sac-repeat"] == 20000
    assert steps["sac-utd20"] == 5000  # the high-UTD budget this machine affords
    assert _bench().parse_steps("sac=20000,sb3-sac=100", "cartpole")["sb3-sac"] == 100
