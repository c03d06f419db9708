"""sim_bridge: a task's MuJoCo model behind the same topics a real robot driver publishes.

Subscribes to the command topic, publishes the state (``/joint_states`` or ``odom``), the
target, markers and episode events; ``~/reset`` starts a new episode.

Time: the bridge's stamps are the time the nodes of its graph read, one time base or the
other, never a mix (docs/ros.md, *Time*):
* ``use_sim_time:=false`` (default): states are stamped with the system clock, like a
  driver's, and no ``/clock`` is published (nothing would follow it).
* ``use_sim_time:=true``: the bridge is the clock. Every published state advances simulated
  time by one control period (a reset too), ``/clock`` carries it, published before the state
  it stamps, and again every 0.1 s of wall time while the world waits (lockstep), so nodes
  that start late learn the time. Every node of the graph must then run with
  ``use_sim_time:=true``.

Modes:
* ``lockstep``: each command advances one control period, then the new state is published:
  deterministic for a given command sequence, and as fast as the controller sends. A command
  published before the current state (its DDS source timestamp against the moment the state
  went out, so in either time base; a duplicate, or one in flight across a reset) is skipped,
  which keeps exactly one command per state. After the
  last state of an episode, the next command starts the new episode instead of stepping.
  Nothing is published until a command arrives: the controller's watchdog sends a zero
  command when it has no state, which starts the exchange.
* ``realtime``: a wall-clock timer (steady, whatever ``use_sim_time`` says) advances one
  control period per tick holding the last command (zero before the first), like a robot
  that keeps executing its last setpoint.

Episodes: as soon as an episode ends (or ``~/reset`` is called, or at start-up) the bridge
publishes an event on ``/sym_mbrl/episode`` (JSON ``{"episode", "boundary_ns", "stamp",
"reason", "mode"}``): the new episode holds the states stamped *after* ``boundary_ns``, the
stamp of the old episode's last state. Announcing the end right away, before any command
could answer that last state, lets the recorder know the boundary before it needs it.
"""

from __future__ import annotations

import json
import time

import numpy as np
from geometry_msgs.msg import Point, PointStamped
from nav_msgs.msg import Odometry
from rclpy.clock import Clock as NodeClock
from rclpy.clock import ClockType
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from ..envs.base import check_action
from .common import (
    EPISODE_TOPIC,
    MARKER_TOPIC,
    QOS_EVENTS,
    QOS_LATCHED,
    QOS_STREAM,
    TARGET_TOPIC,
    Diagnostics,
    declare,
    run,
)
from .params import TaskParams
from .topics import BadMessage, CommandCodec, StateLayout


