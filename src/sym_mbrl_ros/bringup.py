"""Each task's node graph and a run's parameters, described once (no ROS imports here).

``launch/sym_mbrl.launch.py`` and ``sym-mbrl up TASK`` both call :func:`plan`, so they start
the same executables with the same parameter file, the same per-run parameters
(:func:`run_parameters`) and the same remappings::

    sim_bridge ──joint_states|odom, sym_mbrl/target, sym_mbrl/episode──► recorder, controller
    controller ──<controller>/commands | cmd_vel──► sim_bridge (or the robot), recorder
    recorder ──SQLite store──► dynamics_learner ──sym_mbrl/dynamics_model──► policy_trainer
    policy_trainer ──sym_mbrl/policy──► controller

Every topic name is relative: under ``namespace`` robot1 the graph uses /robot1/joint_states and
so on, and two graphs share one DDS domain without hearing each other.

A fleet (``RunSettings.robots`` = N ≥ 1): the robots ``robot1`` … ``robotN`` live in
``<namespace>/robotK``, each with its sim bridge (simulation), recorder (its own store,
``robotK/transitions.sqlite`` in the run folder) and controller; one dynamics learner and one
policy trainer in ``<namespace>`` pool every robot's store. Models, policies and training
progress belong to the fleet: they are published in ``<namespace>/sym_mbrl/`` and every
robot's controller is remapped to them (:data:`FLEET_TOPICS`), so every robot acts with the
same policy.

Paths (``config``, ``urdf``) are relative to the package's share directory, which is the
source checkout or ``<prefix>/share/sym_mbrl_ros`` once installed (:func:`share_dir`).
"""

from __future__ import annotations

import json
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
    plans: bool = False
    """The parameter file sets the controller's ``planner`` (MPC on the learner's model): the
    controller does not use the trainer's policies, so a lockstep world does not wait for the
    trainer (default sync 0)."""
    seeded: tuple[str, ...] = field(default=("sim_bridge", "controller", "dynamics_learner",
                                             "policy_trainer"))
    """Nodes with a ``seed`` parameter."""

    def node(self, name: str) -> NodeSpec:
        """The node called ``name``."""
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


ROBOT_NODES = ("sim_bridge", "recorder", "controller")
"""The nodes each robot of a fleet runs (in its own namespace); the others serve the fleet."""

FLEET_TOPICS = ("sym_mbrl/dynamics_model", "sym_mbrl/policy", "sym_mbrl/training")
"""Topics a fleet shares: its robots' controllers are remapped to the fleet's namespace."""

ROBOT_SEED_STRIDE = 1000
"""Robot k (0-based) of a fleet seeds its sim bridge and controller with seed + k * this, so
that robots explore differently."""

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
    # solved episodes score about 80-86; 75 is above an 80 %-success run's ~66. The controller
    # plans (sym-mpc): with the MBPO trainer's policy `up cartpole` had not solved after 2,500
    # steps (tuning seed 0; the pole spun past the envelope's 30 rad/s)
    "cartpole": TaskGraph("cartpole", _nodes(), "config/cartpole.yaml", "urdf/cartpole.urdf",
                          solved_return=75.0, default_steps=4000, plans=True),
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
                 python: str | None = None, namespace: str = "",
                 remappings: tuple[tuple[str, str], ...] | None = None) -> list[str]:
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
    for src, dst in spec.remappings if remappings is None else remappings:
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


