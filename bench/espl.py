"""ESPL symbolic policies against MLP policies, both trained with sym-mbpo (symbolic world
model + MBPO), on the same seeds and evaluation episodes.

For each task, sym-mbpo trains an MLP policy and an ESPL policy (``--policy espl``) with the
settings of ``sym-mbrl train`` (``agents/presets.py``). Every ``--eval-every`` real steps:

* the MLP policy is evaluated (deterministic, 5 episodes, seeds 10000 + 100 * seed + i);
* the ESPL policy is pruned and evaluated as a network, then exported to one formula per
  action coordinate and evaluated **as the formula** in numpy (``FormulaPolicy``), on the same
  episodes (``espl.export_and_evaluate``).

The tables give the final returns (and success rates), the size of the final formula
(operators and constants, over all action coordinates), the formula itself, and the real steps
after which each policy first solves the task (Pendulum: mean return >= -200; Reacher:
success rate >= 0.9). Anchor: the ESPL paper reports -151.7 on Pendulum (its Table 1).

    python bench/espl.py [--tasks pendulum,reacher] [--seed 0]
                         [--steps pendulum=1500,reacher=3000] [--eval-every 250]

Writes bench/results/espl_<tasks>.md (tables), bench/results/espl_<tasks>.json (configuration
and curves) and, per training, bench/results/runs/espl/<task>-<policy>-s<seed>/ (curve.csv,
policy.json, result.json); a finished run with the same settings is reused unless --fresh.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from sym_mbrl_ros.agents import espl
from sym_mbrl_ros.agents.evaluation import Evaluator
from sym_mbrl_ros.agents.presets import THRESHOLDS, make_config, make_learner
from sym_mbrl_ros.envs import get_task

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_STEPS = {"pendulum": 1500, "reacher": 3000, "car2d": 3000}
PAPER = {"pendulum": "-151.7 (ESPL paper, Table 1)"}


def parse_steps(text: str) -> dict[str, int]:
    steps = dict(DEFAULT_STEPS)
    for item in text.split(","):
        if item.strip():
            name, _, value = item.partition("=")
            steps[name.strip()] = int(value)
    return steps


def train_one(
    task, policy: str, steps: int, seed: int, eval_every: int, episodes: int, fresh: bool = False
) -> dict:
    """Train sym-mbpo with ``policy`` for ``steps`` real steps; evaluate along the way.

    A finished run with the same settings (``result.json`` in its run folder) is reused unless
    ``fresh``.
    """
    config = make_config("sym-mbpo", task.name, policy)
    run_dir = RESULTS / "runs" / "espl" / f"{task.name}-{policy}-s{seed}"
    settings = json.loads(json.dumps({
        "task": task.name, "policy": policy, "steps": steps, "seed": seed,
        "eval_every": eval_every, "episodes": episodes, "config": asdict(config),
        "espl": asdict(espl.ESPLConfig()) if policy == "espl" else None,
    }, default=str))
    cached = run_dir / "result.json"
    if cached.exists() and not fresh:
        doc = json.loads(cached.read_text())
        if doc.get("settings") == settings:
            print(f"  reusing the finished run in {run_dir}", flush=True)
            return doc["result"]
    env = task.make_env()
    obs_dim = int(env.observation_space.shape[0])
    learner = make_learner("sym-mbpo", task, config, seed, obs_dim)
    eval_seed = 10_000 + 100 * seed
    run_dir.mkdir(parents=True, exist_ok=True)
    evaluator = Evaluator(task, episodes, seed=eval_seed)
    rows: list[dict] = []
    clock = {"start": time.perf_counter(), "eval_s": 0.0}
    last: dict = {}

    def callback(step: int, mbpo) -> None:
        if step % eval_every and step != steps:
            return
        t0 = time.perf_counter()
        row: dict = {"env_steps": step}
        if policy == "espl":
            res = espl.export_and_evaluate(mbpo.agent, task, episodes, eval_seed, out=run_dir)
            for kind in ("network", "formula"):
                row[f"{kind}_return"] = round(res[kind]["mean"], 2)
                row[f"{kind}_std"] = round(res[kind]["std"], 2)
                row[f"{kind}_success"] = res[kind]["success_rate"]
            row["operators"], row["constants"] = res["operators"], res["constants"]
            last["formula"] = res["policy"].pretty()
        else:
            res = evaluator(mbpo)
            row["network_return"] = round(res.mean, 2)
            row["network_std"] = round(res.std, 2)
            row["network_success"] = res.success_rate
        clock["eval_s"] += time.perf_counter() - t0
        row["wall_s"] = round(time.perf_counter() - clock["start"] - clock["eval_s"], 1)
        rows.append(row)
        print(f"  {task.name} {policy} step {step}: "
              + ", ".join(f"{k}={v}" for k, v in row.items() if k != "env_steps"), flush=True)

    try:
        learner.learn(steps, env, callback=callback)
    finally:
        env.close()
        evaluator.close()
    with open(run_dir / "curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[-1]))
        writer.writeheader()
        writer.writerows(rows)
    column, value = THRESHOLDS[task.name]
    key = "return" if column == "eval_return_mean" else "success"

    def solved(kind: str):
        for r in rows:
            v = r.get(f"{kind}_{key}")
            if v is not None and v >= value:
                return r["env_steps"]
        return None

    result = {
        "task": task.name, "policy": policy, "steps": steps, "rows": rows,
        "steps_to_solve_network": solved("network"),
        "steps_to_solve_formula": solved("formula") if policy == "espl" else None,
        "formula": last.get("formula"), "config": asdict(config),
        "train_s": rows[-1]["wall_s"], "eval_s": round(clock["eval_s"], 1),
    }
    cached.write_text(json.dumps({"settings": settings, "result": result}, indent=1,
                                 default=str) + "\n")
    return result


def tables(results: list[dict], episodes: int) -> str:
    lines = [
        f"## Final evaluation ({episodes} episodes) and real steps to solve\n",
        "| task | policy | return (network) | return (formula, numpy) | success network / "
        "formula | formula size (ops, consts) | steps to solve: network / formula | "
        "paper anchor |",
        "|---|---|---:|---:|---|---:|---|---|",
    ]
    for r in results:
        f = r["rows"][-1]
        formula = (f"{f['formula_return']} ± {f['formula_std']}" if "formula_return" in f
                   else "—")
        success = " / ".join(
            "—" if f.get(k) is None else f"{100 * f[k]:.0f}%"
            for k in ("network_success", "formula_success")
        )
        size = f"{f['operators']}, {f['constants']}" if "operators" in f else "—"
        solve = (f"{r['steps_to_solve_network'] or 'not solved'} / "
                 f"{r['steps_to_solve_formula'] or 'not solved'}" if r["policy"] == "espl"
                 else f"{r['steps_to_solve_network'] or 'not solved'} / —")
        anchor = PAPER.get(r["task"], "—") if r["policy"] == "espl" else "—"
        lines.append(
            f"| {r['task']} | {r['policy']} | {f['network_return']} ± {f['network_std']} | "
            f"{formula} | {success} | {size} | {solve} | {anchor} |"
        )
    lines += ["", "## Exported formulas\n"]
    for r in results:
        if r["formula"]:
            lines += [f"**{r['task']}** (steps {r['steps']}):", "", "```", r["formula"], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="pendulum,reacher", help="comma-separated tasks")
    parser.add_argument("--policies", default="espl,mlp", help="comma-separated policies")
    parser.add_argument("--seed", type=int, default=0, help="seed of every training")
    parser.add_argument("--steps", default="", help="real steps per task, e.g. pendulum=1500")
    parser.add_argument("--eval-every", type=int, default=250, help="evaluation period")
    parser.add_argument("--episodes", type=int, default=5, help="evaluation episodes")
    parser.add_argument("--fresh", action="store_true", help="retrain even if a run is cached")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps = parse_steps(args.steps)
    results = []
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        task = get_task(name)
        for policy in [p.strip() for p in args.policies.split(",") if p.strip()]:
            print(f"{name}: sym-mbpo with {policy} policy, {steps[name]} real steps", flush=True)
            results.append(train_one(task, policy, steps[name], args.seed, args.eval_every,
                                     args.episodes, args.fresh))
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    text = tables(results, args.episodes)
    header = (
        f"# ESPL symbolic policies vs MLP policies (sym-mbpo)\n\nSeed {args.seed}; settings of "
        f"`sym-mbrl train --algo sym-mbpo` (agents/presets.py) and the ESPL defaults "
        f"({json.dumps(asdict(espl.ESPLConfig()))}); evaluation every {args.eval_every} real "
        f"steps; torch {torch.__version__} on 1 thread, {os.cpu_count()} CPUs shared with other "
        f"work (load average at the end: {', '.join(f'{x:.1f}' for x in load or [])}).\n\n"
    )
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "espl_" + "_".join(dict.fromkeys(r["task"] for r in results))
    (RESULTS / f"{stem}.md").write_text(header + text + "\n")
    config = {"args": vars(args), "steps": steps, "espl": asdict(espl.ESPLConfig()),
              "python": sys.version.split()[0], "torch": torch.__version__,
              "numpy": np.__version__, "machine": platform.machine(),
              "cpu_count": os.cpu_count(), "load_average": load}
    (RESULTS / f"{stem}.json").write_text(
        json.dumps({"config": config, "results": results}, indent=2, default=str) + "\n"
    )
    print(f"\nwrote {RESULTS / (stem + '.md')} and {RESULTS / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
