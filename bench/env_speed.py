"""Environment steps per second for each task, in one process, with random actions.

Each task is timed twice: the environment class itself, and ``gymnasium.make(env_id)`` (which
adds the order-enforcing, passive-checker and time-limit wrappers). Actions are drawn up front
from a seeded generator, uniform in the action box, so the table times ``step`` (and the
``reset`` at each episode end), not the action sampler. The run is split into blocks, the two
variants alternate block by block, and the median block is reported, which discounts other
processes on a shared machine.

    python bench/env_speed.py [--seed 0] [--steps 30000] [--blocks 10]

Writes the table to bench/results/env_speed.md and the configuration and numbers to
bench/results/env_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np

from sym_mbrl_ros.envs import TASKS, register_all
from sym_mbrl_ros.envs.car2d import Car2dEnv
from sym_mbrl_ros.envs.cartpole import CartPoleEnv
from sym_mbrl_ros.envs.pendulum import PendulumEnv
from sym_mbrl_ros.envs.reacher import ReacherEnv

ENV_CLASSES = {"pendulum": PendulumEnv, "reacher": ReacherEnv, "car2d": Car2dEnv,
               "cartpole": CartPoleEnv}
TARGETS = {"pendulum": 10_000, "reacher": 5_000, "car2d": 5_000, "cartpole": 5_000}
RESULTS = Path(__file__).resolve().parent / "results"


def timed_steps(env, actions: np.ndarray) -> float:
    """Steps per second over ``actions``, resetting at each episode end."""
    start = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return len(actions) / (time.perf_counter() - start)


def run(seed: int, steps: int, blocks: int) -> list[dict]:
    """Time each task's env class and its gymnasium.make version in alternating blocks, so
    both see the same interference from other processes; report the medians."""
    register_all()
    rows = []
    for name, task in TASKS.items():
        rng = np.random.default_rng(seed)
        actions = rng.uniform(task.action_low, task.action_high, size=(steps, task.action_dim))
        envs = {"direct": ENV_CLASSES[name](), "gym_make": gym.make(task.env_id)}
        rates: dict[str, list[float]] = {k: [] for k in envs}
        for env in envs.values():
            env.reset(seed=seed)
            timed_steps(env, actions[: min(200, steps)])  # warm-up (first-step checks, caches)
            env.reset(seed=seed)
        for chunk in np.array_split(actions, blocks):
            for kind, env in envs.items():
                rates[kind].append(timed_steps(env, chunk))
        for env in envs.values():
            env.close()
        direct, wrapped = statistics.median(rates["direct"]), statistics.median(rates["gym_make"])
        rows.append(
            {
                "task": name,
                "env_id": task.env_id,
                "direct_steps_per_s": round(direct),
                "gym_make_steps_per_s": round(wrapped),
                "wrapper_overhead_us": round(1e6 / wrapped - 1e6 / direct, 1),
                "sim_seconds_per_s": round(direct * task.dt, 1),
                "target_steps_per_s": TARGETS[name],
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| task | env class (steps/s) | gymnasium.make (steps/s) | wrapper overhead (us/step) "
        "| sim time / wall time | target (steps/s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ok = (
            "ok"
            if min(r["direct_steps_per_s"], r["gym_make_steps_per_s"]) >= (r["target_steps_per_s"])
            else "MISSED"
        )
        lines.append(
            f"| {r['task']} | {r['direct_steps_per_s']:,} | {r['gym_make_steps_per_s']:,} | "
            f"{r['wrapper_overhead_us']} | {r['sim_seconds_per_s']:,}x | "
            f">= {r['target_steps_per_s']:,} ({ok}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the random actions")
    parser.add_argument("--steps", type=int, default=30_000, help="timed steps per task/variant")
    parser.add_argument("--blocks", type=int, default=10, help="blocks; the median is reported")
    args = parser.parse_args(argv)
    if args.steps < args.blocks or args.blocks < 1:
        parser.error("--steps must be at least --blocks, and --blocks at least 1")

    rows = run(args.seed, args.steps, args.blocks)
    config = {
        "seed": args.seed,
        "steps": args.steps,
        "blocks": args.blocks,
        "python": sys.version.split()[0],
        "mujoco": mujoco.__version__,
        "gymnasium": gym.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    text = table(rows)
    header = (
        f"# Environment speed\n\nRandom actions, seed {args.seed}, {args.steps:,} steps per task "
        f"and variant, median of {args.blocks} blocks; mujoco {mujoco.__version__}, "
        f"{os.cpu_count()} CPUs (load average at the end: "
        f"{', '.join(f'{x:.1f}' for x in config['load_average'] or [])}).\n\n"
    )
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "env_speed.md").write_text(header + text + "\n")
    (RESULTS / "env_speed.json").write_text(
        json.dumps({"config": config, "rows": rows}, indent=2) + "\n"
    )
    print(f"\nwrote {RESULTS / 'env_speed.md'} and {RESULTS / 'env_speed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