class SimBridge(Node):
    """Runs the task's gymnasium env and speaks the robot's topic contract."""

    def __init__(self, **kwargs):
        super().__init__("sim_bridge", **kwargs)
        self.p = TaskParams.declare(self)
        self.mode = declare(self, "mode", "lockstep",
                            "lockstep: one control period per command; realtime: wall-clock "
                            "physics holding the last command")
        self.seed = declare(self, "seed", 0, "seed of the first env.reset (episodes follow it)")
        self.marker_rate = declare(self, "marker_rate_hz", 10.0,
                                   "markers per wall-clock second (0 disables them)")
        self.frame = self.p.world_frame  # of the markers, the target and the odometry
        if self.mode not in ("lockstep", "realtime"):
            raise SystemExit(f"sim_bridge: mode must be lockstep or realtime, not {self.mode!r}")
        task = self.p.task
        self.env = task.make_env()
        self.layout: StateLayout = self.p.layout
        self.codec: CommandCodec = self.p.codec
        self.diag = Diagnostics(self)

        state_type = Odometry if self.layout.uses_odom else JointState
        self.state_pub = self.create_publisher(state_type, self.p.state_topic, QOS_STREAM)
        # next to odometry, the joints (car2d's steering) go on /joint_states, same stamp
        self.joint_pub = (self.create_publisher(JointState, self.p.joint_state_topic, QOS_STREAM)
                          if self.layout.uses_odom else None)
        self.target_pub = (self.create_publisher(PointStamped, TARGET_TOPIC, QOS_LATCHED)
                           if self.layout.needs_target else None)
        self.episode_pub = self.create_publisher(String, EPISODE_TOPIC, QOS_EVENTS)
        self.sim_time = bool(self.get_parameter("use_sim_time").value)
        self.clock_pub = self.create_publisher(Clock, "/clock", 10) if self.sim_time else None
        self.marker_pub = self.create_publisher(MarkerArray, MARKER_TOPIC, 10)
        self.create_subscription(self.codec.msg_type, self.p.command_topic, self.on_command,
                                 QOS_STREAM)
        self.create_service(Trigger, "~/reset", self.on_reset)
        # (a world frame named like the car's own frame would make a self-loop tf2 rejects)
        self.tf = (_tf_broadcaster(self) if self.layout.uses_odom and self.frame != "base_link"
                   else None)

        self.dt_ns = int(round(task.dt * 1e9))
        self.ticks = 0  # control periods of simulated time so far
        self.episode = 0
        self.episode_return = 0.0
        self.held = np.clip(np.zeros(task.action_dim), task.action_low, task.action_high)
        self._last_marker = 0.0
        self.state_ns = 0 if self.sim_time else time.time_ns()  # stamp of the newest state
        self.state_sys_ns = 0  # system time at which it was published
        self.done = False
        self._announce("start")
        self.state = self._reset(seed=self.seed)
        # wall-clock timers: under use_sim_time the node's own clock follows this bridge
        wall = NodeClock(clock_type=ClockType.STEADY_TIME)
        if self.mode == "realtime":
            self.create_timer(task.dt, self.on_tick, clock=wall)
        if self.sim_time:
            self.create_timer(0.1, self._publish_clock, clock=wall)
        self.get_logger().info(
            f"{task.name} in {self.mode} mode: commands on {self.p.command_topic}, state on "
            f"{self.p.state_topic}, dt={task.dt:g}s, stamps in "
            f"{'simulated time (/clock)' if self.sim_time else 'system time'}")

    # ------------------------------------------------------------------ episodes
    def _announce(self, reason: str) -> None:
        """Publish that a new episode begins with the first state stamped after the current."""
        self.episode += 1
        self.episode_pub.publish(String(data=json.dumps(
            {"episode": self.episode, "boundary_ns": self.state_ns,
             "stamp": self.state_ns * 1e-9, "reason": reason, "mode": self.mode})))
        self.diag.set("episode", self.episode)

    def _reset(self, seed: int | None = None) -> np.ndarray:
        _, info = self.env.reset(seed=seed)
        state = np.asarray(info["state"], dtype=np.float64)
        self.episode_return = 0.0
        self.done = False
        ns = self._advance()
        if self.target_pub is not None:
            self.target_pub.publish(self.layout.target(state, ns, self.frame))
        self._publish_state(state, ns)
        return state

    def on_reset(self, request, response):
        self._announce("service")
        self.state = self._reset()
        response.success = True
        response.message = f"episode {self.episode} started"
        return response

    # ------------------------------------------------------------------ stepping
    def _step(self, action: np.ndarray) -> None:
        task = self.p.task
        a = check_action(action, task.action_low, task.action_high)
        _, reward, terminated, truncated, info = self.env.step(a)
        self.state = np.asarray(info["state"], dtype=np.float64)
        self.episode_return += float(reward)
        self.diag.count("steps")
        self._publish_state(self.state, self._advance())
        if terminated or truncated:
            self.diag.set("last_return", float(self.episode_return))
            self.diag.count("episodes")
            self.done = True
            self._announce("terminated" if terminated else "truncated")

    def on_command(self, msg, info: dict) -> None:
        source_ns = info.get("source_timestamp")
        try:
            action, _ = self.codec.from_msg(msg, source_ns)
        except BadMessage as exc:
            self.diag.drop(exc.reason, str(exc))
            return
        self.diag.count("commands")
        self.held = action
        if self.mode != "lockstep":
            return
        if source_ns is not None and source_ns <= self.state_sys_ns:
            self.diag.count("skipped/stale_command")
            return
        if self.done:
            self.state = self._reset()
        else:
            self._step(action)

    def on_tick(self) -> None:
        self._step(self.held)
        if self.done:
            self.state = self._reset()

    # ------------------------------------------------------------------ output
    def _advance(self) -> int:
        """The stamp of the next state: the system clock, or (``use_sim_time``) one control
        period more of simulated time, announced on /clock before the state goes out."""
        if not self.sim_time:
            return time.time_ns()
        self.ticks += 1
        self._publish_clock()
        return self.ticks * self.dt_ns

    def _publish_clock(self) -> None:
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = divmod(self.ticks * self.dt_ns, 1_000_000_000)
        self.clock_pub.publish(msg)

    def _publish_state(self, state: np.ndarray, ns: int) -> None:
        self.state_sys_ns = time.time_ns()
        if self.layout.uses_odom:
            self.joint_pub.publish(self.layout.joint_state(state, self.p.published_joints, ns))
            odom = self.layout.odometry(state, ns, frame=self.frame)
            self.state_pub.publish(odom)
            if self.tf is not None:  # odom -> base_link for rviz, where tf2 is installed
                self.tf.sendTransform(self.layout.odom_transform(odom))
        else:
            self.state_pub.publish(self.layout.joint_state(state, self.p.published_joints, ns))
        self.state_ns = ns
        if self.marker_rate > 0 and time.monotonic() - self._last_marker >= 1 / self.marker_rate:
            self._last_marker = time.monotonic()
            self.marker_pub.publish(self._markers(state, ns))

    def _markers(self, state: np.ndarray, ns: int) -> MarkerArray:
        out = MarkerArray()
        if self.layout.needs_target:
            m = _marker(0, "target", Marker.SPHERE, ns, (1.0, 0.2, 0.2, 0.9), 0.05, self.frame)
            v = dict(zip(self.layout.fields, state))
            m.pose.position.x = v.get("target.x", 0.0)
            m.pose.position.y = v.get("target.y", 0.0)
            m.pose.position.z = v.get("target.z", 0.0)
            out.markers.append(m)
        data = getattr(self.env.unwrapped, "data", None)
        if data is not None and len(data.xpos) > 1:
            m = _marker(1, "robot", Marker.LINE_STRIP, ns, (0.2, 0.5, 1.0, 1.0), 0.03,
                        self.frame)
            m.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2]))
                        for p in data.xpos[1:]]
            out.markers.append(m)
        return out

    def close(self) -> None:
        self.env.close()


def _tf_broadcaster(node):
    """tf2_ros's TransformBroadcaster on a full ROS 2 install; None where tf2 is absent
    (the pip-only set-up), and the odometry topic alone carries the pose."""
    try:
        from tf2_ros import TransformBroadcaster
    except ImportError:
        return None
    return TransformBroadcaster(node)


def _marker(mid: int, ns_name: str, kind: int, ns: int, rgba, size: float,
            frame: str) -> Marker:
    m = Marker()
    m.header.frame_id = frame
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(ns, 1_000_000_000)
    m.ns, m.id, m.type, m.action = ns_name, mid, kind, Marker.ADD
    m.pose.orientation.w = 1.0
    m.scale.x = m.scale.y = m.scale.z = size
    m.color.r, m.color.g, m.color.b, m.color.a = rgba
    return m


def main(args=None) -> int:
    return run(SimBridge, args)


if __name__ == "__main__":
    raise SystemExit(main())
