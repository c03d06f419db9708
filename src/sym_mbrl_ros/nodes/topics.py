"""Messages ⇄ the task's vectors: the topic contract of DESIGN.md in one place.

The task's state vector is assembled from message fields named by the ``state_fields``
parameter, one entry per state coordinate, in state order:

* ``position.<joint>``, ``velocity.<joint>``: sensor_msgs/JointState on ``/joint_states``;
* ``odom.x|y|yaw|vx|vy|wz``: nav_msgs/Odometry on ``odom`` (twist in the body frame);
* ``target.x|y|z``: geometry_msgs/PointStamped on ``/sym_mbrl/target`` (transient-local).
  The target is not part of the robot's state message: it belongs to the episode, is latched
  for late joiners, and on a real robot comes from whoever sets goals (rviz's *Publish Point*
  tool, a perception node). Receivers pair a state with the newest target stamped at or
  before it.

The action is published as std_msgs/Float64MultiArray (one value per joint, in the order of
``joint_names``, as ros2_control's forward_command_controller expects) or, for a mobile base,
as geometry_msgs/TwistStamped with ``command_fields`` naming the twist component of each
action coordinate (``linear.x``, ``angular.z``).

Validation raises :class:`BadMessage` with a short reason (the /diagnostics counter name).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import PointStamped, TwistStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension

from .common import QOS_LATCHED, QOS_STREAM, TARGET_TOPIC, stamp_ns

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
class StateLayout:
    """Where each state coordinate comes from (the ``state_fields`` parameter)."""

    fields: tuple[str, ...]

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

    @property
    def joints(self) -> tuple[str, ...]:
        """Joints whose position or velocity is part of the state, first-seen order."""
        out: list[str] = []
        for f in self.fields:
            source, _, key = f.partition(".")
            if source in ("position", "velocity") and key not in out:
                out.append(key)
        return tuple(out)

    @property
    def uses_odom(self) -> bool:
        return any(f.startswith("odom.") for f in self.fields)

    @property
    def needs_target(self) -> bool:
        return any(f.startswith("target.") for f in self.fields)

    @property
    def target_indices(self) -> list[int]:
        return [i for i, f in enumerate(self.fields) if f.startswith("target.")]

    # -------------------------------------------------------------- messages -> values
    def joint_values(self, msg: JointState, known: frozenset[str]) -> dict[str, float]:
        """Validated ``{field: value}`` for the joint fields of a JointState."""
        n = len(msg.name)
        if len(msg.position) != n or (len(msg.velocity) not in (0, n)):
            raise BadMessage("wrong_length", f"JointState has {n} names, {len(msg.position)} "
                             f"positions and {len(msg.velocity)} velocities")
        unknown = [j for j in msg.name if j not in known]
        if unknown:
            raise BadMessage("unknown_joint", f"JointState names unknown joints {unknown}; "
                             f"expected a subset of {sorted(known)}")
        index = {j: i for i, j in enumerate(msg.name)}
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
    """Drops stale and out-of-order stamps of one stream (``max_age_s`` ≤ 0 disables age)."""

    def __init__(self, max_age_s: float):
        self.max_age_ns = int(max_age_s * 1e9)
        self.last_ns = 0

    def check(self, ns: int, now_ns: int) -> None:
        if ns <= self.last_ns:
            raise BadMessage("out_of_order", f"stamp {ns * 1e-9:.6f} is not newer than the "
                             f"previous one ({self.last_ns * 1e-9:.6f})")
        if self.max_age_ns > 0 and abs(now_ns - ns) > self.max_age_ns:
            raise BadMessage("stale", f"stamp {ns * 1e-9:.3f} is {(now_ns - ns) * 1e-9:+.3f} s "
                             f"from now; is the publisher's clock the system clock?")
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
    Invalid messages go to ``diag.drop``.
    """

    def __init__(self, node, params, diag, on_state: Callable[[int, dict[str, float]], None],
                 max_age_s: float, qos=QOS_STREAM):
        self.layout, self.diag, self.on_state = params.layout, diag, on_state
        self.known = frozenset(params.known_joints)
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
            check.check(ns, time.time_ns())
        except BadMessage as exc:
            self.diag.drop(exc.reason, f"{what}: {exc}")
            return None
        return ns, values

    def _joint_state(self, msg: JointState) -> None:
        got = self._check(self.stamps, msg, lambda m: self.layout.joint_values(m, self.known),
                          "JointState")
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
        got = self._check(self.joint_stamps, msg,
                          lambda m: self.layout.joint_values(m, self.known), "JointState")
        if got:
            self.joints.append(got)
            if self._pending is not None and got[0] >= self._pending[0]:
                self._release()

    def _target(self, msg: PointStamped) -> None:
        try:
            values = self.layout.target_values(msg)
        except BadMessage as exc:
            self.diag.drop(exc.reason, f"target: {exc}")
            return
        ns = stamp_ns(msg.header.stamp) or time.time_ns()
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
