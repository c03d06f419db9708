"""Sample efficiency: real steps to solve a task, for every learner under one protocol.

Learners: sym-mbpo (MBPO + symbolic world model), mbpo (MBPO + NN ensemble), our SAC, our SAC
with 20 updates per real step (``sac-utd20``, the update-to-data ratio MBPO gets, as in
DroQ/REDQ), Stable-Baselines3's SAC as an external anchor, and sym-mpc (CEM planning on the
symbolic model). ``--learners`` and ``--learner-seeds`` pick a subset.

The protocol is :mod:`sym_mbrl_ros.protocol`, the same one ``sym-mbrl train`` follows: report
seeds (100 and up; ``--tuning`` runs the tuning seeds 0-4 instead), every learner evaluated
on the same real-step grid, every evaluation on fresh episode seeds, "steps to threshold" the
sustained one (the threshold holds at every later evaluation), the median with a bootstrap
95 % interval and the IQM of the return at fixed budgets. A finished run is reused only when
its settings *and* the hash of the code that made it equal today's; otherwise it is re-run.

Episodes per evaluation: 5 where the threshold is a mean return (Pendulum), 20 where it is a
success rate (Reacher, Car2d). A 90 % success threshold cannot be read from 5 episodes: they
give 80 % or 100 %, so "≥ 90 %" would mean "all 5", and a policy that succeeds 95 % of the time
would miss it one evaluation in four. With 20 episodes it means at least 18 of 20.

    python bench/sample_efficiency.py --task pendulum --seeds 10 \\
        --learner-seeds mbpo=5,sac=5,sac-utd20=5,sb3-sac=5

Prints and writes ``bench/results/sample_efficiency_<task>.md`` (tables), ``.png`` (all curves)
and ``.json`` (configuration and raw results). Run folders of the individual trainings go to
``bench/results/runs/<task>/``; a finished run with the same settings and code is reused unless
--fresh.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
LEARNERS = ("sym-mbpo", "sym-mbpo-espl", "mbpo", "sac", "sac-utd20", "sac-repeat", "sb3-sac",
            "sym-mpc")
DEFAULT_LEARNERS = tuple(n for n in LEARNERS if n != "sym-mbpo-espl")
"""What runs without ``--learners`` (ESPL on request: it costs about twice sym-mbpo)."""
LABELS = {
    "sym-mbpo": "sym-mbpo (symbolic model)",
    "sym-mbpo-espl": "sym-mbpo, ESPL symbolic policy (network)",
    "sym-mpc": "sym-mpc (CEM on the symbolic model)",
    "mbpo": "mbpo (NN ensemble)",
    "sac": "SAC (ours)",
    "sac-utd20": "SAC, 20 updates/step (ours)",
    "sac-repeat": "SAC, MBPO's action repeat (ours)",
    "sb3-sac": "SAC (Stable-Baselines3)",
}
ALGO = {"sym-mbpo": "sym-mbpo", "sym-mbpo-espl": "sym-mbpo", "mbpo": "mbpo", "sac": "sac",
        "sac-utd20": "sac", "sac-repeat": "sac", "sym-mpc": "sym-mpc"}
"""The ``sym-mbrl train`` algorithm behind each of our learners."""
POLICY = {"sym-mbpo-espl": "espl"}
"""The ``--policy`` of a learner (default mlp): ESPL trains a symbolic policy network, evaluated
as a network on the grid and, at the end, exported to a formula evaluated on fresh episodes."""
LEARNER_OVERRIDES: dict[str, dict[str, Any]] = {"sac-utd20": {"gradient_steps": 20}}
"""Settings that make a learner what its name says (applied before ``--set``)."""
HIGH_UTD_STEPS = 5000
"""Default budget of the high-UTD SAC: 20 updates per step cost about 20x the CPU of SAC."""
# SB3 settings: the defaults, with RL-Zoo's tuned learning rate for Pendulum.
SB3_KWARGS: dict[str, dict[str, Any]] = {
    "pendulum": {"learning_rate": 1e-3},
}


def parse_pairs(text: str | None) -> dict[str, int]:
    """``"mbpo=1,sac=3"`` -> ``{"mbpo": 1, "sac": 3}``, learners checked."""
    out: dict[str, int] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        if name.strip() not in LEARNERS or not value.strip().isdigit():
            sys.exit(f"expected LEARNER=N pairs with LEARNER in {', '.join(LEARNERS)}: {item!r}")
        out[name.strip()] = int(value)
    return out


def parse_steps(text: str | None, task: str) -> dict[str, int]:
    """The task's default budgets, with ``--steps`` pairs applied."""
    from sym_mbrl_ros.agents.presets import DEFAULT_STEPS

    given = parse_pairs(text)
    steps = {**DEFAULT_STEPS[task], **given}
    # the SAC variants follow SAC's budget (the one given, else the task's) unless given
    derived = {"sb3-sac": steps["sac"], "sac-utd20": min(HIGH_UTD_STEPS, steps["sac"]),
               "sac-repeat": steps["sac"], "sym-mbpo-espl": steps["sym-mbpo"]}
    return {**steps, **derived, **given}


