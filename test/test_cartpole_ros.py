"""config/cartpole.yaml over real DDS: the bridge publishes both joints, the recorder stores the
cart-pole's transitions, and every configured parameter is declared."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")

from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from test_nodes_common import (  # noqa: E402
    Probe,
    command,
    node_args,
    wait_for,
)

from sym_mbrl_ros.data.store import TransitionStore  # noqa: E402
from sym_mbrl_ros.envs import cartpole as cp  # noqa: E402
from sym_mbrl_ros.envs import wrap_angle  # noqa: E402
from sym_mbrl_ros.nodes.controller import Controller  # noqa: E402
from sym_mbrl_ros.nodes.dynamics_learner import DynamicsLearner  # noqa: E402
from sym_mbrl_ros.nodes.policy_trainer import PolicyTrainer  # noqa: E402
from sym_mbrl_ros.nodes.recorder import Recorder  # noqa: E402
from sym_mbrl_ros.nodes.sim_bridge import SimBridge  # noqa: E402

pytestmark = pytest.mark.ros
CMD = "/effort_controller/commands"
ROOT = Path(__file__).resolve().parents[1]


def test_every_configured_parameter_is_declared(graph, tmp_path):
    """A typo in config/cartpole.yaml would be silently ignored by rclpy; here it fails."""
    doc = yaml.safe_load((ROOT / "config" / "cartpole.yaml").read_text())
    classes = {"sim_bridge": SimBridge, "recorder": Recorder, "controller": Controller,
               "dynamics_learner": DynamicsLearner, "policy_trainer": PolicyTrainer}
    for name, cls in classes.items():
        extra = {"autostart": False} if name == "controller" else {}
        node = cls(**node_args("cartpole", tmp_path / name, **extra))
        try:
            keys = set(doc["/**"]["ros__parameters"]) | set(
                doc[f"/**/{name}"]["ros__parameters"])
            missing = [k for k in keys if not node.has_parameter(k)]
            assert not missing, f"{name} does not declare {missing}"
        finally:
            close = getattr(node, "close", None)
            if close:
                close()
            node.destroy_node()


def test_bridge_and_recorder_record_the_cartpole(graph, tmp_path):
    probe = graph.add(Probe("probe_cartpole"))
    states = probe.listen(JointState, "/joint_states")
    probe.publisher(Float64MultiArray, CMD)
    rec = graph.add(Recorder(**node_args("cartpole", tmp_path)))
    bridge = graph.add(SimBridge(**node_args("cartpole", tmp_path)))
    assert probe.wait_matched(CMD)
    time.sleep(0.5)  # the recorder's side of discovery
    forces = [10.0, -10.0, 4.0, 0.0, -3.0, 7.5]
    for k, f in enumerate(forces):
        probe._pubs[CMD].publish(command([f]))
        assert wait_for(lambda k=k: len(states) >= k + 2)
    msg = states[-1][0]
    assert list(msg.name) == ["slider", "hinge"]
    store = TransitionStore(tmp_path / "transitions.sqlite", readonly=True)
    assert wait_for(lambda: store.count() == len(forces)), store.count()
    b = store.read()
    np.testing.assert_allclose(b.actions[:, 0], forces)
    # the hanging start, read from /joint_states (the hinge angle unwrapped, near pi)
    assert abs(wrap_angle(b.states[0, 1] - np.pi)) <= cp.START_NOISE
    np.testing.assert_allclose(b.states[1:], b.next_states[:-1])
    # the stored rewards are the task's, of the stored transitions
    np.testing.assert_allclose(b.rewards, cp.TASK.reward(b.states, b.actions, b.next_states),
                               rtol=1e-12, atol=1e-12)
    graph.remove(bridge)
    graph.remove(rec)
