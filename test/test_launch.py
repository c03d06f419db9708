"""Launch files, the graph description and the parameter files agree with what is installed."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from sym_mbrl_ros import bringup
from sym_mbrl_ros.envs import get_task

ROOT = Path(__file__).resolve().parents[1]
TASKS = sorted(bringup.GRAPHS)


def _setup_nodes() -> dict[str, str]:
    """console_scripts of setup.py's NODES list: executable name -> module:function."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "NODES" for t in node.targets):
            entries = ast.literal_eval(node.value)
            return {e.split("=")[0].strip(): e.split("=")[1].strip() for e in entries}
    raise AssertionError("setup.py has no NODES list")


def test_one_launch_file_and_thin_task_wrappers():
    path = ROOT / "launch" / "sym_mbrl.launch.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    imports = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "sym_mbrl_ros.bringup" in imports  # the installed package's graph, not a copy
    declared = {name for name, _, _ in bringup.LAUNCH_ARGUMENTS}
    assert {"task", "use_sim", "params_file", "namespace", "use_sim_time", "run_dir", "rviz",
            "respawn", "activate"} <= declared
    for task in TASKS:
        wrapper = (ROOT / "launch" / f"{task}.launch.py").read_text()
        assert "sym_mbrl.launch.py" in wrapper and f'{{"task": "{task}"}}' in wrapper
        assert "Node(" not in wrapper  # a wrapper includes the one file, it starts nothing


