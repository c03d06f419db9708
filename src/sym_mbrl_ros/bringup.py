"""Each task's node graph, described once (no ROS imports here).

``launch/TASK.launch.py`` and ``sym-mbrl up TASK`` both read :func:`graph`, so they start the
same executables with the same parameter file and remappings::

    sim_bridge ──/joint_states|odom, /sym_mbrl/target, /sym_mbrl/episode──► recorder, controller
    controller ──/<controller>/commands | cmd_vel──► sim_bridge (or the robot), recorder
    recorder ──SQLite store──► dynamics_learner ──/sym_mbrl/dynamics_model──► policy_trainer
    policy_trainer ──/sym_mbrl/policy──► controller

Paths (``config``, ``urdf``) are relative to the package's share directory, which is the
source checkout or ``<prefix>/share/sym_mbrl_ros`` once installed (:func:`share_dir`).
"""

from __future__ import annotations

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
        NodeSpec("recorder", "recorder"),
        NodeSpec("dynamics_learner", "dynamics_learner"),
        NodeSpec("policy_trainer", "policy_trainer"),
        NodeSpec("sim_bridge", "sim_bridge", sim_only=True, remappings=extra_remaps),
        NodeSpec("controller", "controller", lifecycle=True, remappings=extra_remaps),
    )


GRAPHS: dict[str, TaskGraph] = {
    "pendulum": TaskGraph("pendulum", _nodes(), "config/pendulum.yaml", "urdf/pendulum.urdf",
                          solved_return=-200.0, default_steps=3000),
    "reacher": TaskGraph("reacher", _nodes(), "config/reacher.yaml", "urdf/reacher.urdf",
                         solved_return=-2.5, default_steps=5000),
    "car2d": TaskGraph("car2d", _nodes(), "config/car2d.yaml", "urdf/car2d.urdf",
                       solved_return=-45.0, default_steps=5000),
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
                 python: str | None = None) -> list[str]:
    """The command line that starts ``spec``: the installed executable, else ``python -m``.

    Later parameter files override earlier ones (a run's overrides go last). They are files,
    not ``-p``: a ``-p`` value is node-agnostic and loses to a node's own YAML section.
    """
    exe = executable_path(spec)
    cmd = [str(exe)] if exe.is_file() else [python or sys.executable, "-m", spec.module]
    cmd += ["--ros-args", "-r", f"__node:={spec.name}"]
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

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a valid YAML string


def latest_version(folder: Path, prefix: str, suffix: str) -> tuple[int, Path | None]:
    """The highest-numbered ``<prefix>NNNN<suffix>`` file in a run folder (0, None if none)."""
    best, path = 0, None
    pattern = re.compile(rf"{re.escape(prefix)}(\d+){re.escape(suffix)}$")
    for p in folder.glob(f"{prefix}*{suffix}") if folder.is_dir() else ():
        m = pattern.match(p.name)
        if m and int(m.group(1)) > best:
            best, path = int(m.group(1)), p
    return best, path