# ---------------------------------------------------------------- one training run (a worker)


def job_overrides(job: dict[str, Any]) -> dict[str, Any]:
    """The learner's defining settings with the command line's ``--set`` on top."""
    defining = dict(LEARNER_OVERRIDES.get(job["learner"], {}))
    if job["learner"] == "sac-repeat":  # the action repeat sym-mbpo's preset uses on this task
        from sym_mbrl_ros.agents.presets import make_config

        defining["action_repeat"] = make_config("sym-mbpo", job["task"]).action_repeat
    return {**defining, **job["overrides"].get(job["learner"], {})}


class RunFolderBusy(RuntimeError):
    """Another process trains into the same run folder."""


def claim_run_folder(out: Path):
    """Create ``out`` and hold an exclusive lock on ``out/.lock`` for as long as the returned
    file stays open; :class:`RunFolderBusy` when another process holds it.

    Two trainings writing one folder interleave their ``curve.csv`` lines and the summary of
    one describes the curve of the other. It happened: workers of a killed invocation (a
    multiprocessing pool's workers outlive a parent killed by a signal) trained on while a new
    invocation trained the same seeds into the same folders.
    """
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / ".lock", "w")  # noqa: SIM115 (held open on purpose)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunFolderBusy(f"run folder {out} is in use by another process (a worker of an "
                            f"earlier bench invocation still running?)") from None
    return handle


