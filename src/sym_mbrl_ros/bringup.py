"""Each task's node graph and a run's parameters, described once (no ROS imports here).

``launch/sym_mbrl.launch.py`` and ``sym-mbrl up TASK`` both call :func:`plan`, so they start
the same executables with the same parameter file, the same per-run parameters
(:func:`run_parameters`) and the same remappings::

    sim_bridge ──/joint_states|odom, /sym_mbrl/target, /sym_mbrl/episode──► recorder, controller
    controller ──/<controller>/commands | cmd_vel──► sim_bridge (or the robot), recorder
    recorder ──SQLite store──► dynamics_learner ──/sym_mbrl/dynamics_model──► policy_trainer
    policy_trainer ──/sym_mbrl/policy──► controller

Paths (``config``, ``urdf``) are relative to the package's share directory, which is the
source checkout or ``<prefix>/share/sym_mbrl_ros`` once installed (:func:`share_dir`).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

PACKAGE = "sym_mbrl_ros"


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph."""

    name: str
    """Node name; also its section in ``config/TASK.yaml``."""
    executable: str
    """Console script installed to ``lib/sym_mbrl_ros`` (``setup.py``'s NODES)."""
    sim_only: bool = False
    """Started only with ``use_sim:=true`` (a real robot publishes these topics itself)."""
    lifecycle: bool = False
    """A managed (lifecycle) node."""
    remappings: tuple[tuple[str, str], ...] = ()
    """``(from, to)`` topic remappings."""
    respawn: bool = False
    """Restarted when it dies (it resumes from the run folder; the controller keeps acting)."""

    @property
    def module(self) -> str:
        """The module ``python -m`` runs when the executable is not installed."""
        return f"{PACKAGE}.nodes.{self.executable}"


@dataclass(frozen=True)
class TaskGraph:
    """A task's graph: its nodes, parameter file and robot description."""

    task: str
    nodes: tuple[NodeSpec, ...]
    config: str
    """Parameter file (ros__parameters per node name), relative to the share directory."""
    urdf: str
    """Robot description for robot_state_publisher, relative to the share directory."""
    solved_return: float | None = None
    """``sym-mbrl up`` stops once the mean return of the last 3 episodes reaches this."""
    default_steps: int = 3000
    """``sym-mbrl up``'s default budget of real steps."""
    rviz: str = "config/sym_mbrl.rviz"
    seeded: tuple[str, ...] = field(default=("sim_bridge", "controller", "dynamics_learner",
                                             "policy_trainer"))
    """Nodes with a ``seed`` parameter."""

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def _nodes(*extra_remaps: tuple[str, str]) -> tuple[NodeSpec, ...]:
    # Learner-side nodes start first: they take longest to import and must not miss data.
    return (
        NodeSpec("recorder", "recorder", respawn=True),
        NodeSpec("dynamics_learner", "dynamics_learner", respawn=True),
        NodeSpec("policy_trainer", "policy_trainer", respawn=True),
        NodeSpec("sim_bridge", "sim_bridge", sim_only=True, remappings=extra_remaps),
        NodeSpec("controller", "controller", lifecycle=True, remappings=extra_remaps),
    )


FAKE_HARDWARE = NodeSpec("fake_hardware", "fake_hardware")
"""The stand-in robot (``sym-mbrl fake-hardware TASK``): not part of any graph, it replaces
the robot that hardware mode expects."""

GRAPHS: dict[str, TaskGraph] = {
    "pendulum": TaskGraph("pendulum", _nodes(), "config/pendulum.yaml", "urdf/pendulum.urdf",
                          solved_return=-200.0, default_steps=3000),
    "reacher": TaskGraph("reacher", _nodes(), "config/reacher.yaml", "urdf/reacher.urdf",
                         solved_return=-2.5, default_steps=5000),
    "car2d": TaskGraph("car2d", _nodes(), "config/car2d.yaml", "urdf/car2d.urdf",
                       solved_return=-45.0, default_steps=5000),
    # solved episodes score about 80-86; 75 is above an 80 %-success run's ~66
    "cartpole": TaskGraph("cartpole", _nodes(), "config/cartpole.yaml", "urdf/cartpole.urdf",
                          solved_return=75.0, default_steps=4000),
}


def graph(task: str) -> TaskGraph:
    """The graph of ``task``; a clear error for an unknown name."""
    try:
        return GRAPHS[task]
    except KeyError:
        raise UserError(f"no node graph for task {task!r}; choose one of: "
                        f"{', '.join(GRAPHS)}") from None


def share_dir() -> Path:
    """Where config/, urdf/ and launch/ are: the source checkout, else the install prefix."""
    source = Path(__file__).resolve().parents[2]
    if (source / "config").is_dir() and (source / "package.xml").is_file():
        return source
    installed = Path(sys.prefix) / "share" / PACKAGE
    if installed.is_dir():
        return installed
    raise UserError(f"cannot find the {PACKAGE} share directory (config/, urdf/); install the "
                    f"package or run from its source checkout")


