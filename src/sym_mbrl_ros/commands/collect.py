"""sym-mbrl collect: record transitions of a task into a transitions file."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from ..errors import UserError

HELP = "record transitions of a task with a random policy into a transitions file (.npz)"
POLICIES = ("random",)


def add_arguments(parser) -> None:
    parser.add_argument("task", help="task name (see `sym-mbrl tasks`)")
    parser.add_argument(
        "--steps", type=int, default=1000, help="transitions to record (default 1000)"
    )
    parser.add_argument(
        "--policy",
        default="random",
        choices=POLICIES,
        help="how actions are chosen (default random: uniform in the action box)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the environment and the policy"
    )
    parser.add_argument(
        "--out", default="data.npz", help="transitions file to write (default data.npz)"
    )


def collect_random(task, steps: int, seed: int) -> dict:
    """``steps`` transitions of ``task`` under uniformly random actions, episode by episode."""
    import numpy as np

    env = task.make_env()
    try:
        env.action_space.seed(seed)
        states, actions, next_states, episode = [], [], [], []
        obs, info = env.reset(seed=seed)
        state = _state(task, obs, info)
        ep = 0
        for _ in range(steps):
            action = np.asarray(env.action_space.sample(), dtype=np.float64)
            obs, _, terminated, truncated, info = env.step(action)
            nxt = _state(task, obs, info)
            states.append(state)
            actions.append(np.clip(action, task.action_low, task.action_high))
            next_states.append(nxt)
            episode.append(ep)
            state = nxt
            if terminated or truncated:
                ep += 1
                obs, info = env.reset()
                state = _state(task, obs, info)
    finally:
        env.close()
    return {
        "states": np.asarray(states),
        "actions": np.asarray(actions),
        "next_states": np.asarray(next_states),
        "episode": np.asarray(episode),
        "n_episodes": ep + (1 if steps and (not episode or episode[-1] == ep) else 0),
    }


def _state(task, obs, info):
    import numpy as np

    state = info.get("state") if isinstance(info, dict) else None
    if state is None:  # an environment without the observer state in info: use the observer
        state = task.observe(np.asarray(obs, dtype=np.float64)[None])[0]
    return np.asarray(state, dtype=np.float64).copy()


def run(args) -> int:
    from ..data.transitions import save_transitions
    from ..envs import get_task

    task = get_task(args.task)
    if args.steps <= 0:
        raise UserError(f"--steps must be a positive number of transitions, got {args.steps}")
    out = Path(args.out)
    if out.suffix != ".npz":
        raise UserError(f"--out must name an .npz file, got {args.out}")
    t0 = time.perf_counter()
    data = collect_random(task, args.steps, args.seed)
    path = save_transitions(
        out,
        data["states"],
        data["actions"],
        data["next_states"],
        state_names=task.state_names,
        action_names=task.action_names,
        dt=task.dt,
        episode=data["episode"],
        angle_coords=task.angle_coords,
        static_coords=task.static_coords,
    )
    config = {
        "command": "sym-mbrl " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        if sys.argv[1:2] == ["collect"]
        else None,
        "task": task.name,
        "steps": args.steps,
        "policy": args.policy,
        "seed": args.seed,
        "episodes": int(data["n_episodes"]),
        "dt": task.dt,
        "state_names": list(task.state_names),
        "action_names": list(task.action_names),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    config_path = path.with_suffix(".json")
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    print(
        f"recorded {args.steps} transitions of {task.name} ({config['episodes']} episodes, "
        f"{args.policy} policy, seed {args.seed}) -> {path}  (config: {config_path})"
    )
    return 0
