"""The input side of the graph over real DDS: joint states with extra joints, targets in other
frames, and one time base (system time, or /clock under use_sim_time) for stamps and commands."""

from __future__ import annotations

import importlib.util
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PointStamped, TransformStamped  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from test_nodes_common import (  # noqa: E402
    Probe,
    command,
    joint_state,
    node_args,
    wait_for,
)

from sym_mbrl_ros.data.store import TransitionStore  # noqa: E402
from sym_mbrl_ros.nodes.common import (  # noqa: E402
    EPISODE_TOPIC,
    QOS_EVENTS,
    QOS_LATCHED,
    QOS_STREAM,
    TARGET_TOPIC,
    Diagnostics,
)
from sym_mbrl_ros.nodes.recorder import Recorder  # noqa: E402
from sym_mbrl_ros.nodes.sim_bridge import SimBridge  # noqa: E402
from sym_mbrl_ros.nodes.topics import StateInput, StateLayout, transform_point  # noqa: E402

pytestmark = pytest.mark.ros
CMD = "/effort_controller/commands"
DT_NS = 50_000_000  # the pendulum's control period


def _probe(graph, name: str) -> Probe:
    p = graph.add(Probe(name))
    p.listen(DiagnosticArray, "/diagnostics")
    p.publisher(JointState, "/joint_states")
    p.publisher(Float64MultiArray, CMD)
    p.publisher(String, EPISODE_TOPIC, QOS_EVENTS)
    p.publisher(Clock, "/clock")
    return p


def _clock(probe, ns: int) -> None:
    msg = Clock()
    msg.clock.sec, msg.clock.nanosec = divmod(ns, 1_000_000_000)
    probe._pubs["/clock"].publish(msg)


def test_joint_states_with_more_joints_than_the_task_are_recorded(graph, tmp_path):
    """joint_state_broadcaster publishes every joint of a robot: the task's joint is picked
    by name (before: the whole message was dropped as unknown_joint and nothing recorded)."""
    probe = _probe(graph, "probe_extra_joints")
    rec = graph.add(Recorder(**node_args("pendulum", tmp_path)))
    for topic in ("/joint_states", CMD, EPISODE_TOPIC):
        assert probe.wait_matched(topic)
    time.sleep(0.3)
    probe._pubs[EPISODE_TOPIC].publish(String(data=json.dumps(
        {"episode": 1, "boundary_ns": time.time_ns() - 1, "mode": "lockstep"})))
    time.sleep(0.2)
    states = np.array([[0.1, 0.5], [0.2, 0.7], [0.35, 0.9], [0.5, 1.1]])
    actions = np.array([[1.0], [-0.5], [0.25]])
    for k, s in enumerate(states):
        # the task's joint in the middle of joints it does not read, positions of all three
        probe._pubs["/joint_states"].publish(joint_state(
            ["wheel", "hinge", "gripper"], [9.0, s[0], -3.0], [8.0, s[1], 7.0]))
        time.sleep(0.003)
        if k < len(actions):
            probe._pubs[CMD].publish(command(actions[k]))
            time.sleep(0.003)
    store = TransitionStore(tmp_path / "transitions.sqlite", readonly=True)
    assert wait_for(lambda: store.count() == 3), probe.diagnostics("recorder")
    batch = store.read()
    np.testing.assert_array_equal(batch.states, states[:3])  # float64 copied, not computed
    np.testing.assert_array_equal(batch.next_states, states[1:])
    np.testing.assert_array_equal(batch.actions, actions)
    # a message without the task's joint is still a counted drop
    probe._pubs["/joint_states"].publish(joint_state(["wheel"], [1.0], [1.0]))
    assert wait_for(lambda: probe.diagnostics("recorder").get("dropped/missing_joint") == "1", 5)
    graph.remove(rec)
    graph.remove(probe)


