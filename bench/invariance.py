"""Invariant coordinates: does the car2d model hold where the car has not been yet?

A learner's data is not random: a car that drives to targets visits places in an order, and
near the origin its position correlates with its heading, speed and steering. Sparse
regression then picks up position terms (``x**2`` in the yaw rate) that fit there and are wrong
elsewhere. ``TaskSpec.invariant_coords`` (Car2d: x, y) forbids them.

Data: ``--episodes`` Car2d episodes driven by a noisy pursuit controller (head for the target,
reverse when it is behind, slow down near it; Gaussian noise on both commands). Fitted on the
transitions within ``--near`` m of the origin, scored on those farther than ``--far`` m: R² of
the increment of every changing coordinate, for the sparse backend with and without the
invariance, and pysindy (the external anchor) on the same rows.

    python bench/invariance.py --seed 0

    python bench/invariance.py --data bench/results/runs/car2d/sym-mpc-s0/transitions.npz

Writes bench/results/invariance.md and .json (with ``--data``, invariance_<run folder>.*).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def pursuit(obs: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Head for the target (reverse when it is behind), slower when close, plus noise."""
    dxb, dyb = obs[9], obs[10]
    alpha = math.atan2(dyb, dxb)
    speed = min(1.0, 1.2 * math.hypot(dxb, dyb))
    if abs(alpha) <= math.pi / 2:
        action = np.array([speed * max(math.cos(alpha), 0.3), np.clip(3 * alpha, -1, 1)])
    else:
        behind = (alpha + 2 * math.pi) % (2 * math.pi) - math.pi
        action = np.array([-speed * max(abs(math.cos(alpha)), 0.3), np.clip(-3 * behind, -1, 1)])
    return np.clip(action + noise * rng.normal(size=2), -1.0, 1.0)


def record(episodes: int, seed: int, noise: float) -> tuple[np.ndarray, ...]:
    from sym_mbrl_ros.envs import get_task

    task = get_task("car2d")
    env = task.make_env()
    rng = np.random.default_rng(seed)
    s, a, s2 = [], [], []
    for ep in range(episodes):
        obs, info = env.reset(seed=seed + ep)
        state = info["state"]
        for _ in range(task.max_episode_steps):
            action = pursuit(obs, rng, noise)
            obs, _, _, _, info = env.step(action)
            s.append(state)
            a.append(action)
            s2.append(info["state"])
            state = info["state"]
    env.close()
    return np.array(s), np.array(a), np.array(s2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--noise", type=float, default=0.3, help="std of the command noise")
    p.add_argument("--data", default=None,
                   help="a transitions file (e.g. a sym-mpc run's transitions.npz) instead of "
                        "the pursuit episodes")
    p.add_argument("--near", type=float, default=0.7, help="fit within this distance (m)")
    p.add_argument("--far", type=float, default=1.0, help="score beyond this distance (m)")
    args = p.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    # the same pysindy set-up and R² as bench/dynamics.py
    from dynamics import Fitted, System, fit_sindy, r2_per_coordinate

    from sym_mbrl_ros.dynamics import SymbolicDynamics
    from sym_mbrl_ros.envs import get_task

    task = get_task("car2d")
    if args.data:
        from sym_mbrl_ros.data.transitions import load_transitions

        data = load_transitions(args.data)
        s, a, s2 = data.states, data.actions, data.next_states
        source = f"the transitions in `{args.data}`"
    else:
        s, a, s2 = record(args.episodes, args.seed, args.noise)
        source = f"{args.episodes} Car2d episodes of a pursuit controller with noise {args.noise}"
    r = np.hypot(s[:, 0], s[:, 1])
    near, far = r < args.near, r >= args.far
    train = {"states": s[near], "actions": a[near], "next_states": s2[near]}
    test = {"states": s[far], "actions": a[far], "next_states": s2[far]}
    rows: dict[str, dict] = {}
    system = System("car2d", task.state_names, task.action_names, task.angle_coords,
                    task.static_coords, task.dt, train, test, {}, {})

    def r2(fitted: Fitted) -> dict[str, float]:
        scores = r2_per_coordinate(system, fitted, test)
        return {task.state_names[i]: value for i, value in scores.items()}

    for name, invariant in (("sparse (x, y invariant)", task.invariant_coords),
                            ("sparse, no invariance", ())):
        t0 = time.perf_counter()
        model = SymbolicDynamics.for_task(task, seed=args.seed, invariant_coords=invariant)
        model.fit(train["states"], train["actions"], train["next_states"])
        seconds = time.perf_counter() - t0
        rows[name] = {"r2": r2(Fitted(model.predict, seconds, {})), "fit_s": seconds,
                      "equations": model.equations()}
    fitted = fit_sindy(system, train, args.seed)
    rows["pysindy"] = {"r2": r2(fitted), "fit_s": fitted.seconds}

    names = [task.state_names[i] for i in system.dynamic]
    lines = [
        "# Extrapolation in position (invariant coordinates)",
        "",
        f"`python bench/invariance.py {' '.join(argv if argv is not None else sys.argv[1:])}`: "
        f"{source}; fitted on the {int(near.sum())} transitions within {args.near} m of the "
        "origin, "
        f"R² of the increment on the {int(far.sum())} beyond {args.far} m.",
        "",
        "| model | " + " | ".join(names) + " | fit s |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for name, row in rows.items():
        cells = [f"{row['r2'][n]:.6f}" for n in names]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['fit_s']:.1f} |")
    lines += ["", "Equations with the invariance:", "", "```"]
    lines += rows["sparse (x, y invariant)"]["equations"] + ["```", "", "Without it:", "", "```"]
    lines += rows["sparse, no invariance"]["equations"] + ["```", ""]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "invariance" if not args.data else "invariance_" + Path(args.data).parent.name
    (RESULTS / f"{stem}.md").write_text(text)
    (RESULTS / f"{stem}.json").write_text(
        json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
