"""sym-mbrl train: learn a controller on a task with sym-mbpo, mbpo, model-free SAC or sym-mpc.

The run folder gets ``config.json``, ``curve.csv`` (one row per evaluation), ``curve.png``,
``summary.json`` and

* for the policy learners ``policy.pt`` (the SAC agent); with ``--policy espl`` also
  ``policy.json``, the exported formula, evaluated in numpy next to the network;
* for the model-based learners the world model (``model.json`` for the symbolic one,
  ``model.pt`` for the ensemble);
* for sym-mpc (no policy network: it plans) ``model.json``, ``mpc.json`` (planner settings and
  fit metrics) and ``transitions.npz`` (the real data it fitted on).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..protocol import EVAL_EPISODES

HELP = ("learn a controller on a task (sym-mbpo: symbolic world model; mbpo: NN ensemble; sac; "
        "sym-mpc: planning)")

CURVE_COLUMNS = ["env_steps", "eval_return_mean", "eval_return_std", "wall_s"]


def add_arguments(parser) -> None:
    parser.add_argument("task", help="task name (see `sym-mbrl tasks`)")
    parser.add_argument(
        "--algo", default="sym-mbpo",
        help="sym-mbpo (default), mbpo (NN ensemble), sac or sym-mpc (CEM on the symbolic model)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="real environment steps (default: per task/algo)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", default=None, help="run folder (default runs/TASK-ALGO-sSEED)")
    parser.add_argument(
        "--eval-every", type=int, default=None,
        help="evaluate every E real steps (default: the benchmark protocol's grid, the same for "
             "every learner: every 50 steps to 1,000, every 250 to 5,000, every 1,000 after)"
    )
    parser.add_argument(
        "--eval-episodes", type=int, default=EVAL_EPISODES,
        help=f"episodes per evaluation (default {EVAL_EPISODES}, the benchmark protocol's)"
    )
    parser.add_argument(
        "--eval-dense", default=None, metavar="EVERY:UNTIL",
        help="with --eval-every: evaluate every EVERY steps up to UNTIL steps, then every "
             "--eval-every (e.g. 50:1500)",
    )
    parser.add_argument(
        "--policy", default="mlp",
        help="policy architecture: mlp (default) or a registered one such as espl",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", metavar="KEY=VALUE",
        help="change one setting, e.g. --set updates_per_step=10 --set sac.learning_rate=3e-4",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--overwrite", action="store_true", help="reuse a run folder that already holds a run"
    )


def run(args) -> int:
    from ..agents.presets import DEFAULT_STEPS, check_algorithm, check_policy
    from ..envs import get_task

    task = get_task(args.task)
    check_algorithm(args.algo)
    check_policy(args.policy, args.algo)
    steps = args.steps or DEFAULT_STEPS.get(task.name, {}).get(args.algo, 5000)
    if steps <= 0 or (args.eval_every is not None and args.eval_every <= 0) or \
            args.eval_episodes <= 0:
        raise UserError("--steps, --eval-every and --eval-episodes must be positive")
    if args.eval_dense is not None and args.eval_every is None:
        raise UserError("--eval-dense refines --eval-every; give both, or neither for the "
                        "protocol's grid")
    out = Path(args.out or f"runs/{task.name}-{args.algo}-s{args.seed}")
    if (out / "config.json").exists() and not args.overwrite:
        raise UserError(f"{out} already holds a run; choose another --out or pass --overwrite")
    summary = train_run(
        task.name, args.algo, steps, args.seed, out,
        eval_every=args.eval_every, eval_episodes=args.eval_episodes, policy=args.policy,
        eval_dense=parse_eval_dense(args.eval_dense),
        overrides=_parse(args.overrides), threads=args.threads, progress=not args.no_progress,
    )
    final = summary["final_eval"]
    line = f"final return {final['eval_return_mean']:.1f} ± {final['eval_return_std']:.1f}"
    if final.get("success_rate") is not None:
        line += f", success {100 * final['success_rate']:.0f}%"
    reached = summary["steps_to_threshold"]
    line += (f"; threshold reached and held from {reached} steps" if reached
             else "; threshold not reached and held")
    print(f"{line}; {summary['train_s']:.0f} s of training; run folder {out}")
    if summary.get("equations"):
        print("learned dynamics:")
        for eq in summary["equations"]:
            print(f"  {eq}")
    formula = summary.get("formula")
    if formula:
        print(f"policy formula ({formula['operators']} operators, {formula['constants']} "
              f"constants; {out / 'policy.json'}):")
        for line_ in formula["expressions"]:
            print(f"  {line_}")
        net, fml = formula["network_return"], formula["formula_return"]
        print(f"return of the pruned network {net['mean']:.1f} ± {net['std']:.1f}, of the "
              f"formula in numpy {fml['mean']:.1f} ± {fml['std']:.1f} "
              f"({len(fml['returns'])} episodes)")
    return 0


def parse_eval_dense(text: str | None) -> tuple[int, int] | None:
    """``"50:1500"`` -> ``(50, 1500)``; None stays None."""
    if text is None:
        return None
    every, sep, until = text.partition(":")
    if not sep or not every.strip().isdigit() or not until.strip().isdigit() or int(every) <= 0:
        raise UserError(f"--eval-dense expects EVERY:UNTIL with positive integers, got {text!r}")
    return int(every), int(until)


def evaluation_steps(steps: int, every: int | None = None,
                     dense: tuple[int, int] | None = None) -> list[int]:
    """The real-step counts at which a run of ``steps`` steps is evaluated: the protocol's grid
    (:func:`sym_mbrl_ros.protocol.eval_grid`, the same for every learner) unless ``every`` is
    given; then every ``every`` steps, every ``dense[0]`` steps up to ``dense[1]``, and at
    the end."""
    from ..protocol import eval_grid

    if every is None:
        return eval_grid(steps)
    out = {s for s in range(every, steps + 1, every)} | {steps}
    if dense is not None:
        out |= set(range(dense[0], min(dense[1], steps) + 1, dense[0]))
    return sorted(out)


def _parse(items):
    from ..agents.presets import parse_overrides

    return parse_overrides(items)


def train_run(
    task_name: str,
    algo: str,
    steps: int,
    seed: int,
    out: str | Path,
    eval_every: int | None = None,
    eval_episodes: int = EVAL_EPISODES,
    policy: str = "mlp",
    overrides: dict[str, Any] | None = None,
    threads: int | None = 1,
    progress: bool = True,
    eval_dense: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Train one learner, evaluating as it goes, and fill the run folder; returns the summary.

    Evaluations follow the benchmark protocol (:mod:`sym_mbrl_ros.protocol`): at the steps of
    :func:`evaluation_steps`, each on fresh episode seeds; ``steps_to_threshold`` is the
    sustained one (the threshold holds at every later evaluation)."""
    import dataclasses

    import numpy as np
    import torch

    from ..agents.evaluation import Evaluator
    from ..agents.mbpo import MBPO, MBPOConfig, model_filename
    from ..agents.mpc import MPCConfig, SymMPC
    from ..agents.presets import THRESHOLDS, make_config, make_learner
    from ..envs import get_task
    from ..protocol import eval_episode_seeds, first_crossing, provenance, sustained_from_rows

    task = get_task(task_name)
    grid = evaluation_steps(steps, eval_every, eval_dense)
    grid_set = set(grid)
    if threads:
        torch.set_num_threads(threads)
    config = make_config(algo, task.name, policy, overrides)
    if isinstance(config, MPCConfig):
        config.num_threads = threads  # the planning thread's torch threads
    else:
        (config.sac if isinstance(config, MBPOConfig) else config).num_threads = threads
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)  # written at the end: marks a finished run
    env = task.make_env()
    obs_dim = int(env.observation_space.shape[0])
    learner = make_learner(algo, task, config, seed, obs_dim)
    evaluator = Evaluator(task, eval_episodes)
    has_success = task.success is not None
    columns = CURVE_COLUMNS + (["success_rate"] if has_success else [])
    run_config = {
        "task": task.name, "algo": algo, "steps": steps, "seed": seed, "policy": policy,
        "eval_every": eval_every, "eval_dense": eval_dense, "eval_episodes": eval_episodes,
        "eval_grid": "protocol" if eval_every is None else "custom", "obs_dim": obs_dim,
        "provenance": provenance(),
        "overrides": overrides or {}, "threads": threads,
        "config": dataclasses.asdict(config),
    }
    (out / "config.json").write_text(json.dumps(run_config, indent=2, default=str) + "\n")

    rows: list[dict[str, Any]] = []
    clock = {"start": time.perf_counter(), "eval_s": 0.0, "cpu_start": time.process_time(),
             "eval_cpu_s": 0.0}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, unit="step", dynamic_ncols=True, desc=f"{task.name} {algo}")
    curve_file = (out / "curve.csv").open("w", newline="")
    writer = csv.DictWriter(curve_file, fieldnames=columns)
    writer.writeheader()

    def train_seconds() -> float:
        return time.perf_counter() - clock["start"] - clock["eval_s"]

    def callback(step: int, learner_: Any) -> None:
        if step in grid_set:
            t0, c0 = time.perf_counter(), time.process_time()
            if isinstance(learner_, SymMPC):
                learner_.reset_evaluation()  # each evaluation plans from a cold start
            result = evaluator(learner_, eval_episode_seeds(seed, len(rows), eval_episodes))
            clock["eval_s"] += time.perf_counter() - t0
            clock["eval_cpu_s"] += time.process_time() - c0
            row = {
                "env_steps": step,
                "eval_return_mean": round(result.mean, 4),
                "eval_return_std": round(result.std, 4),
                "wall_s": round(train_seconds(), 3),
            }
            if has_success:
                row["success_rate"] = result.success_rate
            rows.append(row)
            writer.writerow(row)
            curve_file.flush()
        if bar is not None:
            bar.update(1)
            if step in grid_set or step % 50 == 0 or step == steps:
                post = {}
                if rows:
                    post["eval"] = f"{rows[-1]['eval_return_mean']:.1f}"
                    if has_success:
                        post["success"] = f"{rows[-1]['success_rate']:.0%}"
                if isinstance(learner_, MBPO | SymMPC) and learner_.model is not None:
                    post["R2"] = f"{learner_.model_r2:.4f}"
                bar.set_postfix(post, refresh=False)

    try:
        learner.learn(steps, env, callback=callback)
    finally:
        curve_file.close()
        if bar is not None:
            bar.close()
        env.close()
        evaluator.close()
    train_s = train_seconds()
    train_cpu_s = time.process_time() - clock["cpu_start"] - clock["eval_cpu_s"]

    summary: dict[str, Any] = {
        "task": task.name, "algo": algo, "seed": seed, "steps": steps, "eval_every": eval_every,
        "eval_dense": eval_dense, "eval_episodes": eval_episodes,
        "provenance": run_config["provenance"],
        "train_s": round(train_s, 2), "eval_s": round(clock["eval_s"], 2),
        "train_cpu_s": round(train_cpu_s, 2),
        "final_eval": rows[-1], "best_eval_return": max(r["eval_return_mean"] for r in rows),
        "threshold": None, "steps_to_threshold": None, "first_crossing": None,
    }
    if isinstance(learner, SymMPC):
        learner.save(out)  # model.json, mpc.json, transitions.npz: eval rebuilds the planner
        plan_s = learner.controller.plan_seconds if learner.controller is not None else []
        summary["plan_ms_median"] = round(1e3 * float(np.median(plan_s)), 2) if plan_s else None
    else:
        agent = learner.agent if isinstance(learner, MBPO) else learner
        agent.save(out / "policy.pt")
        summary["sac_updates"] = agent.num_updates
        if policy == "espl":
            # fresh episodes, after every evaluation of the grid; compacted on training data
            seeds = eval_episode_seeds(seed, len(rows), eval_episodes)
            summary["formula"] = export_formula(
                agent, task, eval_episodes, seeds[0], out, training_observations(learner))
    if task.name in THRESHOLDS:
        column, value = THRESHOLDS[task.name]
        summary["threshold"] = {"column": column, "value": value}
        summary["steps_to_threshold"] = sustained_from_rows(rows, column, value)
        summary["first_crossing"] = first_crossing(
            [r["env_steps"] for r in rows], [r.get(column) for r in rows], value)
    if isinstance(learner, MBPO | SymMPC):
        summary["timings_s"] = {k: round(v, 2) for k, v in learner.timings.items()}
        summary["model_fits"] = learner.num_model_fits
        summary["model_metrics"] = learner.model_metrics
        summary["model_r2"] = learner.model_r2
    if isinstance(learner, MBPO):
        summary["model_buffer_size"] = len(learner.model_buffer)
        if learner.model is not None:
            learner.model.save(out / model_filename(learner.config.world_model))
    if isinstance(learner, MBPO | SymMPC) and hasattr(learner.model, "equations"):
        summary["equations"] = list(learner.model.equations())
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n")
    plot_curve(rows, out / "curve.png", f"{task.name} — {algo} (seed {seed})", has_success)
    return summary