@pytest.mark.skipif(importlib.util.find_spec("tf2_ros") is not None,
                    reason="with tf2_ros a target in another frame is transformed, not dropped")
def test_a_target_in_another_frame_is_dropped_without_tf2(graph):
    layout = StateLayout.parse(["position.shoulder", "position.elbow", "velocity.shoulder",
                                "velocity.elbow", "target.x", "target.y"], 6)
    node = graph.add(Node("target_frames"))
    params = SimpleNamespace(layout=layout, state_topic="/frames_joints",
                             joint_state_topic="/frames_joints", world_frame="base_link")
    diag = Diagnostics(node)
    inp = StateInput(node, params, diag, lambda ns, values: None, 2.0)
    probe = graph.add(Probe("probe_frames"))
    pub = probe.publisher(PointStamped, TARGET_TOPIC, QOS_LATCHED)
    assert probe.wait_matched(TARGET_TOPIC)

    def target(frame: str, x: float) -> PointStamped:
        msg = PointStamped()
        msg.header.stamp = probe.get_clock().now().to_msg()
        msg.header.frame_id, msg.point.x, msg.point.y = frame, x, 0.1
        return msg

    pub.publish(target("map", 0.3))  # rviz's Publish Point in the fixed frame "map"
    assert wait_for(lambda: diag.counts.get("dropped/wrong_frame") == 1, 5)
    assert inp.target_at() == {}  # not taken for a point in base_link
    pub.publish(target("base_link", 0.15))
    assert wait_for(lambda: inp.target_at() == {"target.x": 0.15, "target.y": 0.1}, 5)
    pub.publish(target("", 0.2))  # no frame at all: just as ambiguous
    assert wait_for(lambda: diag.counts.get("dropped/wrong_frame") == 2, 5)
    graph.remove(probe)
    graph.remove(node)


def test_transform_point_rotates_then_translates():
    """The transform path (used where tf2 is installed): a point 1 m ahead of a frame turned
    90° left and 2 m along x lies at (2, 1)."""
    tf = TransformStamped()
    tf.header.frame_id, tf.child_frame_id = "odom", "base_link"
    tf.transform.translation.x = 2.0
    tf.transform.rotation.z, tf.transform.rotation.w = np.sin(np.pi / 4), np.cos(np.pi / 4)
    p = PointStamped()
    p.header.frame_id, p.point.x, p.point.z = "base_link", 1.0, 0.5
    out = transform_point(p, tf)
    assert out.header.frame_id == "odom"
    # float64 sin/cos of pi/4 round-trip to ~1e-16
    np.testing.assert_allclose([out.point.x, out.point.y, out.point.z], [2.0, 1.0, 0.5],
                               atol=1e-12)


