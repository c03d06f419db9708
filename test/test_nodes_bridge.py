"""sim_bridge over real DDS: its topic contract, lockstep and realtime modes, reset, bad input."""

from __future__ import annotations

import importlib.util
import json
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PointStamped, TwistStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from test_nodes_common import (  # noqa: E402
    Probe,
    command,
    node_args,
    wait_for,
)
from visualization_msgs.msg import MarkerArray  # noqa: E402

from sym_mbrl_ros.nodes.common import EPISODE_TOPIC, QOS_EVENTS, QOS_LATCHED  # noqa: E402
from sym_mbrl_ros.nodes.sim_bridge import SimBridge  # noqa: E402

pytestmark = pytest.mark.ros
CMD = "/effort_controller/commands"


def _probe(graph, name):
    probe = graph.add(Probe(name))
    probe.listen(JointState, "/joint_states")
    probe.listen(Clock, "/clock")
    probe.listen(MarkerArray, "/sym_mbrl/markers")
    probe.listen(DiagnosticArray, "/diagnostics")
    probe.listen(String, EPISODE_TOPIC, QOS_EVENTS)
    probe.publisher(Float64MultiArray, CMD)
    return probe


def test_lockstep_contract_reset_and_bad_commands(graph, tmp_path):
    probe = _probe(graph, "probe_lockstep")
    bridge = graph.add(SimBridge(**node_args("pendulum", tmp_path, marker_rate_hz=1000.0)))
    states, clocks = probe.got["/joint_states"], probe.got["/clock"]
    events = probe.got[EPISODE_TOPIC]
    assert probe.wait_matched(CMD)
    assert wait_for(lambda: len(events) >= 1)  # transient-local: the start event arrives late
    first = json.loads(events[0][0].data)
    assert first["mode"] == "lockstep" and first["reason"] == "start"
    time.sleep(0.3)
    assert len(states) <= 1  # nothing but the first state until a command comes
    states.clear()
    pub = probe._pubs[CMD]
    for k in range(5):
        pub.publish(command([1.0]))
        assert wait_for(lambda k=k: len(states) >= k + 1)
    time.sleep(0.2)
    assert len(states) == 5, "one state per command"
    msg = states[-1][0]
    assert list(msg.name) == ["hinge"] and len(msg.position) == 1 and len(msg.velocity) == 1
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m, _, _ in states]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time_ns()) < 5e9  # system clock
    assert clocks == []  # system time: no /clock that would contradict the stamps
    assert wait_for(lambda: len(probe.got["/sym_mbrl/markers"]) > 0)
    markers = probe.got["/sym_mbrl/markers"][-1][0].markers
    assert any(m.ns == "robot" and len(m.points) >= 1 for m in markers)

    # bad commands are dropped, counted and do not advance the simulation
    n = len(states)
    pub.publish(command([1.0, 2.0]))
    pub.publish(command([float("nan")]))
    assert wait_for(lambda: probe.diagnostics("sim_bridge").get("dropped/nan") == "1", 5)
    diag = probe.diagnostics("sim_bridge")
    assert diag["dropped/wrong_size"] == "1" and len(states) == n

    # ~/reset starts a new episode: an event with the boundary, then a fresh state
    client = probe.create_client(Trigger, "/sim_bridge/reset")
    assert client.wait_for_service(timeout_sec=5)
    future = client.call_async(Trigger.Request())
    assert wait_for(future.done) and future.result().success
    assert wait_for(lambda: len(events) >= 2 and len(states) == n + 1)
    event = json.loads(events[-1][0].data)
    last_old = stamps[-1]
    assert event["reason"] == "service" and event["boundary_ns"] == last_old
    new_first = states[-1][0].header.stamp
    assert new_first.sec * 10**9 + new_first.nanosec > event["boundary_ns"]
    graph.remove(bridge)
    graph.remove(probe)


def test_lockstep_is_deterministic(graph, tmp_path):
    probe = graph.add(Probe("probe_det"))
    states = probe.listen(JointState, "/joint_states")
    pub = probe.publisher(Float64MultiArray, CMD)
    actions = np.random.default_rng(0).uniform(-2, 2, 8)
    runs = []
    for _ in range(2):
        states.clear()
        bridge = graph.add(SimBridge(**node_args("pendulum", tmp_path, seed=7)))
        assert probe.wait_matched(CMD)
        time.sleep(0.2)
        states.clear()
        for k, a in enumerate(actions):
            pub.publish(command([a]))
            assert wait_for(lambda k=k: len(states) >= k + 1)
        time.sleep(0.1)
        assert len(states) == len(actions)
        runs.append([(m.position[0], m.velocity[0]) for m, _, _ in states])
        graph.remove(bridge)
        assert wait_for(lambda: pub.get_subscription_count() == 0)
    assert runs[0] == runs[1]
    graph.remove(probe)


