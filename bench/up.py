"""The main job on report seeds: ``sym-mbrl up TASK`` (the ROS 2 graph, lockstep simulation)
until solved or out of budget, one seed after another.

    python bench/up.py --task pendulum --seeds 10

Each run is a fresh ``sym-mbrl up TASK --seed S`` in its own run folder and ROS domain, run
alone (the graph is five processes; two graphs at once would share the two cores). "Solved"
is ``up``'s own stop rule (the mean return of the last 3 episodes reaches the task's target).
Prints and writes ``bench/results/up_<task>.md`` and ``.json``: per seed, whether it solved,
the real steps, wall and CPU seconds (every process of the graph), the last returns; over the
seeds, the share solved and the median steps with a bootstrap 95 % interval (an unsolved run
counts as more than the budget). Runs are never reused: each invocation re-runs every seed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run_seed(task: str, seed: int, out: Path, steps: int | None, extra: list[str]) -> dict:
    """One ``sym-mbrl up`` run; returns its summary with wall and CPU seconds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        import shutil

        shutil.rmtree(out)  # never resume an old run: each invocation measures afresh
    cmd = [sys.executable, "-m", "sym_mbrl_ros.cli", "up", task, "--seed", str(seed),
           "--out", str(out), "--quiet", "--domain-id", str(150 + seed % 80)]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    cmd += extra
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {"solved": False, "reason": f"no summary (exit {proc.returncode})",
                   "steps": None, "returns": []}
    summary.update(seed=seed, cpu_s=round(cpu, 1), process_wall_s=round(wall, 1),
                   exit_code=proc.returncode, stdout_tail=proc.stdout[-400:],
                   stderr_tail=proc.stderr[-400:])
    print(f"  seed {seed}: {summary.get('reason')} after {summary.get('steps')} steps, "
          f"{wall:.0f} s wall, {cpu:.0f} CPU s", flush=True)
    return summary


def report(task: str, runs: list[dict], budget: int | None, command: str) -> str:
    from sym_mbrl_ros.protocol import format_steps, median_interval

    solved = [r for r in runs if r.get("solved")]
    steps = [r["steps"] if r.get("solved") else None for r in runs]
    lines = [
        f"# `sym-mbrl up {task}` on report seeds",
        "",
        f"Solved on **{len(solved)} of {len(runs)}** seeds (stop rule: mean return of the last "
        f"3 episodes ≥ the task's target); real steps to solve, median [bootstrap 95 % "
        f"interval]: **{format_steps(median_interval(steps), budget)}**.",
        "",
        "| seed | result | real steps | wall s | CPU s (all processes) | last 3 returns |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for r in runs:
        last = ", ".join(f"{x:.1f}" for x in r.get("returns", [])[-3:])
        lines.append(f"| {r['seed']} | {r.get('reason')} | {r.get('steps')} | "
                     f"{r.get('wall_s', r['process_wall_s'])} | {r['cpu_s']} | {last} |")
    lines += ["", f"Command: `{command}`; one run at a time on {os.cpu_count()} CPU cores."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="pendulum")
    p.add_argument("--seeds", type=int, default=10, help="report seeds 100..100+N-1")
    p.add_argument("--steps", type=int, default=None, help="budget (default: the task's)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("up_args", nargs=argparse.REMAINDER,
                   help="after --, more arguments for sym-mbrl up")
    args = p.parse_args(argv)
    from sym_mbrl_ros.bringup import graph
    from sym_mbrl_ros.protocol import provenance, report_seeds

    budget = args.steps or graph(args.task).default_steps
    extra = [a for a in args.up_args if a != "--"]
    out = Path(args.out)
    runs = [run_seed(args.task, s, out / "runs" / f"up-{args.task}" / f"s{s}", args.steps, extra)
            for s in report_seeds(args.seeds)]
    command = f"python bench/up.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    text = report(args.task, runs, budget, command.strip())
    out.mkdir(parents=True, exist_ok=True)
    (out / f"up_{args.task}.md").write_text(text)
    (out / f"up_{args.task}.json").write_text(json.dumps(
        {"task": args.task, "budget": budget, "command": command, "provenance": provenance(),
         "runs": runs}, indent=2, default=str) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
