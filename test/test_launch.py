"""Launch files, the graph description and the parameter files agree with what is installed."""

from __future__ import annotations

import ast
import importlib.util
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


@pytest.mark.parametrize("task", TASKS)
def test_launch_file_parses_and_names_the_graph(task):
    path = ROOT / "launch" / f"{task}.launch.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
               and isinstance(n.value, str)}
    assert {"use_sim", "rviz", "run_name", "robot_state_publisher", "rviz2", task} <= strings
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert {"IfCondition", "DeclareLaunchArgument", "LifecycleNode", "graph"} <= names
    imports = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "sym_mbrl_ros.bringup" in imports  # the installed package's graph, not a copy


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
    assert set(doc) == {"/**"} | {n.name for n in g.nodes}
    common = doc["/**"]["ros__parameters"]
    t = get_task(task)
    assert common["task"] == task and len(common["state_fields"]) == t.state_dim
    if common.get("command_type", "array") == "array":
        assert common["joint_names"] == list(t.joint_names)
    for name in doc:
        assert set(doc[name]) == {"ros__parameters"}, name


@pytest.mark.ros
@pytest.mark.parametrize("task", TASKS)
def test_every_configured_parameter_is_declared(task, tmp_path):
    """A typo in config/TASK.yaml would be silently ignored by rclpy; here it fails."""
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
    rclpy.init(domain_id=fresh_domain())
    try:
        for spec in g.nodes:
            node = classes[spec.name](**node_args(task, tmp_path, autostart=False)
                                      if spec.name == "controller" else node_args(task, tmp_path))
            try:
                keys = set(doc["/**"]["ros__parameters"]) | set(
                    doc[spec.name]["ros__parameters"])
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
def test_generate_launch_description_where_launch_ros_exists(task):
    pytest.importorskip("launch_ros")
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        get_package_share_directory(bringup.PACKAGE)
    except PackageNotFoundError:
        pytest.skip("sym_mbrl_ros is not installed in an ament index (colcon build)")
    spec = importlib.util.spec_from_file_location(f"{task}_launch",
                                                  ROOT / "launch" / f"{task}.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {getattr(e, "name", None) for e in description.entities}
    assert {"use_sim", "rviz", "run_name"} <= names
