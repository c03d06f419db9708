"""Messages ⇄ the task's vectors: the topic contract of DESIGN.md in one place.

The task's state vector is assembled from message fields named by the ``state_fields``
parameter, one entry per state coordinate, in state order:

* ``position.<joint>``, ``velocity.<joint>``: sensor_msgs/JointState on ``/joint_states``;
* ``odom.x|y|yaw|vx|vy|wz``: nav_msgs/Odometry on ``odom`` (twist in the body frame);
* ``target.x|y|z``: geometry_msgs/PointStamped on ``/sym_mbrl/target`` (transient-local).
  The target is not part of the robot's state message: it belongs to the episode, is latched
  for late joiners, and on a real robot comes from whoever sets goals (rviz's *Publish Point*
  tool, a perception node). Receivers pair a state with the newest target stamped at or
  before it. A target must be in ``world_frame``; one in another frame is transformed with
  tf2 where tf2_ros is installed and a transform exists, and dropped (``wrong_frame``)
  otherwise.

A JointState may name any joints (joint_state_broadcaster publishes every joint of the robot):
the joints the state reads are picked by name, the others are ignored.

Times are the node's ROS time: a state's stamp is checked against the node's own clock, which
follows ``/clock`` when the node runs with ``use_sim_time`` (a replayed bag, a simulator that
stamps simulated time), and a command without a header is timed by :class:`CommandInput`.

The action is published as std_msgs/Float64MultiArray (one value per joint, in the order of
``joint_names``, as ros2_control's forward_command_controller expects) or, for a mobile base,
as geometry_msgs/TwistStamped with ``command_fields`` naming the twist component of each
action coordinate (``linear.x``, ``angular.z``).

Validation raises :class:`BadMessage` with a short reason (the /diagnostics counter name).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import PointStamped, TwistStamped
from nav_msgs.msg import Odometry
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension

from ..data.fields import StateFields
from .common import QOS_LATCHED, QOS_STREAM, TARGET_TOPIC, stamp_ns

# A /clock reader that takes any publisher: the sim bridge's (reliable) and rosbag2's
# (best effort). A deep queue: every tick matters for timing commands (CommandInput).
QOS_CLOCK = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                       reliability=ReliabilityPolicy.BEST_EFFORT)

ODOM_KEYS = ("x", "y", "yaw", "vx", "vy", "wz")
TARGET_KEYS = ("x", "y", "z")
TWIST_KEYS = ("linear.x", "linear.y", "linear.z", "angular.x", "angular.y", "angular.z")


class BadMessage(ValueError):
    """A message that must be dropped; ``reason`` names its /diagnostics counter."""

    def __init__(self, reason: str, text: str):
        super().__init__(text)
        self.reason = reason


class ConfigError(ValueError):
    """A parameter combination that cannot work (one sentence, says what to change)."""


@dataclass(frozen=True)
class StateLayout(StateFields):
    """Where each state coordinate comes from (the ``state_fields`` parameter), with the
    conversions between messages and state vectors."""

    @classmethod
    def parse(cls, fields: Sequence[str], state_dim: int | None = None) -> StateLayout:
        if state_dim is not None and len(fields) != state_dim:
            raise ConfigError(f"state_fields has {len(fields)} entries but the task's state has "
                              f"{state_dim} coordinates; give one field per coordinate")
        for f in fields:
            source, _, key = f.partition(".")
            ok = (source in ("position", "velocity") and key) or (
                source == "odom" and key in ODOM_KEYS) or (
                source == "target" and key in TARGET_KEYS)
            if not ok:
                raise ConfigError(
                    f"state field {f!r} is not one of position.<joint>, velocity.<joint>, "
                    f"odom.{{{','.join(ODOM_KEYS)}}}, target.{{{','.join(TARGET_KEYS)}}}")
        return cls(tuple(fields))

    # -------------------------------------------------------------- messages -> values
    def joint_values(self, msg: JointState) -> dict[str, float]:
        """Validated ``{field: value}`` for the joint fields of a JointState; joints the state
        does not read may be there too (a robot publishes all of its joints)."""
        n = len(msg.name)
        if len(msg.position) != n or (len(msg.velocity) not in (0, n)):
            raise BadMessage("wrong_length", f"JointState has {n} names, {len(msg.position)} "
                             f"positions and {len(msg.velocity)} velocities")
        names = list(msg.name)
        twice = [j for j in self.joints if names.count(j) > 1]
        if twice:
            raise BadMessage("duplicate_joint", f"JointState names {twice} more than once")
        index = {j: i for i, j in enumerate(names)}
        out: dict[str, float] = {}
        for f in self.fields:
            source, _, joint = f.partition(".")
            if source not in ("position", "velocity"):
                continue
            if joint not in index:
                raise BadMessage("missing_joint", f"JointState lacks joint {joint!r}")
            values = msg.position if source == "position" else msg.velocity
            if source == "velocity" and not len(values):
                raise BadMessage("wrong_length", f"JointState has no velocities ({f} needed)")
            out[f] = float(values[index[joint]])
        if not all(math.isfinite(v) for v in out.values()):
            raise BadMessage("nan", f"JointState holds NaN or inf: {out}")
        return out

    def odom_values(self, msg: Odometry) -> dict[str, float]:
        p, q, t = msg.pose.pose.position, msg.pose.pose.orientation, msg.twist.twist
        yaw = math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))
        allv = {"odom.x": p.x, "odom.y": p.y, "odom.yaw": yaw, "odom.vx": t.linear.x,
                "odom.vy": t.linear.y, "odom.wz": t.angular.z}
        out = {f: float(allv[f]) for f in self.fields if f in allv}
        if not all(math.isfinite(v) for v in out.values()):
            raise BadMessage("nan", f"Odometry holds NaN or inf: {out}")
        return out

    def target_values(self, msg: PointStamped) -> dict[str, float]:
        allv = {"target.x": msg.point.x, "target.y": msg.point.y, "target.z": msg.point.z}
        out = {f: float(allv[f]) for f in self.fields if f in allv}
        if not all(math.isfinite(v) for v in out.values()):
            raise BadMessage("nan", f"target holds NaN or inf: {out}")
        return out

    def assemble(self, values: dict[str, float]) -> np.ndarray:
        """The state vector from ``{field: value}``; raises BadMessage if a field is missing."""
        try:
            return np.array([values[f] for f in self.fields], dtype=np.float64)
        except KeyError as exc:
            reason = "no_target" if str(exc.args[0]).startswith("target.") else "missing_field"
            raise BadMessage(reason, f"no value yet for state field {exc.args[0]}") from None

    # -------------------------------------------------------------- state -> messages
    def joint_state(self, state: np.ndarray, names: Sequence[str], ns: int) -> JointState:
        """A JointState of ``names`` (zero where the state says nothing about a joint)."""
        pos = dict.fromkeys(names, 0.0)
        vel = dict.fromkeys(names, 0.0)
        for f, v in zip(self.fields, state):
            source, _, joint = f.partition(".")
            if source == "position":
                pos[joint] = float(v)
            elif source == "velocity":
                vel[joint] = float(v)
        msg = JointState()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
        msg.name = list(names)
        msg.position = [pos[j] for j in names]
        msg.velocity = [vel[j] for j in names]
        return msg

    def odometry(self, state: np.ndarray, ns: int, frame: str = "odom",
                 child: str = "base_link") -> Odometry:
        v = {f: float(x) for f, x in zip(self.fields, state)}
        msg = Odometry()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
        msg.header.frame_id, msg.child_frame_id = frame, child
        msg.pose.pose.position.x = v.get("odom.x", 0.0)
        msg.pose.pose.position.y = v.get("odom.y", 0.0)
        yaw = v.get("odom.yaw", 0.0)
        msg.pose.pose.orientation.z, msg.pose.pose.orientation.w = math.sin(yaw / 2), math.cos(
            yaw / 2)
        msg.twist.twist.linear.x = v.get("odom.vx", 0.0)
        msg.twist.twist.linear.y = v.get("odom.vy", 0.0)
        msg.twist.twist.angular.z = v.get("odom.wz", 0.0)
        return msg

    @staticmethod
    def odom_transform(odom: Odometry):
        """The odom → base_link transform an Odometry message describes (for tf2)."""
        from geometry_msgs.msg import TransformStamped

        tf = TransformStamped()
        tf.header = odom.header
        tf.child_frame_id = odom.child_frame_id
        p, t = odom.pose.pose.position, tf.transform.translation
        t.x, t.y, t.z = p.x, p.y, p.z
        tf.transform.rotation = odom.pose.pose.orientation
        return tf

    def target(self, state: np.ndarray, ns: int, frame: str = "world") -> PointStamped | None:
        if not self.needs_target:
            return None
        v = {f: float(x) for f, x in zip(self.fields, state)}
        msg = PointStamped()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
        msg.header.frame_id = frame
        msg.point.x, msg.point.y, msg.point.z = (v.get(f"target.{k}", 0.0) for k in TARGET_KEYS)
        return msg


@dataclass(frozen=True)
class CommandCodec:
    """Action vector ⇄ command message (``command_type`` array or twist)."""

    kind: str  # "array" | "twist"
    action_dim: int
    twist_fields: tuple[str, ...] = ()

    @classmethod
    def parse(cls, kind: str, action_dim: int, twist_fields: Sequence[str] = ()) -> CommandCodec:
        if kind == "array":
            return cls("array", action_dim)
        if kind == "twist":
            bad = [f for f in twist_fields if f not in TWIST_KEYS]
            if bad or len(twist_fields) != action_dim:
                raise ConfigError(f"command_fields must name {action_dim} of {TWIST_KEYS} "
                                  f"(one per action coordinate), got {list(twist_fields)}")
            return cls("twist", action_dim, tuple(twist_fields))
        raise ConfigError(f"command_type must be 'array' or 'twist', not {kind!r}")

    @property
    def msg_type(self):
        return Float64MultiArray if self.kind == "array" else TwistStamped

    def to_msg(self, action: np.ndarray, ns: int, frame: str = "base_link"):
        if self.kind == "array":
            msg = Float64MultiArray()
            msg.layout.dim = [MultiArrayDimension(label="joints", size=self.action_dim, stride=1)]
            msg.data = [float(a) for a in action]
            return msg
        msg = TwistStamped()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
        msg.header.frame_id = frame
        for f, a in zip(self.twist_fields, action):
            part, _, axis = f.partition(".")
            setattr(getattr(msg.twist, part), axis, float(a))
        return msg

    def from_msg(self, msg, source_ns: int | None = None) -> tuple[np.ndarray, int | None]:
        """The action and its time (header stamp, else the DDS source timestamp)."""
        if self.kind == "array":
            a = np.asarray(msg.data, dtype=np.float64)
            ns = source_ns
        else:
            a = np.array([getattr(getattr(msg.twist, f.partition(".")[0]), f.partition(".")[2])
                          for f in self.twist_fields], dtype=np.float64)
            ns = stamp_ns(msg.header.stamp) or source_ns
        if a.shape != (self.action_dim,):
            raise BadMessage("wrong_size", f"command has {a.size} values, expected "
                             f"{self.action_dim} (one per joint, in the config's joint order)")
        if not np.all(np.isfinite(a)):
            raise BadMessage("nan", f"command holds NaN or inf: {a.tolist()}")
        return a, ns


class StampCheck:
    """Drops stale and out-of-order stamps of one stream (``max_age_s`` ≤ 0 disables age).

    ``now_ns`` is the receiving node's ROS time: the system clock, or ``/clock`` under
    ``use_sim_time`` (0 until the first ``/clock`` message has arrived).
    """

    def __init__(self, max_age_s: float):
        self.max_age_ns = int(max_age_s * 1e9)
        self.last_ns = 0

    def check(self, ns: int, now_ns: int) -> None:
        """Raise :class:`BadMessage` unless ``ns`` is newer than the last and recent."""
        if ns <= self.last_ns:
            raise BadMessage("out_of_order", f"stamp {ns * 1e-9:.6f} is not newer than the "
                             f"previous one ({self.last_ns * 1e-9:.6f})")
        if self.max_age_ns > 0 and now_ns <= 0:
            raise BadMessage("no_clock", "use_sim_time is set but no /clock message has "
                             "arrived yet; start the clock source (sim bridge, bag play --clock)")
        if self.max_age_ns > 0 and abs(now_ns - ns) > self.max_age_ns:
            raise BadMessage("stale", f"stamp {ns * 1e-9:.3f} is {(now_ns - ns) * 1e-9:+.3f} s "
                             f"from this node's clock; does the publisher stamp with the clock "
                             f"the nodes use (system time, or /clock with use_sim_time)?")
        self.last_ns = ns

    def reset(self) -> None:
        self.last_ns = 0


class StateInput:
    """The state topics of a node: subscribes to what the layout reads and validates it.

    Each valid message of the primary state topic (JointState, or Odometry when the layout
    reads ``odom.*``) calls ``on_state(stamp_ns, values)``. Joint values read from
    ``/joint_states`` next to an Odometry primary (car2d's steering) and targets are kept with
    their stamps; :meth:`joints_at` and :meth:`target_at` give the newest at or before a stamp.
    An Odometry is passed on once a secondary joint state stamped at or after it has arrived
    (or when the next Odometry comes), so the two topics' delivery order does not matter.
    Stamps are checked against the node's clock (ROS time). Targets are brought into
    ``params.world_frame`` (:class:`TargetFrame`). Invalid messages go to ``diag.drop``.
    """

    def __init__(self, node, params, diag, on_state: Callable[[int, dict[str, float]], None],
                 max_age_s: float, qos=QOS_STREAM):
        self.layout, self.diag, self.on_state = params.layout, diag, on_state
        self.clock = node.get_clock()
        self.target_frame = TargetFrame(node, params.world_frame) if (
            self.layout.needs_target) else None
        self.stamps, self.joint_stamps = StampCheck(max_age_s), StampCheck(max_age_s)
        self.joints: deque[tuple[int, dict[str, float]]] = deque(maxlen=200)
        self.targets: deque[tuple[int, dict[str, float]]] = deque(maxlen=20)
        self._pending: tuple[int, dict[str, float]] | None = None
        if self.layout.uses_odom:
            subs = [node.create_subscription(Odometry, params.state_topic, self._odom, qos)]
            if self.layout.joints:
                subs.append(node.create_subscription(JointState, params.joint_state_topic,
                                                     self._secondary, qos))
        else:
            subs = [node.create_subscription(JointState, params.state_topic, self._joint_state,
                                             qos)]
        if self.layout.needs_target:
            subs.append(node.create_subscription(PointStamped, TARGET_TOPIC, self._target,
                                                 QOS_LATCHED))
        self.subscriptions = subs

    def _check(self, check: StampCheck, msg, values_of, what: str):
        try:
            values = values_of(msg)
            ns = stamp_ns(msg.header.stamp)
            check.check(ns, self.clock.now().nanoseconds)
        except BadMessage as exc:
            self.diag.drop(exc.reason, f"{what}: {exc}")
            return None
        return ns, values

    def _joint_state(self, msg: JointState) -> None:
        got = self._check(self.stamps, msg, self.layout.joint_values, "JointState")
        if got:
            self.diag.count("states")
            self.on_state(*got)

    def _odom(self, msg: Odometry) -> None:
        got = self._check(self.stamps, msg, self.layout.odom_values, "Odometry")
        if not got:
            return
        self.diag.count("states")
        if not self.layout.joints:
            self.on_state(*got)
            return
        # The joints (car2d's steering) travel on their own topic and may arrive after the
        # odometry of the same instant: hold the odometry until a joint state stamped at or
        # after it is in, so that joints_at(stamp) is that instant's and not the one before.
        # (A newer odometry releases a held one with the joints there are.)
        if self._pending is not None:
            self._release()
        self._pending = got
        if self.joints and self.joints[-1][0] >= got[0]:
            self._release()

    def _release(self) -> None:
        pending, self._pending = self._pending, None
        self.on_state(*pending)

    def _secondary(self, msg: JointState) -> None:
        got = self._check(self.joint_stamps, msg, self.layout.joint_values, "JointState")
        if got:
            self.joints.append(got)
            if self._pending is not None and got[0] >= self._pending[0]:
                self._release()

    def _target(self, msg: PointStamped) -> None:
        try:
            values = self.layout.target_values(self.target_frame(msg))
        except BadMessage as exc:
            self.diag.drop(exc.reason, f"target: {exc}")
            return
        ns = stamp_ns(msg.header.stamp) or self.clock.now().nanoseconds
        while self.targets and self.targets[-1][0] >= ns:
            self.targets.pop()
        self.targets.append((ns, values))

    @staticmethod
    def _at(history, ns: int | None) -> dict[str, float]:
        for t_ns, values in reversed(history):
            if ns is None or t_ns <= ns:
                return values
        return {}

    def joints_at(self, ns: int | None = None) -> dict[str, float]:
        """Secondary joint values stamped at or before ``ns`` (None: the newest)."""
        return self._at(self.joints, ns)

    def target_at(self, ns: int | None = None) -> dict[str, float]:
        """The target stamped at or before ``ns`` (None: the newest)."""
        return self._at(self.targets, ns)


def transform_point(msg: PointStamped, tf) -> PointStamped:
    """``msg`` moved by a geometry_msgs/TransformStamped (rotation, then translation) into the
    transform's ``header.frame_id``."""
    q, t, p = tf.transform.rotation, tf.transform.translation, msg.point
    u, v = np.array([q.x, q.y, q.z]), np.array([p.x, p.y, p.z])
    c = np.cross(u, v)
    moved = v + 2.0 * q.w * c + 2.0 * np.cross(u, c) + np.array([t.x, t.y, t.z])
    out = PointStamped()
    out.header.stamp = msg.header.stamp
    out.header.frame_id = tf.header.frame_id
    out.point.x, out.point.y, out.point.z = (float(x) for x in moved)
    return out


class TargetFrame:
    """Brings a target into the frame the task's coordinates are in (``world_frame``).

    A target in another frame is transformed with the newest transform tf2 knows, where tf2_ros
    is installed (a full ROS 2 install); without tf2 (the pip-only set-up), or without a
    transform, it is a :class:`BadMessage` (``wrong_frame``): a point in an unknown frame would
    silently be a different goal.
    """

    def __init__(self, node, frame: str):
        self.frame = frame
        self.buffer = _tf_buffer(node)

    def __call__(self, msg: PointStamped) -> PointStamped:
        source = msg.header.frame_id
        if source == self.frame:
            return msg
        if self.buffer is None:
            raise BadMessage("wrong_frame", f"target is in frame {source!r}, not {self.frame!r}, "
                             f"and tf2_ros is not installed to transform it")
        try:
            from rclpy.time import Time

            tf = self.buffer.lookup_transform(self.frame, source, Time())
        except Exception as exc:  # tf2's Lookup/Connectivity/Extrapolation exceptions
            raise BadMessage("wrong_frame", f"target is in frame {source!r}, not {self.frame!r}, "
                             f"and tf2 has no transform between them ({exc})") from None
        return transform_point(msg, tf)


def _tf_buffer(node):
    """A tf2 buffer filled by a listener on ``node``; None where tf2_ros is not installed."""
    try:
        from tf2_ros import Buffer, TransformListener
    except ImportError:
        return None
    buffer = Buffer()
    buffer.listener = TransformListener(buffer, node)  # kept alive with the buffer
    return buffer


class CommandInput:
    """The command topic of a node: each valid command as ``on_command(ns, action)``, with its
    time ``ns`` in the node's clock (ROS time).

    A TwistStamped's time is its header stamp. A Float64MultiArray has no header: its time is
    the moment it was published, the DDS source timestamp, which is system time. On a node
    that follows ``/clock`` (``use_sim_time``) that moment is converted to ROS time: the value
    of the newest ``/clock`` published at or before it (by the clock messages' own source
    timestamps). The command is held until a ``/clock`` published after it has arrived, so the
    result does not depend on which of the two topics is delivered first.
    """

    def __init__(self, node, params, diag, on_command: Callable[[int, np.ndarray], None],
                 qos=QOS_STREAM):
        self.codec, self.diag, self.on_command = params.codec, diag, on_command
        self.clock = node.get_clock()
        self.clocks: deque[tuple[int, int]] = deque(maxlen=1000)  # (source ns, clock ns)
        self.held: deque[tuple[int, np.ndarray]] = deque(maxlen=200)  # (source ns, action)
        self.subscriptions = [node.create_subscription(
            self.codec.msg_type, params.command_topic, self._command, qos)]
        self.sim_time = bool(node.get_parameter("use_sim_time").value)
        if self.sim_time and self.codec.kind == "array":
            self.subscriptions.append(node.create_subscription(Clock, "/clock", self._clock,
                                                               QOS_CLOCK))

    def _command(self, msg, info: dict) -> None:
        source_ns = info.get("source_timestamp")
        try:
            action, ns = self.codec.from_msg(msg, source_ns)
        except BadMessage as exc:
            self.diag.drop(exc.reason, f"command: {exc}")
            return
        if self.codec.kind == "array" and self.sim_time:
            self.held.append((int(source_ns), action))
            self._release()
            return
        self.on_command(ns or self.clock.now().nanoseconds, action)

    def _clock(self, msg: Clock, info: dict) -> None:
        ns = stamp_ns(msg.clock)
        if self.clocks and ns < self.clocks[-1][1]:
            self.clocks.clear()  # the clock went back (a bag played again): a new timeline
        self.clocks.append((int(info.get("source_timestamp", 0)), ns))
        self._release()

    def _release(self) -> None:
        """Pass on the held commands that a later /clock has covered, oldest first."""
        if not self.clocks:
            return
        newest_source = self.clocks[-1][0]
        while self.held and self.held[0][0] <= newest_source:
            source_ns, action = self.held.popleft()
            ns = next((c for s, c in reversed(self.clocks) if s <= source_ns), None)
            if ns is None:
                self.diag.drop("no_clock", "command published before the first /clock")
                continue
            self.on_command(ns, action)
