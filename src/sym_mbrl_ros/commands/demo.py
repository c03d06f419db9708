"""sym-mbrl demo: a short random rollout of every task, with a picture of each."""

from __future__ import annotations

import json
import os
import pathlib

HELP = "run a short random rollout of each task and write a picture of each to a run folder"


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    parser.add_argument("--steps", type=int, default=50, help="random steps per task")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def run(args) -> int:
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    import numpy as np
    from PIL import Image

    from ..envs import TASKS

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(vars(args) | {"_run": None}, indent=2, default=str))
    for name, task in TASKS.items():
        env = task.make_env(render_mode="rgb_array")
        try:
            env.reset(seed=args.seed)
            env.action_space.seed(args.seed)
            total = 0.0
            for _ in range(args.steps):
                _, r, term, trunc, _ = env.step(env.action_space.sample())
                total += float(r)
                if term or trunc:
                    break
            frame = np.asarray(env.render())
        finally:
            env.close()
        path = out / f"{name}.png"
        Image.fromarray(frame).save(path)
        print(f"{name:<9} {args.steps} random steps, return {total:9.2f}  picture: {path}")
    print(f"pictures are in {out.resolve()}")
    return 0
