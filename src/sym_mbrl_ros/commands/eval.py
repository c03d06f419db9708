"""sym-mbrl eval: replay a trained controller on its task and print the mean return.

SAC/MBPO runs replay ``policy.pt``; ESPL runs first the exported formula (``policy.json``,
evaluated in numpy) and then the network; sym-mpc runs rebuild the planner on ``model.json``.

``--policy-message FILE.json`` replays a policy message instead (what the policy trainer
publishes on ``sym_mbrl/policy``: the weights travel in it), and ``--policy-message BAG``
the newest (or ``--version``) policy recorded in a rosbag2 bag, from any machine: nothing of
the run folder that trained it is needed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError

HELP = "replay the policy of a training run and print its mean return (--gif: an animation)"


def add_arguments(parser) -> None:
    parser.add_argument("run", nargs="?", default=None,
                        help="run folder written by `sym-mbrl train` (or use --policy-message)")
    parser.add_argument("--policy-message", default=None, metavar="FILE.json|BAG",
                        help="replay a policy message: a JSON file holding one, or a rosbag2 "
                             "bag that recorded the policy topic")
    parser.add_argument("--topic", default=None,
                        help="with a bag: the policy topic (default: the one topic whose name "
                             "ends in sym_mbrl/policy)")
    parser.add_argument("--version", type=int, default=None,
                        help="with a bag: the policy version to replay (default: the newest)")
    parser.add_argument("--task", default=None,
                        help="with --policy-message: the task (default: the message's)")
    parser.add_argument("--episodes", type=int, default=5, help="episodes (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument(
        "--gif", nargs="?", const="", default=None, metavar="PATH",
        help="also write an animation of the first episode (default RUN/episode.gif)",
    )
    parser.add_argument("--fps", type=int, default=None, help="GIF frame rate (default 1/dt)")


def run(args) -> int:
    if args.episodes <= 0:
        raise UserError("--episodes must be positive")
    if args.policy_message is not None:
        if args.run is not None:
            raise UserError("give either a run folder or --policy-message, not both")
        return _replay(args, *message_controller(args.policy_message, args.task, args.topic,
                                                 args.version), Path(args.policy_message))
    if args.run is None:
        raise UserError("give a run folder (sym-mbrl eval RUN) or --policy-message FILE|BAG")
    run_dir = Path(args.run)
    config_path = run_dir / "config.json"
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

    from ..envs import get_task

    task = get_task(task_name)
    controllers = load_controllers(run_dir, config, task, args.seed)
    return _replay(args, task, controllers, run_dir)


def _replay(args, task, controllers: list[tuple[str, object]], where: Path) -> int:
    from ..agents.evaluation import Evaluator

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
        folder = where if where.is_dir() else where.parent
        path = Path(args.gif) if args.gif else folder / "episode.gif"
        ret = write_gif(task, controller, path, seed=args.seed, fps=args.fps)
        print(f"animation of one episode ({name}, return {ret:.1f}) written to {path}")
    return 0


POLICY_TYPE = "std_msgs/msg/String"


def message_controller(source: str | Path, task_name: str | None = None,
                       topic: str | None = None, version: int | None = None):
    """The task and ``[(name, controller)]`` of a policy message in a JSON file or a bag."""
    from ..envs import get_task
    from ..nodes.policies import PolicyError, actor_from_message, parse_policy_message

    source = Path(source)
    if not source.exists():
        raise UserError(f"{source} does not exist; give a policy message file (.json) or a bag")
    if source.is_file() and source.suffix == ".json":
        text, where = source.read_text(), str(source)
    else:
        text, where = _policy_from_bag(source, topic, version)
    try:
        msg = parse_policy_message(text)
        task = get_task(task_name or msg.get("task") or "")
        actor, msg = actor_from_message(text, task)
    except PolicyError as exc:
        raise UserError(f"{where}: {exc}") from None
    return task, [(f"{msg['kind']} policy v{msg.get('version')} from {where}", actor)]


def _policy_from_bag(bag: Path, topic: str | None, version: int | None) -> tuple[str, str]:
    """The text of one policy message in a bag: ``version``'s, else the newest."""
    from .import_bag import read_bag

    if topic is None:
        types = read_bag(bag, {}).types
        found = [t for t, kind in types.items()
                 if t.rstrip("/").endswith("sym_mbrl/policy") and kind == POLICY_TYPE]
        if len(found) != 1:
            raise UserError(f"{bag} has {len(found)} policy topics ({', '.join(found) or 'none'}"
                            f" among {', '.join(sorted(types)) or 'no topics'}); name one with "
                            f"--topic")
        topic = found[0]
    messages = read_bag(bag, {topic: (POLICY_TYPE,)}).messages[topic]
    if not messages:
        raise UserError(f"{bag} holds no std_msgs/String message on {topic}")
    versions = []
    for _, msg in messages:
        try:
            versions.append(int(json.loads(msg.data).get("version", -1)))
        except (ValueError, AttributeError, TypeError):
            versions.append(-1)
    if version is None:
        i = len(messages) - 1
    elif version in versions:
        i = len(versions) - 1 - versions[::-1].index(version)
    else:
        raise UserError(f"{bag} has no policy version {version} on {topic}; it has "
                        f"{sorted(set(v for v in versions if v >= 0))}")
    return messages[i][1].data, f"{bag}:{topic} (message {i + 1} of {len(messages)})"


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