def test_realtime_mode_holds_the_last_command(graph, tmp_path):
    probe = graph.add(Probe("probe_rt"))
    states = probe.listen(JointState, "/joint_states")
    bridge = graph.add(SimBridge(**node_args("pendulum", tmp_path, mode="realtime")))
    assert wait_for(lambda: len(states) >= 10, 10)  # no commands needed: physics keeps going
    stamps = np.array([m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
                       for m, _, _ in states[-8:]])
    assert 0.02 < np.median(np.diff(stamps)) < 0.1  # about one control period (50 ms)
    graph.remove(bridge)
    graph.remove(probe)


def test_reacher_target_and_car2d_odometry(graph, tmp_path):
    probe = graph.add(Probe("probe_tasks"))
    targets = probe.listen(PointStamped, "/sym_mbrl/target", QOS_LATCHED)
    states = probe.listen(JointState, "/joint_states")
    reacher = graph.add(SimBridge(**node_args("reacher", tmp_path)))
    assert wait_for(lambda: len(targets) >= 1)  # latched: the episode's target
    t = targets[-1][0].point
    assert 0.04 < np.hypot(t.x, t.y) < 0.2  # the reacher's annulus
    pub = probe.publisher(Float64MultiArray, "/position_controller/commands")
    assert probe.wait_matched("/position_controller/commands")
    pub.publish(command([0.5, -0.5]))
    assert wait_for(lambda: any(list(m.name) == ["shoulder", "elbow"] for m, _, _ in states))
    graph.remove(reacher)

    odom = probe.listen(Odometry, "/odom")
    car = graph.add(SimBridge(**node_args("car2d", tmp_path)))
    twist = probe.publisher(TwistStamped, "/cmd_vel")
    assert probe.wait_matched("/cmd_vel")
    msg = TwistStamped()
    msg.twist.linear.x, msg.twist.angular.z = 1.0, 0.5
    n = len(odom)
    for _ in range(10):
        msg.header.stamp = probe.get_clock().now().to_msg()
        twist.publish(msg)
        time.sleep(0.01)
    assert wait_for(lambda: len(odom) >= n + 5)
    assert odom[-1][0].twist.twist.linear.x > 0.05  # it drives forward
    # the odom -> base_link transform (sent where tf2_ros is installed) is the odometry pose
    last = odom[-1][0]
    tf = car.layout.odom_transform(last)
    assert (tf.header.frame_id, tf.child_frame_id) == (last.header.frame_id, "base_link")
    assert tf.transform.translation.x == last.pose.pose.position.x != 0.0
    assert tf.transform.rotation.z == last.pose.pose.orientation.z
    # a broadcaster exactly where tf2_ros exists (not in the pip-only set-up)
    assert (car.tf is None) == (importlib.util.find_spec("tf2_ros") is None)
    assert any("steering_joint" in m.name for m, _, _ in states)  # the steering on joint_states
    graph.remove(car)
    graph.remove(probe)


def test_odometry_waits_for_the_joint_state_of_the_same_instant(graph):
    """car2d's steering comes on /joint_states, the pose on odom: whichever arrives first,
    the state event carries the joints stamped with the odometry (not the step before)."""
    from types import SimpleNamespace

    from rclpy.node import Node

    from sym_mbrl_ros.nodes.common import Diagnostics
    from sym_mbrl_ros.nodes.topics import StateInput, StateLayout

    layout = StateLayout.parse(["odom.x", "odom.y", "odom.yaw", "odom.vx", "position.steer",
                                "velocity.steer", "target.x", "target.y"], 8)
    node = graph.add(Node("state_input_order"))
    params = SimpleNamespace(layout=layout, state_topic="/order_odom",
                             joint_state_topic="/order_joints", world_frame="odom")
    got: list[float] = []
    inp = StateInput(node, params, Diagnostics(node),
                     lambda ns, values: got.append(inp.joints_at(ns)["position.steer"]), 1e6)
    probe = graph.add(Probe("probe_order"))
    odom = probe.publisher(Odometry, "/order_odom")
    joints = probe.publisher(JointState, "/order_joints")
    assert probe.wait_matched("/order_odom") and probe.wait_matched("/order_joints")
    state = np.array([0.3, -1.2, 2.9, 0.7, 0.1, 0.0, 1.0, 1.5])
    t0 = time.time_ns()
    joints.publish(layout.joint_state(state, ["steer"], t0))  # joints first: passed on at once
    odom.publish(layout.odometry(state, t0))
    assert wait_for(lambda: got == [0.1])
    state[4] = 0.2
    t1 = t0 + 50_000_000
    odom.publish(layout.odometry(state, t1))  # odometry first: held for its joints
    time.sleep(0.3)
    assert got == [0.1]
    joints.publish(layout.joint_state(state, ["steer"], t1))
    assert wait_for(lambda: got == [0.1, 0.2])
    graph.remove(probe)
    graph.remove(node)