def _die_with_parent() -> None:
    """Pool initializer: the worker exits within a second of the bench process's death (its
    parent changes), so that a killed invocation leaves no trainings running.

    Not PR_SET_PDEATHSIG: that signal follows the *thread* that started the worker, and with
    one task per worker the pool's handler thread starts them. It ends when the pool shuts
    down, its idle workers died holding the task queue's lock, and the bench hung after its
    last training with every result unwritten.
    """
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one learner on one seed; returns its curve and timings."""
    with claim_run_folder(Path(job["out"])):
        return _run_job(job)


def _run_job(job: dict[str, Any]) -> dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from sym_mbrl_ros.protocol import same_code

    torch.set_num_threads(1)
    out = Path(job["out"])
    summary_path = out / "summary.json"
    if job["reuse"] and summary_path.exists():
        summary = json.loads(summary_path.read_text())
        same = all(_same(summary.get(k), job[k]) for k in ("steps", "eval_episodes"))
        if same and same_code(summary.get("provenance")) and _same_config(job, out):
            return _result(job, summary, out, reused=True)
    if job["learner"] == "sb3-sac":
        summary = train_sb3(job)
    else:
        from sym_mbrl_ros.commands.train import train_run

        summary = train_run(
            job["task"],
            ALGO[job["learner"]],
            job["steps"],
            job["seed"],
            out,
            eval_episodes=job["eval_episodes"],
            policy=POLICY.get(job["learner"], "mlp"),
            overrides=job_overrides(job),
            threads=1,
            progress=False,
        )
    return _result(job, summary, out, reused=False)


def _same_config(job: dict[str, Any], out: Path) -> bool:
    """Whether the finished run in ``out`` used the settings this job would use now.

    Ours: the learner's full configuration (presets + overrides), the evaluation episodes and
    the protocol's grid; a field the old run lacks counts as equal when the new value is that
    field's default (a field added since, which changes nothing). SB3: its keyword arguments.
    """
    import dataclasses

    try:
        old = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if old.get("eval_episodes") != job["eval_episodes"] or old.get("eval_grid") != "protocol":
        return False
    if job["learner"] == "sb3-sac":
        from sym_mbrl_ros.envs import get_task

        kwargs = {**SB3_KWARGS.get(job["task"], {}), **job["overrides"].get("sb3-sac", {})}
        inputs = get_task(job["task"]).policy_inputs
        return _same(old.get("sb3_kwargs"), kwargs) and _same(old.get("policy_inputs"), inputs)
    from sym_mbrl_ros.agents.presets import make_config

    policy = POLICY.get(job["learner"], "mlp")
    if old.get("policy", "mlp") != policy:
        return False
    config = make_config(ALGO[job["learner"]], job["task"], policy, job_overrides(job))
    inner = getattr(config, "sac", config)
    inner.num_threads = 1  # as run_job trains
    new = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    default = json.loads(json.dumps(dataclasses.asdict(type(config)()), default=str))
    return _matches(old.get("config", {}), new, default)


def _matches(old: dict, new: dict, default: dict) -> bool:
    for key, value in new.items():
        if key not in old:
            if value != default.get(key):
                return False
        elif isinstance(value, dict) and isinstance(old[key], dict):
            if not _matches(old[key], value, default.get(key) or {}):
                return False
        elif not _same(old[key], value):
            return False
    return True


def _same(a, b) -> bool:
    """Equal, where a JSON list and a tuple with the same items count as equal."""
    return (list(a) if isinstance(a, list | tuple) else a) == (
        list(b) if isinstance(b, list | tuple) else b
    )


def _result(job, summary, out: Path, reused: bool) -> dict[str, Any]:
    import csv

    with (out / "curve.csv").open() as f:
        rows = [
            {k: float(v) if v not in ("", "None") else None for k, v in r.items()}
            for r in csv.DictReader(f)
        ]
    print(
        f"  done {job['learner']:<9} seed {job['seed']}: "
        f"threshold at {summary.get('steps_to_threshold')}, "
        f"{summary.get('train_s', 0):.0f} s{' (reused)' if reused else ''}",
        flush=True,
    )
    return {
        "learner": job["learner"], "seed": job["seed"], "rows": rows, "summary": summary,
        "reused": reused,
    }


def _policy_inputs_env(env, inputs: tuple[int, ...]):
    """``env`` with the task's policy inputs as its observations (what SB3 trains on)."""
    import gymnasium as gym
    import numpy as np

    idx = list(inputs)
    box = env.observation_space
    space = gym.spaces.Box(box.low[idx], box.high[idx], dtype=box.dtype)
    return gym.wrappers.TransformObservation(env, lambda obs: np.asarray(obs)[idx], space)


