"""bench/sample_efficiency.py: one training per run folder at a time."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench_loader import load_bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks are POSIX")
def test_a_second_training_into_a_busy_run_folder_is_refused(tmp_path):
    # two invocations training one seed into one folder interleaved their curves (a killed
    # invocation's pool workers trained on); the second must stop instead
    bench = load_bench("sample_efficiency")
    out = tmp_path / "runs" / "cartpole" / "sym-mbpo-s100"
    with bench.claim_run_folder(out):
        with pytest.raises(bench.RunFolderBusy, match="in use by another process"):
            bench.claim_run_folder(out)
    bench.claim_run_folder(out).close()  # released with the first: free again


def test_pool_workers_ask_to_die_with_the_bench():
    # best effort, never raises (Linux: PR_SET_PDEATHSIG)
    load_bench("sample_efficiency")._die_with_parent()


def test_sac_variants_follow_a_given_sac_budget():
    # `--steps sac=20000` left SB3's anchor at the task's 30,000 (it must get SAC's budget)
    steps = load_bench("sample_efficiency").parse_steps("sac=20000", "cartpole")
    assert steps["sb3-sac"] == 20000 and steps["sac-repeat"] == 20000
    assert steps["sac-utd20"] == 5000  # the high-UTD budget this machine affords
    steps = load_bench("sample_efficiency").parse_steps("sac=20000,sb3-sac=100", "cartpole")
    assert steps["sb3-sac"] == 100


def test_espl_runs_report_their_exported_formula():
    # issue 15: ESPL on report seeds, the formula evaluated on fresh episodes; the bench's
    # table says on how many seeds the formula (not only the network) meets the threshold
    bench = load_bench("sample_efficiency")
    assert "sym-mbpo-espl" in bench.LEARNERS and "sym-mbpo-espl" not in bench.DEFAULT_LEARNERS
    assert bench.parse_steps("sym-mbpo=900", "pendulum")["sym-mbpo-espl"] == 900

    def run(seed, formula_mean):
        ret = {"mean": formula_mean, "std": 1.0, "success_rate": None}
        return {"seed": seed, "summary": {"formula": {
            "network_return": {"mean": -150.0, "std": 2.0}, "formula_return": ret,
            "operators": 12, "constants": 5, "expressions": ["torque = -2*tanh(theta_dot)"]}}}

    numbers: dict = {}
    lines = bench.formula_lines({"sym-mbpo-espl": [run(100, -180.0), run(101, -950.0)],
                                 "sym-mbpo": [run(100, -1.0)]},
                                "eval_return_mean", -200.0, numbers)
    text = "\n".join(lines)
    assert "**1 of 2** seeds" in text and "-950.0" in text
    assert len(numbers["formula"]["sym-mbpo-espl"]) == 2 and "sym-mbpo" not in numbers["formula"]


def _square(x: int) -> int:
    time.sleep(0.05 * (x % 3))  # tasks end at different times, like trainings
    return x * x


def test_the_pool_of_the_bench_shuts_down_when_its_work_is_done(tmp_path):
    # workers asked for SIGTERM when the thread that started them ended (PR_SET_PDEATHSIG is
    # per thread): with one task per worker the pool's handler thread starts them, ends at
    # shutdown, and its idle workers died holding the task queue's lock, so the bench hung
    # after its last training (twice, each with every result still unwritten; here within
    # ten pools of ten tasks, which take 6 s when nothing hangs; a race: without the fix
    # it hung in one of two runs of five pools)
    script = tmp_path / "pool.py"
    script.write_text(
        "import multiprocessing as mp, sys\n"
        f"sys.path[:0] = [{str(ROOT / 'test')!r}, {str(ROOT / 'bench')!r}]\n"
        "import sample_efficiency as bench\n"
        "from test_bench_run_folder import _square\n"
        "if __name__ == '__main__':\n"
        "    for _ in range(10):\n"
        "        with mp.get_context('spawn').Pool(2, initializer=bench._die_with_parent,\n"
        "                                          maxtasksperchild=1) as pool:\n"
        "            assert pool.map(_square, range(10), chunksize=1) == [x * x for x in\n"
        "                                                                  range(10)]\n"
        "    print('done')\n")
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=90, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("the pool hung at shutdown (90 s)")
    assert done.returncode == 0 and "done" in done.stdout, done.stderr[-2000:]
