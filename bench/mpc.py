"""MPC on Pendulum: return with the learned symbolic model and with the exact dynamics, the
planning time per control step, and the real steps sym-mpc needs to solve the task.

1. **Return.** Symbolic models are fitted on N random real transitions (N in ``--fit-steps``);
   CEM plans with each, and with the exact equation (``PendulumDynamics``), for 5 evaluation
   episodes (seeds 10000..10004, the train command's evaluation seeds for seed 0).
2. **Planning time** per control step for one state, horizon 30 and population 500 (the
   20 Hz budget is 20 ms): median over ``--timing-calls`` calls of wall time and of process
   CPU time (the CPU time discounts waiting for a core on a shared machine), for CEM with the
   compiled learned model, with ``SymbolicDynamics.predict_torch`` as is, with the exact model,
   and for the gradient planner.
3. **Real steps to solve** (mean return >= -200 over the 5 evaluation episodes): sym-mpc runs
   online (random actions for ``--init-steps`` steps, then fit / plan / execute / refit every
   100 steps) for ``--steps`` real steps, evaluated every ``--eval-every`` steps.

    python bench/mpc.py [--seed 0] [--fit-steps 25,50,100,200] [--timing-calls 100]
                        [--init-steps 50] [--steps 150] [--eval-every 25]

Writes bench/results/mpc.md (tables) and bench/results/mpc.json (configuration and numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from sym_mbrl_ros.agents.cem import CEMConfig
from sym_mbrl_ros.agents.mpc import MPCConfig, MPCController, evaluate_controller
from sym_mbrl_ros.agents.planning import GradientPlannerConfig, PendulumDynamics
from sym_mbrl_ros.commands.train import train_run
from sym_mbrl_ros.dynamics.symbolic import SymbolicDynamics
from sym_mbrl_ros.envs import get_task

RESULTS = Path(__file__).resolve().parent / "results"
THRESHOLD = -200.0


def random_transitions(task, n: int, seed: int):
    env = task.make_env()
    rng = np.random.default_rng(seed)
    _, info = env.reset(seed=seed)
    s, a, s2 = [], [], []
    for _ in range(n):
        u = rng.uniform(task.action_low, task.action_high)
        _, _, term, trunc, nxt = env.step(u)
        s.append(info["state"])
        a.append(u)
        s2.append(nxt["state"])
        info = nxt
        if term or trunc:
            _, info = env.reset()
    env.close()
    return np.array(s), np.array(a), np.array(s2)


def planning_time(task, model, config: MPCConfig, calls: int, seed: int) -> dict:
    """Median wall and CPU milliseconds of one control step (one state), after a warm-up."""
    controller = MPCController(task, model, config, seed=seed)
    rng = np.random.default_rng(seed)
    states = np.column_stack([rng.uniform(-np.pi, np.pi, calls), rng.uniform(-4, 4, calls)])
    controller.act(states[0])
    wall, cpu = [], []
    for s in states:
        w0, c0 = time.perf_counter(), time.process_time()
        controller.act(s)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {
        "wall_ms": round(1e3 * statistics.median(wall), 2),
        "cpu_ms": round(1e3 * statistics.median(cpu), 2),
        "wall_ms_p90": round(1e3 * float(np.percentile(wall, 90)), 2),
    }


class _Unfused:
    """A symbolic model hidden behind a plain function, so the planner cannot compile it."""

    def __init__(self, model):
        self.model = model

    def __call__(self, s, a):
        return self.model.predict_torch(s, a)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed (data, planner, evaluation)")
    parser.add_argument("--fit-steps", default="25,50,100,200",
                        help="random steps for the fitted models (comma separated; the last "
                        "one's model is also timed)")
    parser.add_argument("--timing-calls", type=int, default=100, help="timed planning calls")
    parser.add_argument("--init-steps", type=int, default=50,
                        help="sym-mpc: random steps before the first fit")
    parser.add_argument("--steps", type=int, default=150, help="real steps of the sym-mpc run")
    parser.add_argument("--eval-every", type=int, default=25, help="sym-mpc evaluation period")
    parser.add_argument("--episodes", type=int, default=5, help="evaluation episodes")
    parser.add_argument("--skip-online", action="store_true", help="skip part 3 (sym-mpc runs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    task = get_task("pendulum")
    config = MPCConfig(cem=CEMConfig(horizon=30, population=500, elites=50, iterations=3))
    eval_seed = 10_000 + 100 * args.seed

    # 1. returns
    fit_sizes = [int(x) for x in args.fit_steps.split(",") if x.strip()]
    s, a, s2 = random_transitions(task, max(fit_sizes), args.seed)
    exact = PendulumDynamics()
    models, fit_s = [], {}
    for n in fit_sizes:
        t0 = time.perf_counter()
        learned = SymbolicDynamics.for_task(task, seed=args.seed).fit(s[:n], a[:n], s2[:n])
        fit_s[n] = round(time.perf_counter() - t0, 2)
        r2 = learned.score(s, a, s2)
        models.append((f"symbolic model from {n} random steps (R² {min(r2.values()):.4f})",
                       learned))
    returns = []
    for name, model in [*models, ("exact dynamics", exact)]:
        controller = MPCController(task, model, config, seed=args.seed)
        r = evaluate_controller(task, controller, args.episodes, seed=eval_seed)
        returns.append({"model": name, "mean": round(r.mean, 1), "std": round(r.std, 1),
                        "returns": [round(x, 1) for x in r.returns]})
        print(f"{name}: {r.mean:.1f} ± {r.std:.1f}")

    # 2. planning time
    gradient = MPCConfig(planner="gradient", gradient=GradientPlannerConfig(
        horizon=30, restarts=8, iterations=10))
    timings = []
    for label, model, cfg in (
        ("CEM, learned model (compiled)", learned, config),
        ("CEM, learned model (predict_torch as is)", _Unfused(learned), config),
        ("CEM, exact dynamics (RK4, 5 substeps)", exact, config),
        ("gradient planner (8 restarts, 10 Adam steps), learned model", learned, gradient),
    ):
        calls = args.timing_calls if "CEM" in label else max(10, args.timing_calls // 5)
        t = planning_time(task, model, cfg, calls, args.seed)
        timings.append({"planner": label, **t})
        print(f"{label}: {t['wall_ms']} ms wall, {t['cpu_ms']} ms CPU")

    # 3. real steps to solve
    online = []
    if not args.skip_online:
        init = args.init_steps
        out = RESULTS / "runs" / f"mpc-pendulum-init{init}-s{args.seed}"
        overrides = {"init_random_steps": init, "refit_every": 100,
                     **{f"cem.{k}": v for k, v in asdict(config.cem).items()}}
        summary = train_run("pendulum", "sym-mpc", args.steps, args.seed, out,
                            eval_every=args.eval_every, eval_episodes=args.episodes,
                            overrides=overrides, progress=False)
        curve = [json.loads(x) for x in _curve_rows(out / "curve.csv")]
        solved = next((r["env_steps"] for r in curve if r["eval_return_mean"] >= THRESHOLD),
                      None)
        online.append({"init_random_steps": init, "steps_to_solve": solved,
                       "final_return": summary["final_eval"]["eval_return_mean"],
                       "curve": curve, "model_fits": summary["model_fits"],
                       "plan_ms_median": summary["plan_ms_median"],
                       "equations": summary["equations"]})
        print(f"sym-mpc: solved at {solved} real steps; curve "
              + ", ".join(f"{r['env_steps']}:{r['eval_return_mean']:.0f}" for r in curve))

    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    text = tables(returns, timings, online, fit_s, args)
    header = (
        f"# MPC on Pendulum\n\nSeed {args.seed}; symbolic models (sparse backend) fitted on "
        f"{args.fit_steps} random real steps in {fit_s} s; timings use the last one; "
        f"CEM horizon 30, population 500, 50 elites, 3 "
        f"iterations, float32; torch {torch.__version__} on 1 thread, {os.cpu_count()} CPUs "
        f"shared with other work (load average at the end: "
        f"{', '.join(f'{x:.1f}' for x in load or [])}).\n\n"
    )
    print(text)
    config_doc = {
        "args": vars(args), "mpc_config": asdict(config), "gradient_config": asdict(gradient),
        "python": sys.version.split()[0], "torch": torch.__version__,
        "machine": platform.machine(), "cpu_count": os.cpu_count(), "load_average": load,
        "equations": {name: m.equations() for name, m in models},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mpc.md").write_text(header + text + "\n")
    (RESULTS / "mpc.json").write_text(json.dumps(
        {"config": config_doc, "returns": returns, "timings": timings, "online": online},
        indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'mpc.md'} and {RESULTS / 'mpc.json'}")
    return 0


def _curve_rows(path: Path):
    import csv

    with open(path) as f:
        for row in csv.DictReader(f):
            yield json.dumps({k: float(v) if k != "env_steps" else int(v) for k, v in row.items()})


def tables(returns, timings, online, fit_s, args) -> str:
    lines = [
        f"## Return ({args.episodes} evaluation episodes)\n",
        "| model CEM plans with | return (mean ± std) | per episode |",
        "|---|---:|---|",
    ]
    for r in returns:
        lines.append(f"| {r['model']} | {r['mean']} ± {r['std']} | "
                     f"{', '.join(str(x) for x in r['returns'])} |")
    lines += [
        "",
        "## Planning time per control step (one state, horizon 30)\n",
        "| planner | median wall (ms) | p90 wall (ms) | median CPU (ms) | 20 Hz budget (20 ms) |",
        "|---|---:|---:|---:|---|",
    ]
    for t in timings:
        ok = "ok" if t["cpu_ms"] <= 20 else "over"
        lines.append(f"| {t['planner']} | {t['wall_ms']} | {t['wall_ms_p90']} | {t['cpu_ms']} | "
                     f"{ok} (CPU) |")
    if online:
        lines += [
            "",
            f"## Real steps to solve Pendulum online (sym-mpc; mean of {args.episodes} "
            f"episodes >= {THRESHOLD:.0f}; evaluated every {args.eval_every} steps)\n",
            "| random steps before the first fit | real steps to solve | final return | "
            "model fits | curve (real steps: return) |",
            "|---:|---:|---:|---:|---|",
        ]
        for o in online:
            curve = ", ".join(f"{r['env_steps']}: {r['eval_return_mean']:.0f}" for r in o["curve"])
            lines.append(f"| {o['init_random_steps']} | {o['steps_to_solve'] or 'not solved'} | "
                         f"{o['final_return']:.1f} | {o['model_fits']} | {curve} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