def train_sb3(job: dict[str, Any]) -> dict[str, Any]:
    """Stable-Baselines3 SAC, evaluated exactly like our learners."""
    import csv

    from stable_baselines3 import SAC as SB3SAC
    from stable_baselines3.common.callbacks import BaseCallback

    from sym_mbrl_ros.agents.evaluation import Evaluator
    from sym_mbrl_ros.agents.presets import THRESHOLDS
    from sym_mbrl_ros.commands.train import CURVE_COLUMNS, evaluation_steps, plot_curve
    from sym_mbrl_ros.envs import get_task
    from sym_mbrl_ros.protocol import (
        eval_episode_seeds,
        first_crossing,
        provenance,
        sustained_from_rows,
    )

    task = get_task(job["task"])
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)  # written at the end: marks a finished run
    evaluator = Evaluator(task, job["eval_episodes"])
    grid = set(evaluation_steps(job["steps"]))  # the protocol's grid, as for our learners
    import stable_baselines3
    has_success = task.success is not None
    columns = CURVE_COLUMNS + (["success_rate"] if has_success else [])
    kwargs = {**SB3_KWARGS.get(task.name, {}), **job["overrides"].get("sb3-sac", {})}
    inputs = task.policy_inputs  # the same policy inputs as our learners read
    (out / "config.json").write_text(
        json.dumps(
            {
                "task": task.name,
                "algo": "sb3-sac",
                "steps": job["steps"],
                "seed": job["seed"],
                "eval_episodes": job["eval_episodes"],
                "eval_grid": "protocol",
                "provenance": provenance(),
                "sb3_version": stable_baselines3.__version__,
                "sb3_kwargs": kwargs,
                "policy_inputs": None if inputs is None else list(inputs),
            },
            indent=2,
        )
        + "\n"
    )
    rows: list[dict[str, Any]] = []
    clock = {"start": time.perf_counter(), "eval_s": 0.0, "cpu": time.process_time()}
    clock["eval_cpu_s"] = 0.0

    class EvalEvery(BaseCallback):
        def _on_step(self) -> bool:
            step = self.num_timesteps
            if step in grid:
                t0, c0 = time.perf_counter(), time.process_time()
                seeds = eval_episode_seeds(job["seed"], len(rows), job["eval_episodes"])
                res = evaluator(policy, seeds)
                clock["eval_s"] += time.perf_counter() - t0
                clock["eval_cpu_s"] += time.process_time() - c0
                row = {
                    "env_steps": step,
                    "eval_return_mean": round(res.mean, 4),
                    "eval_return_std": round(res.std, 4),
                    "wall_s": round(time.perf_counter() - clock["start"] - clock["eval_s"], 3),
                }
                if has_success:
                    row["success_rate"] = res.success_rate
                rows.append(row)
            return True

    env = task.make_env()
    if inputs is not None:
        env = _policy_inputs_env(env, inputs)

    def policy(obs):
        """The deterministic action for a batch of full observations."""
        if inputs is not None:
            obs = obs[..., list(inputs)]
        return model.predict(obs, deterministic=True)[0]

    model = SB3SAC("MlpPolicy", env, seed=job["seed"], device="cpu", verbose=0, **kwargs)
    model.learn(job["steps"], callback=EvalEvery())
    train_s = time.perf_counter() - clock["start"] - clock["eval_s"]
    train_cpu_s = time.process_time() - clock["cpu"] - clock["eval_cpu_s"]
    evaluator.close()
    with (out / "curve.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    column, value = THRESHOLDS[task.name]
    summary = {
        "task": task.name,
        "algo": "sb3-sac",
        "seed": job["seed"],
        "steps": job["steps"],
        "eval_episodes": job["eval_episodes"],
        "provenance": provenance(),
        "train_s": round(train_s, 2),
        "train_cpu_s": round(train_cpu_s, 2),
        "final_eval": rows[-1],
        "steps_to_threshold": sustained_from_rows(rows, column, value),
        "first_crossing": first_crossing(
            [r["env_steps"] for r in rows], [r.get(column) for r in rows], value),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_curve(rows, out / "curve.png", f"{task.name} — sb3-sac (seed {job['seed']})", has_success)
    return summary


# ---------------------------------------------------------------- tables and the figure


def _fmt_steps(values: list[int | None], budget: int) -> str:
    """Median [bootstrap 95 % interval] (solved/runs); an unsolved run counts as > budget."""
    from sym_mbrl_ros.protocol import format_steps, median_interval

    if not values:
        return "—"
    solved = sum(v is not None for v in values)
    return f"{format_steps(median_interval(values), budget)} ({solved}/{len(values)} seeds)"


def tricks(name: str, config: dict[str, Any] | None) -> str:
    """One line: what a learner got (updates per real step, action repeat, head starts)."""
    if name == "sb3-sac":
        return "1 update per real step, SB3 defaults (RL-Zoo learning rate on Pendulum)"
    if not config:
        return "—"
    c = config.get("config", {})
    if name == "sym-mpc":
        cem = c.get("cem", {})
        return (f"CEM planning: population {cem.get('population')}, horizon "
                f"{cem.get('horizon')}; model refit every {c.get('refit_every')} steps; "
                f"{c.get('init_random_steps')} random steps")
    if "sac" in c:  # MBPO
        return (("ESPL policy; " if name in POLICY else "")
                + f"{c.get('updates_per_step')} updates per real step on model rollouts "
                f"(horizon {c.get('rollout_horizon')}, action repeat {c.get('action_repeat')}); "
                f"{c.get('first_fit_updates')} updates after the first fit; "
                f"{c.get('init_random_steps')} random steps")
    return (f"{c.get('gradient_steps')} update(s) per real step, action repeat "
            f"{c.get('action_repeat', 1)}; "
            f"{c.get('learning_starts')} random steps")


def _value_at(rows: list[dict], step: int, column: str) -> float | None:
    best = None
    for r in rows:
        if r["env_steps"] <= step and r.get(column) is not None:
            best = r
    if best is None or rows[-1]["env_steps"] < step:
        return None
    return best[column]


def report(
    task: str,
    results: list[dict],
    steps: dict[str, int],
    budgets: list[int],
    seeds: list[int],
    episodes: int = 5,
    configs: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The markdown tables and a dict of the numbers in them."""
    from sym_mbrl_ros.agents.presets import THRESHOLDS
    from sym_mbrl_ros.protocol import iqm_interval

    column, value = THRESHOLDS[task]
    configs = configs or {}
    learners = [name for name in LEARNERS if any(r["learner"] == name for r in results)]
    by = {
        name: sorted((r for r in results if r["learner"] == name), key=lambda r: r["seed"])
        for name in learners
    }
    crit = (
        f"mean return ≥ {value:g}"
        if column == "eval_return_mean"
        else f"success rate ≥ {value:.0%}"
    )
    lines = [
        f"# Sample efficiency on {task}",
        "",
        f"Seeds {seeds} (a learner with fewer lists them under 'per seed'); evaluation: "
        f"deterministic policy (sym-mpc: the planner), {episodes} fresh episodes per "
        f"evaluation (protocol seeds), on the protocol's grid for every learner; "
        f"threshold: {crit}, **sustained** (it holds at every later evaluation of the run).",
        "",
        "## Real steps to reach and hold the threshold",
        "",
        "median [bootstrap 95 % interval] over seeds (a seed that never holds it counts as more "
        "than its budget); 'first crossing' is the old, lenient rule, for comparison",
        "",
        "| learner | budget | steps to threshold (sustained) | per seed | first crossing, "
        "median |",
        "|---|---|---|---|---|",
    ]
    numbers: dict[str, Any] = {"steps_to_threshold": {}, "first_crossing": {}, "at_budget": {},
                               "wall_s": {}}
    medians = {}
    for name in learners:
        vals = [r["summary"].get("steps_to_threshold") for r in by[name]]
        first = [r["summary"].get("first_crossing") for r in by[name]]
        numbers["steps_to_threshold"][name] = vals
        numbers["first_crossing"][name] = first
        filled = sorted(v if v is not None else np.inf for v in vals)
        medians[name] = float(filled[(len(filled) - 1) // 2]) if filled else np.inf
        per_seed = ", ".join("—" if v is None else str(v) for v in vals)
        first_s = (_fmt_steps(first, steps[name]).split(" [")[0]
                   if all(k in r["summary"] for r in by[name] for k in ("first_crossing",))
                   else "—")
        lines.append(
            f"| {LABELS[name]} | {steps[name]} | {_fmt_steps(vals, steps[name])} | {per_seed} "
            f"| {first_s} |"
        )
    for ours in ("sym-mbpo", "sym-mpc"):
        base = medians.get(ours)
        if base and np.isfinite(base) and len(learners) > 1:  # nothing to compare alone
            lines += [
                "",
                f"Median steps relative to {ours}'s: "
                + ", ".join(
                    f"{LABELS[n]} {'>' if not np.isfinite(medians[n]) else ''}"
                    f"{(medians[n] if np.isfinite(medians[n]) else steps[n]) / base:.1f}×"
                    for n in learners
                    if n != ours
                ),
            ]
    lines += ["", "## What each learner got", "", "| learner | budget | tricks |", "|---|---|---|"]
    for name in learners:
        lines.append(f"| {LABELS[name]} | {steps[name]} | {tricks(name, configs.get(name))} |")
    # the threshold's metric first; success-rate tasks also get the return
    metrics = [column] + (["eval_return_mean"] if column != "eval_return_mean" else [])
    for metric in metrics:
        unit = "return" if metric == "eval_return_mean" else "success rate"
        key = "at_budget" if metric == column else "return_at_budget"
        numbers[key] = {}
        lines += [
            "",
            f"## {unit.capitalize()} at fixed budgets of real steps",
            "",
            "IQM [bootstrap 95 % interval] over seeds (— : the learner's run is shorter)",
            "",
            "| learner | " + " | ".join(str(b) for b in budgets) + " |",
            "|---|" + "---|" * len(budgets),
        ]
        for name in learners:
            cells = []
            numbers[key][name] = {}
            for b in budgets:
                vals = [_value_at(r["rows"], b, metric) for r in by[name]]
                vals = [v for v in vals if v is not None]
                numbers[key][name][b] = vals
                if not vals:
                    cells.append("—")
                    continue
                est = iqm_interval(vals)
                if metric == "eval_return_mean":
                    cells.append(f"{est.value:.0f} [{est.low:.0f}–{est.high:.0f}]")
                else:
                    cells.append(f"{est.value:.0%} [{est.low:.0%}–{est.high:.0%}]")
            lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    lines += formula_lines(by, column, value, numbers)
    lines += [
        "",
        "## Wall-clock time (training only, evaluation excluded)",
        "",
        "CPU s: the worker's own CPU time (one thread); unlike wall time it does not grow "
        "when other processes share the cores.",
        "",
        "| learner | real steps | wall s (median [range]) | CPU s (median) | "
        "ms per real step (wall) | wall s to threshold (median) |",
        "|---|---|---|---|---|---|",
    ]
    for name in learners:
        ts = [r["summary"]["train_s"] for r in by[name]]
        to_thr = []
        for r in by[name]:
            k = r["summary"].get("steps_to_threshold")
            if k is not None:
                to_thr += [row["wall_s"] for row in r["rows"] if row["env_steps"] == k]
        numbers["wall_s"][name] = ts
        cpu = [r["summary"]["train_cpu_s"] for r in by[name] if "train_cpu_s" in r["summary"]]
        numbers.setdefault("cpu_s", {})[name] = cpu
        lines.append(
            f"| {LABELS[name]} | {steps[name]} | {np.median(ts):.0f} [{min(ts):.0f}–{max(ts):.0f}] "
            f"| {f'{np.median(cpu):.0f}' if cpu else '—'} "
            f"| {1000 * np.median(ts) / steps[name]:.1f} | "
            f"{(f'{np.median(to_thr):.0f}' if to_thr else '—')} |"
        )
    return "\n".join(lines) + "\n", numbers


FORMULA_CHARS = 400
"""Longer formulas are not printed in the table (the run folder keeps them)."""


def formula_lines(by: dict[str, list[dict]], column: str, value: float,
                  numbers: dict[str, Any]) -> list[str]:
    """ESPL: the exported formula of each seed's final policy, evaluated in numpy on fresh
    episodes against the pruned network on the same episodes (empty without ESPL runs)."""
    lines: list[str] = []
    for name in by:
        if name not in POLICY:
            continue
        metric = "success_rate" if column == "success_rate" else "mean"
        rows, held = [], 0
        for r in by[name]:
            f = r["summary"].get("formula")
            if not f:
                continue
            net, fml = f["network_return"], f["formula_return"]
            ok = fml.get(metric) is not None and fml[metric] >= value
            held += ok
            rows.append((r["seed"], net, fml, f))
        if not rows:
            continue
        numbers.setdefault("formula", {})[name] = [
            {"seed": seed, "network": net, "formula": fml, "operators": f["operators"],
             "constants": f["constants"], "expressions": f["expressions"]}
            for seed, net, fml, f in rows]
        crit = f"success ≥ {value:.0%}" if metric == "success_rate" else f"return ≥ {value:g}"
        lines += [
            "",
            f"## {LABELS[name].split(' (')[0]}: the exported formula at the end of the run",
            "",
            "The final policy pruned and exported to one formula per action (compacted on "
            "replay-buffer states), then the pruned network and the formula (numpy) on the "
            f"same fresh evaluation episodes. The formula meets the threshold ({crit}) on "
            f"**{held} of {len(rows)}** seeds.",
            "",
            "| seed | network: return | formula: return | formula: success | size (ops, "
            "consts) | formula |",
            "|---|---|---|---|---|---|",
        ]
        for seed, net, fml, f in rows:
            succ = fml.get("success_rate")
            text = "; ".join(f["expressions"])
            shown = (f"`{text}`" if len(text) <= FORMULA_CHARS
                     else f"{len(text)} characters: policy.json of the run folder")
            lines.append(
                f"| {seed} | {net['mean']:.1f} ± {net['std']:.1f} | {fml['mean']:.1f} ± "
                f"{fml['std']:.1f} | {'—' if succ is None else f'{succ:.0%}'} | "
                f"{f['operators']}, {f['constants']} | {shown} |")
    return lines


def plot(task: str, results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sym_mbrl_ros.agents.presets import THRESHOLDS

    column, value = THRESHOLDS[task]
    metrics = ["eval_return_mean"] + ([column] if column != "eval_return_mean" else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.5), squeeze=False)
    colors = {"sym-mbpo": "tab:red", "sym-mbpo-espl": "tab:brown", "mbpo": "tab:purple",
              "sac": "tab:blue",
              "sac-utd20": "tab:cyan", "sac-repeat": "tab:green", "sb3-sac": "tab:gray",
              "sym-mpc": "tab:orange"}
    for ax, metric in zip(axes[0], metrics):
        medians = []
        for name in LEARNERS:
            runs = [r["rows"] for r in results if r["learner"] == name]
            if not runs:
                continue
            n = min(len(rows) for rows in runs)
            x = np.array([row["env_steps"] for row in runs[0][:n]])
            y = np.array([[row[metric] for row in rows[:n]] for rows in runs], dtype=float)
            medians.append(np.median(y, 0))
            ax.plot(x, medians[-1], color=colors[name], label=f"{LABELS[name]} (median)")
            ax.fill_between(x, y.min(0), y.max(0), color=colors[name], alpha=0.15)
        if metric == column:
            ax.axhline(value, color="k", ls=":", lw=1, label="threshold")
        if metric == "eval_return_mean" and medians:
            # a diverging seed (a pendulum spun up to -20000) would flatten every other curve
            low, high = min(m.min() for m in medians), max(m.max() for m in medians)
            if column == "eval_return_mean" and value < 0:
                low = max(low, 10 * value)  # a return threshold: show down to 10x it
            ax.set_ylim(low - 0.3 * (high - low), high + 0.1 * (high - low))
        ax.set_xscale("log")
        ax.set_xlabel("real environment steps (log scale)")
        ax.set_ylabel("evaluation return" if metric == "eval_return_mean" else "success rate")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Sample efficiency on {task} (band: range over seeds, axis clipped)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ---------------------------------------------------------------- main


def default_eval_episodes(task: str) -> int:
    """Episodes per evaluation: the protocol's, the same for every task
    (:data:`sym_mbrl_ros.protocol.EVAL_EPISODES` says why)."""
    from sym_mbrl_ros.protocol import EVAL_EPISODES

    return EVAL_EPISODES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="pendulum")
    p.add_argument("--seeds", type=int, default=10,
                   help="report seeds 100..100+N-1 (the protocol's; default 10)")
    p.add_argument("--tuning", action="store_true",
                   help="run the tuning seeds 0-4 instead (for tuning presets; never reported)")
    p.add_argument("--learner-seeds", default=None,
                   help="fewer seeds for some learners, e.g. mbpo=5 (the first N seeds)")
    p.add_argument("--steps", default=None, help="per learner, e.g. sym-mbpo=1500,sac=15000")
    p.add_argument("--learners", default=",".join(DEFAULT_LEARNERS),
                   help=f"comma-separated subset of {', '.join(LEARNERS)} (default: all but "
                        "sym-mbpo-espl)")
    p.add_argument("--eval-episodes", type=int, default=None,
                   help="episodes per evaluation (default: the protocol's, 20)")
    p.add_argument("--budgets", default=None, help="comma-separated step budgets for the table")
    p.add_argument("--workers", type=int, default=2, help="parallel trainings (at most 2)")
    p.add_argument(
        "--set",
        dest="overrides",
        default="{}",
        help='JSON {"learner": {"key": value}} of setting overrides',
    )
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--fresh", action="store_true", help="retrain even if a finished run exists")
    args = p.parse_args(argv)

    from sym_mbrl_ros.envs import TASKS

    if args.task not in TASKS:
        p.error(f"unknown task {args.task!r}; choose one of {', '.join(TASKS)}")
    learners = [x.strip() for x in args.learners.split(",") if x.strip()]
    if set(learners) - set(LEARNERS):
        p.error(f"--learners must be a subset of {', '.join(LEARNERS)}")
    steps = parse_steps(args.steps, args.task)
    from sym_mbrl_ros.protocol import TUNING_SEEDS, report_seeds

    seeds = list(TUNING_SEEDS[: args.seeds]) if args.tuning else report_seeds(args.seeds)
    learner_seeds = {name: int(n) for name, n in parse_pairs(args.learner_seeds).items()}
    overrides = json.loads(args.overrides)
    if args.eval_episodes is None:
        args.eval_episodes = default_eval_episodes(args.task)
    out = Path(args.out)
    runs_dir = out / "runs" / args.task
    jobs = [
        {
            "task": args.task,
            "learner": name,
            "seed": s,
            "steps": steps[name],
            "eval_episodes": args.eval_episodes,
            "overrides": overrides,
            "out": str(runs_dir / f"{name}-s{s}"),
            "reuse": not args.fresh,
        }
        for name in learners
        for s in seeds[: learner_seeds.get(name, len(seeds))]
    ]
    # longest jobs first, so the two workers finish close together
    cost = {"sym-mbpo": 0.25, "sym-mbpo-espl": 0.5, "mbpo": 0.2, "sac": 0.008, "sac-utd20": 0.12,
            "sac-repeat": 0.006, "sb3-sac": 0.012, "sym-mpc": 0.05}
    jobs.sort(key=lambda j: -j["steps"] * cost[j["learner"]])
    workers = max(1, min(2, args.workers))
    print(
        f"sample efficiency on {args.task}: {len(jobs)} trainings, {workers} workers; "
        f"steps {steps}",
        flush=True,
    )
    t0 = time.time()
    if workers == 1:
        results = [run_job(j) for j in jobs]
    else:
        with mp.get_context("spawn").Pool(workers, initializer=_die_with_parent,
                                          maxtasksperchild=1) as pool:
            results = pool.map(run_job, jobs, chunksize=1)
    elapsed = time.time() - t0

    longest = max(steps[n] for n in learners)
    budgets = (
        [int(b) for b in args.budgets.split(",")]
        if args.budgets
        else sorted(
            {b for b in (500, 1000, 1500, 3000, 5000, 10000, 20000, 50000) if b <= longest}
            | {steps[n] for n in learners}
        )
    )
    configs = {
        r["learner"]: json.loads((runs_dir / f"{r['learner']}-s{r['seed']}" / "config.json")
                                 .read_text())
        for r in sorted(results, key=lambda r: -r["seed"])  # the first seed's config wins
    }
    text, numbers = report(args.task, results, steps, budgets, seeds, args.eval_episodes,
                           configs)
    n_reused = sum(r["reused"] for r in results)
    text += (
        f"\nCommand: `python bench/sample_efficiency.py {' '.join(argv or sys.argv[1:])}`; "
        f"{elapsed / 60:.1f} min with {workers} workers on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), torch threads 1 per worker"
        + (f"; {n_reused} of {len(results)} trainings reused from an earlier invocation "
           f"(their times are from then)" if n_reused else "")
        + ". The cores were shared with other work, so wall times vary; CPU s does not.\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"sample_efficiency_{args.task}"
    Path(f"{stem}.md").write_text(text)
    plot(args.task, results, Path(f"{stem}.png"))
    Path(f"{stem}.json").write_text(
        json.dumps(
            {
                "task": args.task,
                "seeds": seeds,
                "steps": steps,
                "protocol": "sym_mbrl_ros.protocol (grid, fresh evaluation seeds, sustained)",
                "eval_episodes": args.eval_episodes,
                "overrides": overrides,
                "budgets": budgets,
                "sb3_kwargs": SB3_KWARGS.get(args.task, {}),
                "elapsed_s": elapsed,
                "numbers": numbers,
                "configs": configs,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(text)
    print(f"written: {stem}.md, {stem}.png, {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