def training_observations(learner, newest: int = 5000):
    """The newest ``newest`` real observations a policy learner trained on (its replay buffer):
    the points an ESPL formula is compacted on."""
    agent = getattr(learner, "agent", learner)
    buffer = getattr(learner, "real_buffer", None) or getattr(agent, "replay_buffer", None)
    if buffer is None or len(buffer) == 0:
        return None
    return buffer.observations[buffer.recent_indices(newest)].double().numpy()


def export_formula(agent, task, episodes: int, first_seed: int, out: Path,
                   observations=None) -> dict[str, Any]:
    """ESPL: prune, export one formula per action to ``out/policy.json`` (compacted on
    ``observations``) and evaluate both the pruned network and the formula (numpy) on the
    same ``episodes`` evaluation episodes (seeds ``first_seed + i``)."""
    from ..agents.espl import export_and_evaluate

    result = export_and_evaluate(agent, task, episodes, seed=first_seed, out=out,
                                 observations=observations)
    policy = result["policy"]
    return {
        "expressions": policy.pretty().splitlines(),
        "operators": result["operators"], "constants": result["constants"],
        "network_return": result["network"], "formula_return": result["formula"],
        "file": "policy.json",
    }


def plot_curve(rows: list[dict[str, Any]], path: Path, title: str, success: bool) -> None:
    """Draw the evaluation curve (mean ± std; success rate on a second axis) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.array([r["env_steps"] for r in rows], dtype=float)
    m = np.array([r["eval_return_mean"] for r in rows], dtype=float)
    s = np.array([r["eval_return_std"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, m, marker="o", ms=3, label="eval return")
    ax.fill_between(x, m - s, m + s, alpha=0.2)
    ax.set_xlabel("real environment steps")
    ax.set_ylabel("return (mean of evaluation episodes)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if success:
        ax2 = ax.twinx()
        ax2.plot(x, [r["success_rate"] for r in rows], color="tab:green", ls="--", label="success")
        ax2.set_ylabel("success rate")
        ax2.set_ylim(-0.05, 1.05)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _jsonable(x):
    try:
        return x.item()
    except AttributeError:
        return str(x)
