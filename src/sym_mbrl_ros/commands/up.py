"""sym-mbrl up TASK: start the task's ROS 2 graph and learn online until solved or out of budget.

The nodes run as separate processes (the installed executables, else ``python -m
sym_mbrl_ros.nodes.X``) with the parameter file and the per-run parameters the launch file
uses (``bringup.plan``); the recorder, learner and trainer are restarted if they die. ``--hardware``
is launch's ``use_sim:=false``: no sim bridge, a robot publishes the state. This
command watches the run folder, not the topics: it reads the transition store (read-only) for
episode returns and the model files for the equations, so it needs no ROS itself.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import UserError

HELP = "run the ROS 2 learning loop (sim bridge, recorder, learner, trainer, controller)"

MAX_RESTARTS = 3


def add_arguments(parser) -> None:
    parser.add_argument("task", help="task name (see `sym-mbrl tasks`)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every node (default 0)")
    parser.add_argument("--steps", type=int, default=None,
                        help="budget of real steps, per robot in a fleet (default: the task's, "
                             "3000 for pendulum)")
    parser.add_argument("--out", default=None,
                        help="run folder (default runs/TASK-<time>); an existing one is resumed")
    parser.add_argument("--hardware", action="store_true",
                        help="hardware mode (launch's use_sim:=false): no sim bridge, a robot "
                             "driver (or `sym-mbrl fake-hardware TASK`) publishes the state; "
                             "hold pairing, episodes are windows of the task's length, and the "
                             "controller waits inactive for the lifecycle `activate`")
    parser.add_argument("--activate", action="store_true",
                        help="with --hardware: activate the controller at start-up (unattended "
                             "runs)")
    parser.add_argument("--other-joints", default="",
                        help="comma-separated joints the robot publishes on /joint_states that "
                             "the task does not use (a JointState naming an unknown joint is "
                             "dropped)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="control ticks per control period of wall-clock time (default 1: "
                             "real time; simulation only)")
    parser.add_argument("--mode", choices=("lockstep", "realtime"), default="lockstep",
                        help="sim bridge mode (default lockstep)")
    parser.add_argument("--sync", type=float, default=None,
                        help="lockstep: the world waits while the policy trainer has done fewer "
                             "SAC updates than this per real step (default: the task's MBPO "
                             "preset, 20; 0: never wait), so the result does not depend on the "
                             "CPU")
    parser.add_argument("--target-return", type=float, default=None,
                        help="stop once the mean return of the last 3 episodes reaches this "
                             "(default: the task's)")
    parser.add_argument("--max-wall", type=float, default=900.0,
                        help="stop after this many seconds (default 900)")
    parser.add_argument("--param", action="append", metavar="NODE.NAME=VALUE",
                        help="set a node parameter for this run (repeatable), e.g. "
                             "policy_trainer.publish_every_s=2")
    parser.add_argument("--no-respawn", action="store_true",
                        help="do not restart the recorder, learner or trainer when one dies")
    parser.add_argument("--namespace", default="",
                        help="namespace of the graph (topics are relative: /NS/joint_states, "
                             "...); two runs in different namespaces share one DDS domain")
    parser.add_argument("--robots", type=int, default=0,
                        help="a fleet: N robots (namespaces robot1..robotN, each with its sim "
                             "bridge or hardware, recorder and controller) feeding one learner "
                             "and trainer; every robot gets the same models and policies "
                             "(default 0: one robot, no robot namespace)")
    parser.add_argument("--planner", action="store_true",
                        help="sym-mpc: every controller plans with the learner's newest model "
                             "(CEM) and no policy trainer runs (the world never waits: sync 0)")
    parser.add_argument("--domain-id", type=int, default=None,
                        help="ROS_DOMAIN_ID of the graph (default: the environment's)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")


def prepare(args) -> dict:
    """Check the options, write the run folder's ``params.yaml`` and ``config.json``; return
    the run's config (``commands`` per node, ``respawn`` names, ``out``...)."""
    from .. import bringup
    from ..envs import get_task

    task = get_task(args.task)
    graph = bringup.graph(task.name)
    share = bringup.share_dir()
    params_file = share / graph.config
    if not params_file.is_file():
        raise UserError(f"parameter file {params_file} is missing; reinstall the package")
    if args.speed <= 0:
        raise UserError("--speed must be positive")
    if args.hardware and args.speed != 1.0:
        raise UserError("--speed is for simulation: a robot runs in real time (leave it at 1)")
    if args.activate and not args.hardware:
        raise UserError("--activate is for --hardware (in simulation the controller starts "
                        "active)")
    steps = args.steps or graph.default_steps
    target = args.target_return if args.target_return is not None else graph.solved_return
    out = Path(args.out or f"runs/{task.name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)

    settings = bringup.RunSettings(
        run_dir=str(out), use_sim=not args.hardware, mode=args.mode, seed=args.seed,
        sync=args.sync, activate=True if args.activate else None,
        rate_hz=0.0 if args.speed == 1.0 else args.speed / task.dt,
        other_joints=tuple(j.strip() for j in args.other_joints.split(",") if j.strip()),
        respawn=not args.no_respawn, namespace=args.namespace, robots=args.robots,
        planner=args.planner)
    launches = bringup.plan(graph, settings)
    overrides = {n.key: dict(n.parameters) for n in launches}
    for item in args.param or []:
        for key, value in _parse_param(item, launches):
            overrides[key].update(value)
    run_params = out / "params.yaml"
    run_params.write_text(bringup.overrides_yaml({n.fqn: overrides[n.key] for n in launches}))
    commands = {n.key: bringup.node_command(n.spec, [params_file, run_params],
                                            namespace=n.namespace, remappings=n.remappings)
                for n in launches}
    controllers = [n.key for n in launches if n.spec.name == "controller"]
    sync = float(overrides[controllers[0]]["sync_updates_per_step"])
    robots = [n.robot for n in launches if n.spec.name == "recorder"]
    stores = {n.robot: overrides[n.key].get("store", "transitions.sqlite")
              for n in launches if n.spec.name == "recorder"}
    config = {
        "task": task.name, "seed": args.seed, "steps": steps, "speed": args.speed,
        "hardware": bool(args.hardware),
        "activate": bool(overrides[controllers[0]]["autostart"]),
        "namespace": bringup.absolute_namespace(args.namespace), "robots": robots,
        "stores": stores, "controllers": controllers,
        "mode": "hardware" if args.hardware else args.mode, "sync_updates_per_step": sync,
        "target_return": target, "max_wall_s": args.max_wall,
        "params_file": str(params_file), "params": params_file.read_text(),
        "overrides": overrides, "commands": commands,
        "respawn": [n.key for n in launches if n.respawn],
        "python": sys.version, "platform": platform.platform(),
        "ros_domain_id": os.environ.get("ROS_DOMAIN_ID", "0") if args.domain_id is None
        else args.domain_id,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    config["out"] = out
    return config


def run(args) -> int:
    from ..envs import get_task

    config = prepare(args)
    task = get_task(config["task"])
    out, steps, target, sync = (config["out"], config["steps"], config["target_return"],
                                config["sync_updates_per_step"])
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    where = ("hardware (no sim bridge: the robot publishes the state)" if args.hardware
             else f"{args.mode} at up to {args.speed:g}x real time")
    say(f"sym-mbrl up {task.name}: run folder {out}\n  budget {steps} steps, "
        f"target mean return {target}, {where}"
        + (f", waiting for {sync:g} SAC updates per step" if sync > 0 else ""))
    if len(config["robots"]) > 1:
        say(f"  a fleet of {len(config['robots'])} robots: {', '.join(config['robots'])}")
    if args.hardware and not config["activate"]:
        fqn = f"{config['namespace']}/{config['controllers'][0]}"
        ns, node = fqn.rsplit("/", 1)
        ns_flag = (f" --namespace {ns.strip('/')}" if ns.strip("/") else "") + (
            f" --node {node}" if node != "controller" else "")
        if args.domain_id is not None:
            ns_flag += f" --domain-id {args.domain_id}"
        say(f"  the controller is inactive: it acts only after `sym-mbrl controller activate"
            f"{ns_flag}` (or `ros2 lifecycle set {fqn} configure`, then `activate`; or run "
            "with --activate)")

    graph_run = _Graph(config["commands"], out / "logs", args.domain_id, config["respawn"])
    t0 = time.monotonic()
    watch = _Watch(out, task, target, steps, config["stores"])
    reason = "interrupted"
    try:
        graph_run.start()
        while True:
            time.sleep(0.5)
            for line in watch.poll():
                say(line)
            dead = graph_run.check()
            if dead:
                reason = f"node {dead} stopped; see {out / 'logs' / (dead + '.log')}"
                break
            if watch.solved:
                reason = "solved"
                break
            if watch.steps >= steps * max(1, len(config["robots"])):
                reason = "step budget used"
                break
            if time.monotonic() - t0 > args.max_wall:
                reason = "wall-clock limit"
                break
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        graph_run.stop()
    for line in watch.poll():
        say(line)
    wall = time.monotonic() - t0
    summary = watch.finish(reason, wall)
    summary["restarts"] = dict(graph_run.restarts)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{task.name}: {reason} after {summary['steps']} steps"
          + (f" ({', '.join(f'{r}: {n}' for r, n in summary['robot_steps'].items())})"
             if len(summary["robot_steps"]) > 1 else "") + f", {wall:.0f} s; "
          f"last returns {[round(r, 1) for r in summary['returns'][-3:]]}; "
          f"{summary['models']} models, {summary['policies']} policies -> {out}", flush=True)
    return 0 if reason in ("solved", "step budget used", "wall-clock limit") else 1


def _parse_param(item: str, launches) -> list[tuple[str, dict]]:
    """``NODE.NAME=VALUE`` → ``[(launch key, {NAME: value})]``: NODE is a node name (every
    robot's node of that name in a fleet) or a launch key (``robot2/controller``)."""
    import yaml

    key, sep, raw = item.partition("=")
    node, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise UserError(f"--param expects NODE.NAME=VALUE, got {item!r}")
    keys = [n.key for n in launches if node in (n.key, n.spec.name)]
    if not keys:
        raise UserError(f"--param: no node {node!r} in this graph; nodes: "
                        f"{', '.join(n.key for n in launches)}")
    value = yaml.safe_load(raw) if raw.strip() else ""
    if not isinstance(value, (str, int, float, bool)):
        value = raw
    return [(k, {name: value}) for k in keys]


class _Graph:
    """The node processes: start, watch (restarting learner-side nodes), stop."""

    def __init__(self, commands: dict[str, list[str]], logs: Path, domain_id: int | None,
                 respawn: list[str]):
        self.commands, self.logs, self.respawn = commands, logs, set(respawn)
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
        if domain_id is not None:
            self.env["ROS_DOMAIN_ID"] = str(domain_id)

    def _spawn(self, name: str) -> None:
        (self.logs / name).parent.mkdir(parents=True, exist_ok=True)  # robot1/controller
        log = open(self.logs / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(self.commands[name], stdout=log,
                                            stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True,
                                            preexec_fn=_terminate_with_parent)
        log.close()

    def start(self) -> None:
        for name in self.commands:
            self._spawn(name)

    def check(self) -> str | None:
        """The name of a node that stopped for good, else None (restarts what may restart)."""
        for name, proc in self.procs.items():
            if proc.poll() is None:
                continue
            if name in self.respawn and self.restarts.get(name, 0) < MAX_RESTARTS:
                self.restarts[name] = self.restarts.get(name, 0) + 1
                print(f"  {name} exited with code {proc.returncode}; restarting it "
                      f"({self.restarts[name]}/{MAX_RESTARTS})", flush=True)
                self._spawn(name)
                continue
            return name
        return None

    def stop(self) -> None:
        # the controllers first, all at once, so that each one's last command is its safe
        # command and every robot stops at the same moment
        for sig, wait in ((signal.SIGINT, 8.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
            alive = [n for n in self.procs if self.procs[n].poll() is None]
            if not alive:
                return
            first = [n for n in alive if n.endswith("controller")] if sig == signal.SIGINT \
                else []
            for group, limit in ((first, 2.0), ([n for n in alive if n not in first], wait)):
                for n in group:
                    try:
                        self.procs[n].send_signal(sig)
                    except ProcessLookupError:
                        pass
                end = time.monotonic() + limit
                for n in group:
                    _wait(self.procs[n], max(0.0, end - time.monotonic()))


def _terminate_with_parent() -> None:
    """In a node process before it starts: SIGTERM it when `up` dies, however it dies
    (kill -9 included), so that no node, and no controller commanding a robot, outlives the
    run (Linux; elsewhere `up` stops its nodes only when it exits normally)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _wait(proc: subprocess.Popen, timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


class _Watch:
    """Reads the run folder: episodes from the store(s), models and policies from their files.

    One store per robot (``stores``: robot → path in the run folder; one robot "" for a single
    graph). The stop rule, per robot: the mean return of its last 3 episodes reaches the
    target; for the run (the fleet): the mean of the last max(3, N) episodes of all N robots,
    in the order they ended, reaches it (a single robot: its last 3).
    """

    def __init__(self, out: Path, task, target: float | None, budget: int,
                 stores: dict[str, str] | None = None):
        self.out, self.task, self.target, self.budget = out, task, target, budget
        self.paths = {robot: out / rel for robot, rel in (stores or {"": "transitions.sqlite"}
                                                          ).items()}
        self.stores: dict[str, object] = {}
        self.robot_steps = dict.fromkeys(self.paths, 0)
        self.robot_seen = dict.fromkeys(self.paths, 0)  # newest episode id looked at
        self.robot_episode_steps = dict.fromkeys(self.paths, 0)  # steps in whole episodes
        self.robot_returns: dict[str, list[float]] = {r: [] for r in self.paths}
        self.robot_solved = dict.fromkeys(self.paths, False)
        self.window = max(3, len(self.paths))
        self.steps = 0
        self.episodes: list[tuple[str, int, float]] = []  # (robot, total steps, return)
        self.solved = False
        self.equations: list[str] = []
        self.model_version = 0
        self.policy_files: list[Path] = []

    def _open(self, robot: str):
        if robot not in self.stores:
            from ..data.store import TransitionStore

            try:
                self.stores[robot] = TransitionStore(self.paths[robot], readonly=True)
            except UserError:
                return None
        return self.stores[robot]

    def poll(self) -> list[str]:
        lines: list[str] = []
        for robot in self.paths:
            store = self._open(robot)
            if store is not None:
                self.robot_steps[robot] = store.count()
        self.steps = sum(self.robot_steps.values())
        for robot in self.paths:
            store = self.stores.get(robot)
            if store is not None:
                lines += self._episodes(robot, store)
        lines += self._models()
        self.policy_files = sorted((self.out / "policies").glob("policy_*.pt"))
        return lines

    def _episodes(self, robot: str, store) -> list[str]:
        lines = []
        for ep in store.episodes(since_id=self.robot_seen[robot]):
            if not ep.closed:
                break
            self.robot_seen[robot] = ep.id
            if ep.steps < self.task.max_episode_steps // 2:
                continue  # a fragment (start-up, restart): not an episode's return
            own = self.robot_returns[robot]
            own.append(ep.episode_return)
            self.robot_episode_steps[robot] += ep.steps
            # the fleet's steps in whole episodes when this one ended (one robot: its own)
            self.episodes.append((robot, sum(self.robot_episode_steps.values()),
                                  ep.episode_return))
            recent = [r for _, _, r in self.episodes[-self.window:]]
            mean = sum(recent) / len(recent)
            who = f" ({robot})" if robot else ""
            lines.append(f"episode {len(self.episodes):3d}{who}: return {ep.episode_return:9.1f}"
                         f"  (mean of last {len(recent)}: {mean:8.1f}; {self.steps} steps "
                         f"stored)")
            if self.target is None:
                continue
            if len(own) >= 3 and sum(own[-3:]) / 3 >= self.target:
                self.robot_solved[robot] = True
            if len(recent) == self.window and mean >= self.target:
                self.solved = True
        return lines

    def _models(self) -> list[str]:
        from ..bringup import latest_version

        version, path = latest_version(self.out / "models", "dynamics_", ".json")
        if version <= self.model_version or path is None:
            return []
        self.model_version = version
        from ..dynamics.symbolic import SymbolicDynamics

        try:
            model = SymbolicDynamics.load(path)
        except UserError:
            return []
        equations = model.equations()
        if equations == self.equations:
            return []
        self.equations = equations
        r2 = model.provenance.get("heldout_r2", {})
        head = f"model v{version}: held-out R² " + ", ".join(f"{k} {v:.4f}" for k, v in r2.items())
        return [head] + [f"    {e}" for e in equations]

    def finish(self, reason: str, wall: float) -> dict:
        import shutil

        if self.policy_files:
            shutil.copyfile(self.policy_files[-1], self.out / "policy.pt")
        models = sorted((self.out / "models").glob("dynamics_*.json"))
        if models:
            shutil.copyfile(models[-1], self.out / "model.json")
        self._plot()
        returns = [r for _, _, r in self.episodes]
        for store in self.stores.values():
            store.close()
        return {
            "task": self.task.name, "reason": reason, "solved": self.solved,
            "steps": self.steps, "wall_s": round(wall, 1), "returns": returns,
            "episode_end_steps": [s for _, s, _ in self.episodes],
            "episode_robots": [r for r, _, _ in self.episodes],
            "robot_steps": dict(self.robot_steps), "robot_returns": self.robot_returns,
            "robot_solved": self.robot_solved, "solve_window": self.window,
            "target_return": self.target, "models": len(models),
            "policies": len(self.policy_files), "equations": self.equations,
        }

    def _plot(self) -> None:
        if not self.episodes:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([s for _, s, _ in self.episodes], [r for _, _, r in self.episodes], "o-",
                label="episode return")
        if self.target is not None:
            ax.axhline(self.target, color="k", ls="--", lw=1, label=f"target {self.target:g}")
        ax.set_xlabel("real steps")
        ax.set_ylabel("return")
        ax.set_title(f"sym-mbrl up {self.task.name}")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(self.out / "curve.png", dpi=100)
        plt.close(fig)