def test_a_replayed_stream_with_its_clock_is_recorded_under_use_sim_time(graph, tmp_path):
    """States stamped a day ago and headerless commands, replayed with a /clock that matches
    the stamps (``ros2 bag play --clock``): with use_sim_time the recorder checks the stamps
    against /clock and times each command by the /clock in force when it was published, so
    the transitions pair as they were recorded (before: every state was stale)."""
    probe = _probe(graph, "probe_replay")
    rec = graph.add(Recorder(**node_args("pendulum", tmp_path, use_sim_time=True,
                                         pairing="hold")))
    for topic in ("/joint_states", CMD, "/clock"):
        assert probe.wait_matched(topic)
    t0 = (time.time_ns() - 86_400 * 10**9) // DT_NS * DT_NS  # a day ago, on the tick
    _clock(probe, t0 - DT_NS)
    time.sleep(0.5)  # the recorder's clock has started
    rng = np.random.default_rng(3)
    states, actions = rng.uniform(-1, 1, (6, 2)), rng.uniform(-2, 2, (5, 1))
    for k, s in enumerate(states):  # what a bag of a 20 Hz robot holds, at full speed
        t = t0 + k * DT_NS
        _clock(probe, t)
        time.sleep(0.005)
        probe._pubs["/joint_states"].publish(joint_state(["hinge"], [s[0]], [s[1]], t))
        time.sleep(0.005)
        if k < len(actions):
            probe._pubs[CMD].publish(command(actions[k]))
            time.sleep(0.005)
    _clock(probe, t0 + len(states) * DT_NS)
    store = TransitionStore(tmp_path / "transitions.sqlite", readonly=True)
    # hold pairing decides a command once a state after its hold arrived: 4 of the 5
    assert wait_for(lambda: store.count() == 4, 10), probe.diagnostics("recorder")
    batch = store.read()
    np.testing.assert_array_equal(batch.states, states[:4])  # float64 copied, not computed
    np.testing.assert_array_equal(batch.next_states, states[1:5])
    np.testing.assert_array_equal(batch.actions, actions[:4])
    stamps_ns = np.round(batch.stamps * 1e9)  # command times, in the replayed clock's time
    # a stamp in seconds (float64) of ~1.7e9 s keeps ~0.2 µs
    np.testing.assert_allclose(stamps_ns, t0 + np.arange(4) * DT_NS, rtol=0, atol=1e3)
    diag = probe.diagnostics("recorder")
    assert "dropped/stale" not in diag and "dropped/no_clock" not in diag, diag
    graph.remove(rec)
    graph.remove(probe)


class Answerer(Node):
    """Answers each state with one command (a controller with ``trigger: state``), and sends a
    zero command while it hears no state (its watchdog), which starts the lockstep world."""

    def __init__(self):
        super().__init__("answerer")
        self.pub = self.create_publisher(Float64MultiArray, CMD, QOS_STREAM)
        self.create_subscription(JointState, "/joint_states", self.on_state, QOS_STREAM)
        self.create_timer(0.5, self.on_watchdog)
        self.heard = 0.0
        self.rng = np.random.default_rng(0)

    def on_state(self, msg: JointState) -> None:
        self.heard = time.monotonic()
        self.pub.publish(command(self.rng.uniform(-2, 2, 1)))

    def on_watchdog(self) -> None:
        if time.monotonic() - self.heard > 0.5:
            self.pub.publish(command([0.0]))


def test_lockstep_in_simulated_time(graph, tmp_path):
    """use_sim_time on the bridge and the recorder: the bridge's /clock is the stamp of each
    state it publishes (one control period apart), and the lockstep exchange runs and is
    recorded in that time (no deadlock)."""
    probe = graph.add(Probe("probe_sim_time"))
    states = probe.listen(JointState, "/joint_states")
    clocks = probe.listen(Clock, "/clock")
    rec = graph.add(Recorder(**node_args("pendulum", tmp_path, use_sim_time=True)))
    bridge = graph.add(SimBridge(**node_args("pendulum", tmp_path, use_sim_time=True,
                                             marker_rate_hz=0.0)))
    answerer = graph.add(Answerer())
    store = TransitionStore(tmp_path / "transitions.sqlite", readonly=True)
    assert wait_for(lambda: store.count() >= 30, 30), probe.diagnostics("recorder")
    graph.remove(answerer)
    time.sleep(0.3)
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m, _, _ in states]
    assert all(s % DT_NS == 0 for s in stamps) and np.all(np.diff(stamps) == DT_NS)
    ticks = {c.clock.sec * 10**9 + c.clock.nanosec for c, _, _ in clocks}
    assert set(stamps) <= ticks  # every state's stamp went out on /clock
    # simulated time: far behind the system clock, just ~ (steps + 1) periods
    assert stamps[-1] < 10**12
    batch = store.read()
    np.testing.assert_allclose(np.diff(batch.stamps[:20]), 0.05, atol=1e-9)  # one per period
    assert bridge.diag.counts.get("skipped/stale_command", 0) <= 1  # the watchdog's overlap
    graph.remove(bridge)
    graph.remove(rec)
    graph.remove(probe)
