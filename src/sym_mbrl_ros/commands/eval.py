"""sym-mbrl eval: replay a trained controller on its task and print the mean return.

SAC/MBPO runs replay ``policy.pt``; ESPL runs first the exported formula (``policy.json``,
evaluated in numpy) and then the network; sym-mpc runs rebuild the planner on ``model.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError

HELP = "replay the policy of a training run and print its mean return (--gif: an animation)"


def add_arguments(parser) -> None:
    parser.add_argument("run", help="run folder written by `sym-mbrl train`")
    parser.add_argument("--episodes", type=int, default=5, help="episodes (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument(
        "--gif", nargs="?", const="", default=None, metavar="PATH",
        help="also write an animation of the first episode (default RUN/episode.gif)",
    )
    parser.add_argument("--fps", type=int, default=None, help="GIF frame rate (default 1/dt)")


def run(args) -> int:
    run_dir = Path(args.run)
    config_path = run_dir / "config.json"
    if args.episodes <= 0:
        raise UserError("--episodes must be positive")
    if not config_path.exists():
        raise UserError(
            f"{run_dir} is not a training run (it has no config.json); "
            f"train one with `sym-mbrl train TASK --out {run_dir}`"
        )
    try:
        config = json.loads(config_path.read_text())
        task_name = config["task"]
    except (ValueError, KeyError) as exc:
        raise UserError(f"{config_path} is not a run configuration ({exc})") from None

    from ..agents.evaluation import Evaluator
    from ..envs import get_task

    task = get_task(task_name)
    controllers = load_controllers(run_dir, config, task, args.seed)
    evaluator = Evaluator(task, args.episodes, seed=args.seed)
    try:
        for name, controller in controllers:
            if hasattr(controller, "reset"):
                controller.reset()
            result = evaluator(controller)
            line = (
                f"{task.name} ({name}): mean return {result.mean:.1f} ± {result.std:.1f} over "
                f"{args.episodes} episodes"
            )
            if result.success_rate is not None:
                line += f", success {100 * result.success_rate:.0f}%"
            print(line)
    finally:
        evaluator.close()
    if args.gif is not None:
        name, controller = controllers[0]
        if hasattr(controller, "reset"):
            controller.reset()
        path = Path(args.gif) if args.gif else run_dir / "episode.gif"
        ret = write_gif(task, controller, path, seed=args.seed, fps=args.fps)
        print(f"animation of one episode ({name}, return {ret:.1f}) written to {path}")
    return 0


def load_controllers(run_dir: Path, config: dict, task, seed: int) -> list[tuple[str, object]]:
    """What a run folder can replay, first the one the run is about:

    * sym-mpc: the planner (its settings from ``config.json``) on ``model.json``;
    * an ESPL run: the exported formula (``policy.json``, in numpy), then the network;
    * otherwise the SAC agent of ``policy.pt``.
    """
    if config.get("algo") == "sym-mpc":
        from ..agents.mpc import MPCConfig, MPCController
        from ..dynamics.symbolic import SymbolicDynamics

        model_path = run_dir / "model.json"
        if not model_path.exists():
            raise UserError(f"{run_dir} is a sym-mpc run without model.json; it did not finish")
        mpc_config = MPCConfig.from_dict(config.get("config", {}))
        controller = MPCController(task, SymbolicDynamics.load(model_path), mpc_config, seed)
        return [("sym-mpc planner", controller)]
    policy_path = run_dir / "policy.pt"
    if not policy_path.exists():
        raise UserError(
            f"{run_dir} is not a finished training run (it needs config.json and policy.pt); "
            f"train one with `sym-mbrl train TASK --out {run_dir}`"
        )
    from ..agents.sac import SAC

    out: list[tuple[str, object]] = []
    if (run_dir / "policy.json").exists():
        from ..agents.espl import FormulaPolicy

        out.append(("formula, numpy", FormulaPolicy.load(run_dir / "policy.json")))
    agent = SAC.load(policy_path)
    from ..agents.espl import ESPLActor
    from ..agents.sac import base_actor

    if isinstance(base_actor(agent.actor), ESPLActor):
        out.append(("pruned network", _Pruned(agent)))  # the network the formula came from
    else:
        out.append(("policy", agent))
    return out


class _Pruned:
    """An ESPL agent acting with its pruned network (the paths the formula keeps)."""

    def __init__(self, agent):
        from ..agents.sac import base_actor

        self.agent = agent
        self.actor = base_actor(agent.actor)  # the ESPL actor inside any input selection

    def predict(self, obs, deterministic: bool = True):
        with self.actor.pruned():
            return self.agent.predict(obs, deterministic=True)


def write_gif(task, agent, path: Path, seed: int = 0, fps: int | None = None) -> float:
    """Render one deterministic episode offscreen and save it as an animated GIF."""
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    import numpy as np
    from PIL import Image

    env = task.make_env(render_mode="rgb_array", width=320, height=240)
    frames, total = [], 0.0
    try:
        obs, _ = env.reset(seed=seed)
        frames.append(Image.fromarray(np.asarray(env.render())))
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.predict(obs))
            total += float(reward)
            done = terminated or truncated
            frames.append(Image.fromarray(np.asarray(env.render())))
    finally:
        env.close()
    fps = fps or max(1, round(1.0 / task.dt))
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(
        path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0
    )
    return total
