"""The safety envelope bounds a twist command's components (car2d's cmd_vel) the way it bounds
joint commands: ``twist.<component>`` entries narrow the task's action box."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from sym_mbrl_ros.envs.envelope import SafetyEnvelope


def test_twist_bounds_name_the_components():
    env = SafetyEnvelope().with_overrides({"twist.linear.x": [-0.25, 0.25],
                                           "velocity.linear.x": [-9.0, 9.0]})
    low, high = env.twist_bounds(["linear.x", "angular.z"])
    np.testing.assert_array_equal(low, [-0.25, -math.inf])
    np.testing.assert_array_equal(high, [0.25, math.inf])


rclpy = pytest.importorskip("rclpy")

from geometry_msgs.msg import PointStamped, TwistStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from test_nodes_common import (  # noqa: E402
    Probe,
    constant_formula,
    node_args,
    wait_for,
)

from sym_mbrl_ros.envs import get_task  # noqa: E402
from sym_mbrl_ros.nodes.common import POLICY_TOPIC, QOS_LATCHED, TARGET_TOPIC  # noqa: E402
from sym_mbrl_ros.nodes.controller import Controller  # noqa: E402
from sym_mbrl_ros.nodes.topics import StateLayout  # noqa: E402

CAR = get_task("car2d")
FIELDS = ["odom.x", "odom.y", "odom.yaw", "odom.vx", "position.steering_joint",
          "velocity.steering_joint", "target.x", "target.y"]  # config/car2d.yaml
ENVELOPE = '{"odom.vx": [-2.0, 2.0], "twist.linear.x": [-0.25, 0.25]}'


@pytest.mark.ros
def test_the_controller_clips_a_twist_command_to_the_envelope(graph, tmp_path):
    probe = graph.add(Probe("probe_twist"))
    cmds = probe.listen(TwistStamped, "/cmd_vel")
    layout = StateLayout.parse(FIELDS, CAR.state_dim)
    state = np.array([0.0, 0.0, 0.0, 0.2, 0.0, 0.0, 1.0, 1.0])  # inside the envelope
    odom_pub = probe.publisher(Odometry, "/odom")
    joint_pub = probe.publisher(JointState, "/joint_states")
    target_pub = probe.publisher(PointStamped, TARGET_TOPIC, QOS_LATCHED)
    target_pub.publish(layout.target(state, time.time_ns(), frame="odom"))

    def publish_state() -> None:  # a car's driver: odometry and steering of one instant
        ns = time.time_ns()
        joint_pub.publish(layout.joint_state(state, ["steering_joint"], ns))
        odom_pub.publish(layout.odometry(state, ns))

    probe.create_timer(0.05, publish_state)
    # the policy asks for full speed and full steering: speed beyond the envelope's 0.25
    probe.publisher(String, POLICY_TOPIC, QOS_LATCHED).publish(
        String(data=constant_formula(CAR, [1.0, -1.0])))
    ctl = graph.add(Controller(**node_args("car2d", tmp_path, envelope=ENVELOPE,
                                           exploration="zero", policy_noise=0.0)))

    def twists(box) -> np.ndarray:
        return np.array([[m.twist.linear.x, m.twist.angular.z] for m, _, _ in box])

    assert wait_for(lambda: len(cmds) > 0 and twists(cmds)[:, 1].min() < -0.5, timeout=20), \
        "the policy never acted"
    assert wait_for(lambda: np.sum(twists(cmds)[:, 1] < -0.5) >= 5)
    sent = twists(cmds)
    acted = sent[sent[:, 1] < -0.5]
    assert np.all(acted[:, 0] == 0.25)  # clipping returns the bound itself, not a computation
    assert np.all(acted[:, 1] == -1.0)  # steering has no twist entry: the task's box only
    assert np.all(np.abs(sent[:, 0]) <= 0.25)  # and no command at all beyond it
    graph.remove(ctl)
    graph.remove(probe)


@pytest.mark.ros
def test_a_twist_envelope_that_excludes_the_action_box_stops_the_controller(tmp_path):
    with pytest.raises(SystemExit, match=r"envelope's twist limits of \['linear.x', "
                                         r"'angular.z'\] exclude the task's whole action box"):
        Controller(**node_args("car2d", tmp_path,
                               envelope='{"twist.angular.z": [1.5, 2.0]}'))