# ------------------------------------------------------------------ the two routes agree
class _Recorded:
    """Stands in for a launch / launch_ros class: keeps what the launch file passed."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchDescription(_Recorded):
    @property
    def entities(self):
        return self.args[0]


def _launch_stand_ins(monkeypatch) -> None:
    """Just enough of launch, launch_ros and ament_index_python to run the launch file's
    code here (they are not on PyPI; a full ROS install runs the real ones below)."""
    import types

    classes = {
        "launch": {"LaunchDescription": _LaunchDescription},
        "launch.actions": {n: type(n, (_Recorded,), {}) for n in (
            "DeclareLaunchArgument", "OpaqueFunction", "IncludeLaunchDescription")},
        "launch.launch_description_sources": {
            "PythonLaunchDescriptionSource": type("PythonLaunchDescriptionSource",
                                                  (_Recorded,), {})},
        "launch_ros": {},
        "launch_ros.actions": {n: type(n, (_Recorded,), {}) for n in ("Node", "LifecycleNode")},
        "launch_ros.parameter_descriptions": {
            "ParameterValue": type("ParameterValue", (_Recorded,), {})},
        "ament_index_python": {},
        "ament_index_python.packages": {"get_package_share_directory": lambda pkg: str(ROOT)},
    }
    for name, members in classes.items():
        module = types.ModuleType(name)
        module.__dict__.update(members)
        monkeypatch.setitem(sys.modules, name, module)


def _launch_nodes(monkeypatch, arguments: dict[str, str]) -> dict[str, dict]:
    """Run launch/sym_mbrl.launch.py with ``arguments``: the sym_mbrl_ros nodes it starts."""
    _launch_stand_ins(monkeypatch)
    spec = importlib.util.spec_from_file_location("sym_mbrl_launch",
                                                  ROOT / "launch" / "sym_mbrl.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {e.args[0]: e.kwargs["default_value"]
                for e in description.entities if type(e).__name__ == "DeclareLaunchArgument"}
    opaque = [e for e in description.entities if type(e).__name__ == "OpaqueFunction"]
    assert len(opaque) == 1
    context = type("Context", (), {})()
    context.launch_configurations = {**declared, **arguments}
    out = {}
    for action in opaque[0].kwargs["function"](context):
        kw = action.kwargs
        if kw.get("package") != bringup.PACKAGE:
            continue
        assert (type(action).__name__ == "LifecycleNode") == (kw["name"] == "controller")
        out[f"{kw['namespace']}/{kw['name']}"] = {
                           "executable": kw["executable"], "namespace": kw["namespace"],
                           "params_file": kw["parameters"][0], "params": kw["parameters"][1],
                           "remappings": [tuple(r) for r in kw["remappings"]],
                           "respawn": kw["respawn"]}
    return out


def _up_nodes(argv: list[str]) -> dict[str, dict]:
    """What ``sym-mbrl up`` would start with ``argv`` (parsed from its command lines), by
    fully qualified node name."""
    from sym_mbrl_ros.cli import build_parser
    from sym_mbrl_ros.commands import up

    config = up.prepare(build_parser().parse_args(["up", *argv]))
    out = {}
    for name, cmd in config["commands"].items():
        i = cmd.index("--ros-args")
        exe = cmd[i - 1].rpartition(".")[2] if cmd[1:2] == ["-m"] else Path(cmd[0]).name
        ros = cmd[i + 1:]
        pairs = [(ros[k], ros[k + 1]) for k in range(0, len(ros), 2)]
        files = [v for k, v in pairs if k == "--params-file"]
        remaps = [tuple(v.split(":=")) for k, v in pairs if k == "-r"]
        node = name.rpartition("/")[2]
        assert ("__node", node) in remaps
        namespace = dict(remaps).get("__ns", "")
        assert len(files) == 2  # the task's file, then this run's
        run_params = yaml.safe_load(Path(files[1]).read_text())
        fqn = f"{namespace}/{node}"
        out[fqn] = {"executable": exe, "namespace": namespace, "params_file": files[0],
                    "params": run_params[fqn]["ros__parameters"],
                    "remappings": [r for r in remaps if r[0] not in ("__node", "__ns")],
                    "respawn": name in config["respawn"]}
    return out


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("hardware", [False, True], ids=["sim", "hardware"])
def test_launch_file_and_up_start_the_same_graph(task, hardware, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    argv = [task, "--out", str(run_dir), "--seed", "3"] + (["--hardware"] if hardware else [])
    from_up = _up_nodes(argv)
    from_launch = _launch_nodes(monkeypatch, {"task": task, "run_dir": str(run_dir),
                                              "seed": "3", "use_sim": str(not hardware)})
    assert from_launch == from_up
    names = set(from_up)
    assert ("/sim_bridge" in names) != hardware
    assert {"/recorder", "/dynamics_learner", "/policy_trainer", "/controller"} <= names
    assert {n for n, v in from_up.items() if v["respawn"]} == {
        "/recorder", "/dynamics_learner", "/policy_trainer"}
    controller = from_up["/controller"]["params"]
    if hardware:  # inactive until activated, never waits for the trainer, hold pairing
        assert controller["autostart"] is False and controller["sync_updates_per_step"] == 0
        assert from_up["/recorder"]["params"]["pairing"] == "hold"
        # a robot with no state yet is never kicked with a zero command (Reacher: zero pose)
        assert controller["lockstep_kick"] is False
    elif bringup.graph(task).plans:  # the controller plans: nothing to wait for
        assert controller["autostart"] is True and controller["sync_updates_per_step"] == 0
        assert from_up["/sim_bridge"]["params"]["mode"] == "lockstep"
    else:  # the trainer sync the launch route used to lack (3,747 steps to solve vs ~1,005)
        assert controller["autostart"] is True and controller["sync_updates_per_step"] >= 1
        assert from_up["/sim_bridge"]["params"]["mode"] == "lockstep"


@pytest.mark.parametrize("task", TASKS)
def test_a_graph_plans_exactly_when_its_parameter_file_sets_a_planner(task):
    # TaskGraph.plans sets the default sync to 0; a planner in the file without it would make
    # the lockstep world wait for a trainer whose policies the controller never uses, and the
    # flag without a planner would run the trainer's policy unsynchronised (slower to solve)
    config = yaml.safe_load((ROOT / bringup.graph(task).config).read_text())
    planner = config["/**/controller"]["ros__parameters"].get("planner", "")
    assert bool(planner) == bringup.graph(task).plans


def test_activate_and_other_joints_reach_both_routes(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    from_up = _up_nodes(["pendulum", "--out", str(run_dir), "--hardware", "--activate",
                         "--other-joints", "passive_joint,aux"])
    from_launch = _launch_nodes(monkeypatch, {"run_dir": str(run_dir), "use_sim": "false",
                                              "activate": "true", "seed": "0",
                                              "other_joints": "passive_joint, aux"})
    assert from_launch == from_up
    assert from_up["/controller"]["params"]["autostart"] is True
    for node in from_up.values():
        assert node["params"]["other_joints"] == ["passive_joint", "aux"]


def test_namespace_and_fleet_reach_both_routes(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    single = _up_nodes(["pendulum", "--out", str(run_dir), "--namespace", "robot7"])
    assert set(single) == {f"/robot7/{n}" for n in ("recorder", "dynamics_learner",
                                                     "policy_trainer", "sim_bridge", "controller")}
    assert all(not v["remappings"] for v in single.values())  # relative topics: nothing to move
    from_up = _up_nodes(["pendulum", "--out", str(run_dir), "--seed", "5", "--robots", "2",
                         "--namespace", "lab"])
    from_launch = _launch_nodes(monkeypatch, {"run_dir": str(run_dir), "seed": "5",
                                              "robots": "2", "namespace": "lab"})
    assert from_launch == from_up
    robot_nodes = {f"/lab/robot{k}/{n}" for k in (1, 2)
                   for n in ("sim_bridge", "recorder", "controller")}
    assert set(from_up) == robot_nodes | {"/lab/dynamics_learner", "/lab/policy_trainer"}
    stores = ["robot1/transitions.sqlite", "robot2/transitions.sqlite"]
    for fleet_node in ("/lab/dynamics_learner", "/lab/policy_trainer"):
        assert from_up[fleet_node]["params"]["stores"] == stores
    for k in (1, 2):
        robot = f"/lab/robot{k}"
        assert from_up[f"{robot}/recorder"]["params"]["store"] == stores[k - 1]
        controller = from_up[f"{robot}/controller"]
        assert controller["params"]["fleet_size"] == 2
        # every robot acts with the fleet's policy and waits for the fleet's trainer
        assert set(controller["remappings"]) == {
            ("sym_mbrl/dynamics_model", "/lab/sym_mbrl/dynamics_model"),
            ("sym_mbrl/policy", "/lab/sym_mbrl/policy"),
            ("sym_mbrl/training", "/lab/sym_mbrl/training")}
    seeds = {from_up[f"/lab/robot{k}/{n}"]["params"]["seed"] for k in (1, 2)
             for n in ("sim_bridge", "controller")}
    assert seeds == {5, 5 + bringup.ROBOT_SEED_STRIDE}  # robots explore differently
    from sym_mbrl_ros.errors import UserError

    with pytest.raises(UserError, match="not a ROS name"):
        bringup.launch_run({"namespace": "robot-1", "run_dir": "/tmp/x"}, ROOT)
    with pytest.raises(UserError, match="use_sim_time"):
        bringup.launch_run({"robots": "2", "use_sim_time": "true", "run_dir": "/tmp/x"}, ROOT)


def test_planner_drops_the_trainer_on_both_routes(tmp_path, monkeypatch):
    # with every controller planning, a trainer would only burn a core beside the robots (in a
    # 4-robot fleet on 2 CPUs it slowed the lockstep world) and the world must not wait for it
    run_dir = tmp_path / "run"
    from_up = _up_nodes(["pendulum", "--out", str(run_dir), "--robots", "2", "--planner"])
    from_launch = _launch_nodes(monkeypatch, {"run_dir": str(run_dir), "seed": "0",
                                              "robots": "2", "planner": "true"})
    assert from_launch == from_up
    assert not [n for n in from_up if n.endswith("/policy_trainer")]
    assert "/dynamics_learner" in from_up
    for k in (1, 2):
        params = from_up[f"/robot{k}/controller"]["params"]
        assert params["planner"] == bringup.MPC_PLANNER
        assert params["sync_updates_per_step"] == 0
    # sym-mpc's schedule: the planner needs a model early (Pendulum preset: 50 random steps)
    learner = from_up["/dynamics_learner"]["params"]
    assert (learner["min_transitions"], learner["refit_every"]) == (50, 100)
    assert json.loads(from_up["/robot1/controller"]["params"]["planner_options"]) == {}
    cartpole = _up_nodes(["cartpole", "--out", str(run_dir), "--planner"])
    assert json.loads(cartpole["/controller"]["params"]["planner_options"]) == {
        "cem": {"execute": "mean"}}
    plain = _up_nodes(["pendulum", "--out", str(run_dir)])
    assert "/policy_trainer" in plain and "planner" not in plain["/controller"]["params"]
    from sym_mbrl_ros.errors import UserError

    with pytest.raises(UserError, match="no policy trainer to wait for"):
        bringup.launch_run({"planner": "true", "sync": "20", "run_dir": "/tmp/x"}, ROOT)
    with pytest.raises(UserError, match="planner must be true or false"):
        bringup.launch_run({"planner": "mpc", "run_dir": "/tmp/x"}, ROOT)


def test_fleet_topics_are_the_nodes_topics():
    pytest.importorskip("rclpy")
    from sym_mbrl_ros.nodes import common

    assert set(bringup.FLEET_TOPICS) == {common.MODEL_TOPIC, common.POLICY_TOPIC,
                                         common.TRAINING_TOPIC}
    relative = [v for k, v in vars(common).items() if k.endswith("_TOPIC")
                and k != "DIAGNOSTICS_TOPIC"]
    assert relative and not [t for t in relative if t.startswith("/")]


def test_launch_defaults_and_bad_arguments(monkeypatch, tmp_path):
    monkeypatch.setenv("ROS_HOME", str(tmp_path / "ros"))
    run = bringup.launch_run({"task": "reacher"}, ROOT)
    assert Path(run.settings.run_dir).is_absolute()
    assert run.settings.run_dir.startswith(str(tmp_path / "ros" / "sym_mbrl" / "runs" / "reacher-"))
    assert run.params_file == str(ROOT / "config" / "reacher.yaml")
    from sym_mbrl_ros.errors import UserError

    with pytest.raises(UserError, match="use_sim must be true or false"):
        bringup.launch_run({"use_sim": "maybe"}, ROOT)
    with pytest.raises(UserError, match="no node graph for task"):
        bringup.launch_run({"task": "segway"}, ROOT)
    with pytest.raises(UserError, match="lockstep simulation"):
        bringup.launch_run({"use_sim": "false", "sync": "20", "run_dir": "/tmp/x"}, ROOT)
    with pytest.raises(UserError, match="absolute"):
        bringup.launch_run({"run_dir": "runs/x"}, ROOT)


@pytest.mark.parametrize("task", TASKS)
def test_graph_names_only_what_exists(task):
    g = bringup.graph(task)
    nodes = _setup_nodes()
    share = bringup.share_dir()
    for spec in g.nodes:
        assert spec.executable in nodes, f"{spec.executable} is not in setup.py's NODES"
        module, _, func = nodes[spec.executable].partition(":")
        assert module == spec.module and func == "main"
        source = Path(importlib.util.find_spec(module).origin).read_text()
        assert "def main(" in source
        installed = bringup.executable_path(spec)
        if (Path(sys.prefix) / "lib" / bringup.PACKAGE).is_dir():
            assert installed.is_file(), f"{installed} missing: reinstall the package"
    for rel in (g.config, g.urdf, g.rviz):
        assert (share / rel).is_file(), rel
    controller = g.node("controller")
    cmd = bringup.node_command(controller, [share / g.config, "run.yaml"])
    assert cmd[0].endswith("/controller") or cmd[1:3] == ["-m", controller.module]
    i = cmd.index("--ros-args")
    assert cmd[i:] == ["--ros-args", "-r", "__node:=controller", "--params-file",
                       str(share / g.config), "--params-file", "run.yaml"]


@pytest.mark.parametrize("task", TASKS)
def test_parameter_file_matches_the_task(task):
    g = bringup.graph(task)
    doc = yaml.safe_load((ROOT / g.config).read_text())
    # /**/NODE: a node's section applies under any namespace (a robot's, a fleet's)
    assert set(doc) == {"/**"} | {f"/**/{n.name}" for n in g.nodes}
    common = doc["/**"]["ros__parameters"]
    t = get_task(task)
    assert common["task"] == task and len(common["state_fields"]) == t.state_dim
    if common.get("command_type", "array") == "array":
        # the commanded joints come first; every joint of the task is published
        assert common["joint_names"] == list(t.joint_names)[: t.action_dim]
        assert set(t.joint_names) <= set(common["joint_names"]) | set(common["other_joints"])
    for name in doc:
        assert set(doc[name]) == {"ros__parameters"}, name


@pytest.mark.ros
@pytest.mark.parametrize("task", TASKS)
def test_every_configured_parameter_is_declared(task, tmp_path):
    """A typo in config/TASK.yaml, or a run parameter that bringup sets (sim and hardware
    mode), would be silently ignored by rclpy; here it fails."""
    rclpy = pytest.importorskip("rclpy")
    from test_nodes_common import fresh_domain, node_args

    from sym_mbrl_ros.nodes.controller import Controller
    from sym_mbrl_ros.nodes.dynamics_learner import DynamicsLearner
    from sym_mbrl_ros.nodes.policy_trainer import PolicyTrainer
    from sym_mbrl_ros.nodes.recorder import Recorder
    from sym_mbrl_ros.nodes.sim_bridge import SimBridge

    classes = {"sim_bridge": SimBridge, "recorder": Recorder, "controller": Controller,
               "dynamics_learner": DynamicsLearner, "policy_trainer": PolicyTrainer}
    g = bringup.graph(task)
    doc = yaml.safe_load((ROOT / g.config).read_text())
    run_keys: dict[str, set[str]] = {}
    for use_sim in (True, False):
        for robots in (0, 2):
            for launch in bringup.plan(g, bringup.RunSettings(
                    str(tmp_path), use_sim=use_sim, seed=0, robots=robots)):
                run_keys.setdefault(launch.spec.name, set()).update(launch.parameters)
    rclpy.init(domain_id=fresh_domain())
    try:
        for spec in g.nodes:
            node = classes[spec.name](**node_args(task, tmp_path, autostart=False)
                                      if spec.name == "controller" else node_args(task, tmp_path))
            try:
                keys = set(doc["/**"]["ros__parameters"]) | set(
                    doc[f"/**/{spec.name}"]["ros__parameters"]) | run_keys[spec.name]
                missing = [k for k in keys if not node.has_parameter(k)]
                assert not missing, f"{spec.name} does not declare {missing}"
            finally:
                close = getattr(node, "close", None)
                if close:
                    close()
                node.destroy_node()
    finally:
        rclpy.shutdown()


@pytest.mark.parametrize("task", TASKS)
def test_generate_launch_description_where_launch_ros_exists(task, tmp_path):
    """With the real launch and launch_ros (a ROS install, package colcon-built): the file
    declares every argument, and its OpaqueFunction makes real Node / LifecycleNode actions."""
    pytest.importorskip("launch_ros")
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.utilities import perform_substitutions
    from launch_ros.actions import LifecycleNode, Node

    from launch import LaunchContext

    try:
        get_package_share_directory(bringup.PACKAGE)
    except (PackageNotFoundError, OSError):  # OSError: no AMENT_PREFIX_PATH at all
        pytest.skip("sym_mbrl_ros is not installed in an ament index (colcon build)")
    spec = importlib.util.spec_from_file_location(f"{task}_launch",
                                                  ROOT / "launch" / "sym_mbrl.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {getattr(e, "name", None) for e in description.entities}
    assert {name for name, _, _ in bringup.LAUNCH_ARGUMENTS} <= names
    context = LaunchContext()
    context.launch_configurations.update(task=task, run_dir=str(tmp_path))
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.visit(context)  # the defaults of the arguments not given
    (opaque,) = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    actions = opaque.visit(context)
    assert all(isinstance(a, Node) for a in actions)

    def text(value):  # the launch file passes plain strings; launch_ros keeps them as given
        return value if isinstance(value, str) else perform_substitutions(context, value)

    started = {(text(a.node_package), text(a.node_executable)): a for a in actions}
    expected = {(bringup.PACKAGE, n.executable) for n in bringup.graph(task).nodes}
    assert set(started) == expected | {("robot_state_publisher", "robot_state_publisher")}
    assert isinstance(started[(bringup.PACKAGE, "controller")], LifecycleNode)