def overrides_yaml(overrides: dict[str, dict[str, object]]) -> str:
    """A parameter file with ``ros__parameters`` per node key (``/**/controller``,
    ``/robot1/controller``; values: str, number, bool, lists of them)."""
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
    simulation, 0 otherwise (a robot never waits for the trainer) and for a graph whose
    controller plans (``TaskGraph.plans``)."""
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
    namespace: str = ""
    """Namespace of the graph (of the fleet's learner and trainer when ``robots`` ≥ 1)."""
    robots: int = 0
    """0: one robot, the classic graph; N ≥ 1: a fleet of N namespaced robots feeding one
    learner and trainer (see the module docstring)."""
    planner: bool = False
    """sym-mpc: every controller plans with the learner's newest model (``controller.planner``
    set to :data:`MPC_PLANNER`) and the graph has no policy trainer, whose policies no
    controller would use; the lockstep world then never waits (sync 0). False keeps the
    parameter file's ``planner`` and the trainer."""


@dataclass(frozen=True)
class NodeLaunch:
    """One process a run starts: the node, its parameters over the task's file, respawn, its
    namespace and remappings."""

    spec: NodeSpec
    parameters: dict[str, object]
    respawn: bool
    namespace: str = ""
    """Absolute namespace ("/robot1"), or "" for the root."""
    remappings: tuple[tuple[str, str], ...] = ()
    robot: str = ""
    """The fleet robot this node belongs to ("" for the fleet's own nodes and single graphs)."""

    @property
    def key(self) -> str:
        """A name unique in the run: ``controller``, or ``robot1/controller`` in a fleet."""
        return f"{self.robot}/{self.spec.name}" if self.robot else self.spec.name

    @property
    def fqn(self) -> str:
        """The node's fully qualified name (``/robot1/controller``)."""
        return f"{self.namespace}/{self.spec.name}"


def robot_names(n: int) -> list[str]:
    """The namespaces of a fleet's robots: robot1 … robotN."""
    return [f"robot{k}" for k in range(1, n + 1)]


def absolute_namespace(namespace: str) -> str:
    """``robot1`` or ``/robot1/`` → ``/robot1``; "" or "/" → ""."""
    ns = namespace.strip().strip("/")
    if ns and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*", ns):
        raise UserError(f"namespace {namespace!r} is not a ROS name: letters, digits and _ "
                        f"(not first), parts separated by /")
    return f"/{ns}" if ns else ""


MPC_PLANNER = "sym_mbrl_ros.agents.mpc:make_planner"
"""The controller's planner hook that ``RunSettings.planner`` (``up --planner``) sets."""


def default_sync(task: str, settings: RunSettings) -> float:
    """SAC updates per real step the lockstep world waits for (see ``RunSettings.sync``)."""
    if settings.sync is not None:
        return float(settings.sync)
    if (not settings.use_sim or settings.mode != "lockstep" or graph(task).plans
            or settings.planner):
        return 0.0
    from .agents.presets import make_config

    return float(make_config("sym-mbpo", task).updates_per_step)


def planner_schedule(task: str) -> tuple[dict[str, int], dict[str, object]]:
    """sym-mpc's preset for ``task`` as graph parameters: the learner's first fit and refit
    interval (``init_random_steps``, ``refit_every``: the planner needs a model early, 50
    random steps on Pendulum) and the controller's ``planner_options`` (the CEM settings that
    differ from the defaults, e.g. the cart-pole's ``execute: mean``)."""
    from dataclasses import asdict

    from .agents.cem import CEMConfig
    from .agents.presets import make_config

    config = make_config("sym-mpc", task)
    default = asdict(CEMConfig())
    cem = {k: v for k, v in asdict(config.cem).items() if v != default[k]}
    return ({"min_transitions": int(config.init_random_steps),
             "refit_every": int(config.refit_every)}, {"cem": cem} if cem else {})


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
    if settings.robots < 0:
        raise UserError(f"robots must be 0 (one robot) or a fleet size ≥ 1, not {settings.robots}")
    if settings.planner and settings.sync:
        raise UserError("with the planner there is no policy trainer to wait for: leave sync "
                        "empty or set it to 0")
    if settings.robots >= 1 and settings.use_sim_time:
        raise UserError("a fleet cannot run with use_sim_time: /clock is one topic for the whole "
                        "domain and each sim bridge would publish its own time")
    params: dict[str, dict[str, object]] = {}
    for spec in task_graph.nodes:
        if spec.sim_only and not settings.use_sim:
            continue
        if spec.name == "policy_trainer" and settings.planner:
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
    if settings.planner:
        controller["planner"] = MPC_PLANNER
        learner, options = planner_schedule(task_graph.task)
        controller["planner_options"] = json.dumps(options)
        if "dynamics_learner" in params:
            params["dynamics_learner"].update(learner)
    controller["autostart"] = (settings.use_sim if settings.activate is None
                               else bool(settings.activate))
    return params


def plan(task_graph: TaskGraph, settings: RunSettings) -> list[NodeLaunch]:
    """The processes a run starts, in start order (what ``up`` and the launch file start)."""
    params = run_parameters(task_graph, settings)
    ns = absolute_namespace(settings.namespace)
    if settings.robots == 0:
        return [NodeLaunch(spec, params[spec.name], settings.respawn and spec.respawn, ns,
                           spec.remappings)
                for spec in task_graph.nodes if spec.name in params]
    robots = robot_names(settings.robots)
    stores = [f"{robot}/transitions.sqlite" for robot in robots]
    fleet_remaps = tuple((topic, f"{ns}/{topic}") for topic in FLEET_TOPICS)
    out = []
    for spec in task_graph.nodes:
        if spec.name not in params:
            continue
        respawn = settings.respawn and spec.respawn
        if spec.name not in ROBOT_NODES:
            out.append(NodeLaunch(spec, {**params[spec.name], "stores": stores}, respawn, ns,
                                  spec.remappings))
            continue
        for k, robot in enumerate(robots):
            p = dict(params[spec.name])
            if spec.name in task_graph.seeded:
                p["seed"] = int(settings.seed or 0) + k * ROBOT_SEED_STRIDE
            if spec.name == "recorder":
                p["store"] = stores[k]
            remaps = spec.remappings
            if spec.name == "controller":
                p["fleet_size"] = settings.robots
                remaps = remaps + fleet_remaps
            out.append(NodeLaunch(spec, p, respawn, f"{ns}/{robot}", remaps, robot))
    return out


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
    ("robots", "0", "0: one robot; N: a fleet of N robots (namespaces robot1..N under "
                    "namespace) feeding one learner and trainer (sym-mbrl up --robots N)"),
    ("planner", "false", "true: every controller plans with the learner's model (sym-mpc) and "
                         "no policy trainer runs (sym-mbrl up --planner)"),
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
        respawn=_flag(a, "respawn"), namespace=a["namespace"],
        robots=_number(a, "robots", int) or 0, planner=_flag(a, "planner"))
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