def executable_path(spec: NodeSpec, prefix: str | Path | None = None) -> Path:
    """Where the installed executable of ``spec`` lives (``<prefix>/lib/sym_mbrl_ros/X``)."""
    return Path(prefix or sys.prefix) / "lib" / PACKAGE / spec.executable


def node_command(spec: NodeSpec, params_files: list[str | Path],
                 python: str | None = None, namespace: str = "") -> list[str]:
    """The command line that starts ``spec``: the installed executable, else ``python -m``.

    Later parameter files override earlier ones (a run's overrides go last). They are files,
    not ``-p``: a ``-p`` value is node-agnostic and loses to a node's own YAML section.
    """
    exe = executable_path(spec)
    cmd = [str(exe)] if exe.is_file() else [python or sys.executable, "-m", spec.module]
    cmd += ["--ros-args", "-r", f"__node:={spec.name}"]
    if namespace.strip("/"):
        cmd += ["-r", f"__ns:=/{namespace.strip('/')}"]
    for f in params_files:
        cmd += ["--params-file", str(f)]
    for src, dst in spec.remappings:
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


def overrides_yaml(overrides: dict[str, dict[str, object]]) -> str:
    """A parameter file with ``ros__parameters`` per node name (values: str, number, bool)."""
    lines = ["# written by sym-mbrl up: this run's parameters over config/TASK.yaml"]
    for node, params in overrides.items():
        lines += [f"{node}:", "  ros__parameters:"]
        lines += [f"    {k}: {_yaml_value(v)}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def _yaml_value(value: object) -> str:
    import json

    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a valid YAML string


@dataclass(frozen=True)
class RunSettings:
    """What one run sets over ``config/TASK.yaml``: ``up``'s options and the launch arguments."""

    run_dir: str
    """Absolute run folder (store, models, policies)."""
    use_sim: bool = True
    """Start the sim bridge; False is hardware mode (a robot driver publishes the state)."""
    mode: str = "lockstep"
    """Sim bridge mode: lockstep or realtime (simulation only)."""
    seed: int | None = None
    """Seed of every seeded node; None keeps the parameter file's."""
    sync: float | None = None
    """Controller's ``sync_updates_per_step``; None: the task's MBPO preset in lockstep
    simulation, 0 otherwise (a robot never waits for the trainer)."""
    activate: bool | None = None
    """Controller ``autostart``; None: active at once in simulation, inactive on hardware
    (until the lifecycle ``activate``)."""
    rate_hz: float = 0.0
    """Controller loop rate; 0: the task's control period."""
    use_sim_time: bool = False
    """Every node's ``use_sim_time`` (states are stamped with the system clock: keep False)."""
    other_joints: tuple[str, ...] = ()
    """Joints the robot publishes that the task does not use (over the file's list)."""
    respawn: bool = True
    """Restart the nodes marked ``respawn`` (recorder, learner, trainer) when they die."""


@dataclass(frozen=True)
class NodeLaunch:
    """One process a run starts: the node, its parameters over the task's file, respawn."""

    spec: NodeSpec
    parameters: dict[str, object]
    respawn: bool


def default_sync(task: str, settings: RunSettings) -> float:
    """SAC updates per real step the lockstep world waits for (see ``RunSettings.sync``)."""
    if settings.sync is not None:
        return float(settings.sync)
    if not settings.use_sim or settings.mode != "lockstep":
        return 0.0
    from .agents.presets import make_config

    return float(make_config("sym-mbpo", task).updates_per_step)


def run_parameters(task_graph: TaskGraph, settings: RunSettings) -> dict[str, dict[str, object]]:
    """Per node, the parameters a run sets over the task's parameter file.

    Hardware mode (``use_sim`` False): no sim bridge, the recorder pairs by ``hold`` (the
    command is in force until the next; episodes are windows of the task's length on a
    continuing robot), the controller never waits for the trainer and starts inactive unless
    ``activate`` is set.
    """
    if settings.mode not in ("lockstep", "realtime"):
        raise UserError(f"sim bridge mode must be lockstep or realtime, not {settings.mode!r}")
    sync = default_sync(task_graph.task, settings)
    if sync > 0 and not (settings.use_sim and settings.mode == "lockstep"):
        raise UserError("sync (waiting for the trainer) needs the lockstep simulation: a robot "
                        "or a world in real time cannot wait; set it to 0")
    if not os.path.isabs(settings.run_dir):
        raise UserError(f"run_dir must be an absolute path, got {settings.run_dir!r}")
    params: dict[str, dict[str, object]] = {}
    for spec in task_graph.nodes:
        if spec.sim_only and not settings.use_sim:
            continue
        p: dict[str, object] = {"run_dir": settings.run_dir,
                                "use_sim_time": settings.use_sim_time}
        if settings.other_joints:
            p["other_joints"] = list(settings.other_joints)
        if settings.seed is not None and spec.name in task_graph.seeded:
            p["seed"] = int(settings.seed)
        params[spec.name] = p
    if settings.use_sim:
        params["sim_bridge"]["mode"] = settings.mode
    else:
        params["recorder"]["pairing"] = "hold"
    controller = params["controller"]
    if not settings.use_sim:  # the kick commands zero before any state: never on a robot
        controller["lockstep_kick"] = False
    controller["rate_hz"] = float(settings.rate_hz)
    controller["sync_updates_per_step"] = sync
    controller["autostart"] = (settings.use_sim if settings.activate is None
                               else bool(settings.activate))
    return params


def plan(task_graph: TaskGraph, settings: RunSettings) -> list[NodeLaunch]:
    """The processes a run starts, in start order (what ``up`` and the launch file start)."""
    params = run_parameters(task_graph, settings)
    return [NodeLaunch(spec, params[spec.name], settings.respawn and spec.respawn)
            for spec in task_graph.nodes if spec.name in params]


def default_run_dir(task: str, stamp: str | None = None) -> str:
    """An absolute run folder for the launch route: ``$ROS_HOME/sym_mbrl/runs/TASK-<time>``
    (``~/.ros`` without ``ROS_HOME``)."""
    import time

    home = os.environ.get("ROS_HOME") or os.path.join(os.path.expanduser("~"), ".ros")
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    return os.path.abspath(os.path.join(home, "sym_mbrl", "runs", f"{task}-{stamp}"))


LAUNCH_ARGUMENTS: tuple[tuple[str, str, str], ...] = (
    ("task", "pendulum", "task name (see `sym-mbrl tasks`)"),
    ("use_sim", "true", "start the MuJoCo sim bridge; false: hardware mode, a robot driver "
                        "publishes the state (sym-mbrl up --hardware)"),
    ("params_file", "", "parameter file; empty: the package's config/TASK.yaml"),
    ("namespace", "", "namespace of every node"),
    ("use_sim_time", "false", "use_sim_time of every node (states carry system-clock stamps)"),
    ("run_dir", "", "absolute run folder; empty: $ROS_HOME/sym_mbrl/runs/TASK-<time> "
                    "(~/.ros without ROS_HOME)"),
    ("rviz", "false", "start rviz2"),
    ("mode", "lockstep", "sim bridge mode: lockstep or realtime"),
    ("sync", "", "controller sync_updates_per_step; empty: the MBPO preset's in lockstep "
                 "simulation, 0 otherwise"),
    ("activate", "", "controller autostart; empty: true in simulation, false on hardware "
                     "(then: ros2 lifecycle set /controller configure, then activate)"),
    ("seed", "", "seed of every seeded node; empty: the parameter file's"),
    ("other_joints", "", "comma-separated joints the robot publishes that the task ignores"),
    ("respawn", "true", "restart the recorder, learner and trainer when they die"),
)
"""``ros2 launch sym_mbrl_ros sym_mbrl.launch.py`` arguments: (name, default, description)."""


@dataclass(frozen=True)
class LaunchRun:
    """What the launch file starts, decided from its arguments (all strings)."""

    graph: TaskGraph
    params_file: str
    namespace: str
    settings: RunSettings
    rviz: bool
    nodes: tuple[NodeLaunch, ...]


def launch_run(arguments: dict[str, str], share: str | Path | None = None) -> LaunchRun:
    """The launch file's plan from its argument values (defaults from LAUNCH_ARGUMENTS)."""
    a = {name: default for name, default, _ in LAUNCH_ARGUMENTS}
    a.update({k: v for k, v in arguments.items() if v is not None})
    task_graph = graph(a["task"])
    share = Path(share) if share is not None else share_dir()
    params_file = a["params_file"] or str(share / task_graph.config)
    settings = RunSettings(
        run_dir=a["run_dir"] or default_run_dir(task_graph.task),
        use_sim=_flag(a, "use_sim"), mode=a["mode"],
        seed=_number(a, "seed", int), sync=_number(a, "sync", float),
        activate=_flag(a, "activate") if a["activate"].strip() else None,
        use_sim_time=_flag(a, "use_sim_time"),
        other_joints=tuple(j.strip() for j in a["other_joints"].split(",") if j.strip()),
        respawn=_flag(a, "respawn"))
    return LaunchRun(task_graph, params_file, a["namespace"], settings, _flag(a, "rviz"),
                     tuple(plan(task_graph, settings)))


def _flag(a: dict[str, str], name: str) -> bool:
    value = a[name].strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise UserError(f"launch argument {name} must be true or false, not {a[name]!r}")
    return value in ("true", "1")


def _number(a: dict[str, str], name: str, kind):
    if not a[name].strip():
        return None
    try:
        return kind(a[name])
    except ValueError:
        raise UserError(f"launch argument {name} must be a number, not {a[name]!r}") from None


def latest_version(folder: Path, prefix: str, suffix: str) -> tuple[int, Path | None]:
    """The highest-numbered ``<prefix>NNNN<suffix>`` file in a run folder (0, None if none)."""
    best, path = 0, None
    pattern = re.compile(rf"{re.escape(prefix)}(\d+){re.escape(suffix)}$")
    for p in folder.glob(f"{prefix}*{suffix}") if folder.is_dir() else ():
        m = pattern.match(p.name)
        if m and int(m.group(1)) > best:
            best, path = int(m.group(1)), p
    return best, path
