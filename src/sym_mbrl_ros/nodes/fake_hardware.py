"""fake_hardware: a stand-in for a ros2_control robot, to prove the hardware path without one.

It is *not* the learning simulator (``sim_bridge``): the robot is the task's URDF with
perturbed physical parameters (``mass_scale``, ``length_scale``, ``damping``, ``friction``,
``gravity_scale``), integrated at 1 kHz in MuJoCo and tied to the wall clock. Like a driver
with joint_state_broadcaster and forward_command_controller it

* publishes every joint at ``rate_hz`` (default 100 Hz, free-running, never in lockstep with
  the controller), including ``extra_joints`` the task does not use (a passive joint), with
  positions quantised to ``encoder_counts_per_rev`` and Gaussian velocity noise
  (``velocity_noise_std``); ``effort`` carries the applied actuator effort. States are stamped
  with the measurement time in this node's own (system) clock;
* listens on the task's command topic (the sim bridge's), applies each command
  ``actuator_delay_ms`` after it arrived and holds it until the next;
* after ``command_timeout_ms`` without a command applies the interface's safe action: zero
  effort or velocity, or the last measured position for position servos (Reacher).

A mobile base (car2d) also publishes odometry from its chassis. A task with a target
(Reacher, Car2d) gets the simulator's first target on ``/sym_mbrl/target``, as an operator
would set one goal. It never resets: episodes are windows on a continuing robot.
"""

from __future__ import annotations

import math
import time
from collections import deque

import mujoco
import numpy as np
from geometry_msgs.msg import PointStamped
from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import JointState

from .common import QOS_LATCHED, QOS_STREAM, TARGET_TOPIC, Diagnostics, declare, run
from .params import TaskParams
from .topics import BadMessage

PHYSICS_DT = 0.001
"""Integration step of the fake robot (s): fine enough to resolve a 1 ms actuator delay."""
MAX_CATCH_UP_S = 0.25
"""A stall longer than this (the process was starved) is skipped, not integrated at once."""


class FakeHardware(Node):
    """A perturbed MuJoCo robot behind a ros2_control-like driver; see the module docstring."""

    def __init__(self, **kwargs):
        super().__init__("fake_hardware", **kwargs)
        self.p = TaskParams.declare(self)
        task = self.p.task
        self.rate = declare(self, "rate_hz", 100.0, "joint state rate (Hz), free-running")
        seed = declare(self, "seed", 0, "seed of the start state and the velocity noise")
        scales = {
            "mass_scale": declare(self, "mass_scale", 1.0,
                                  "every link's mass and rotational inertia times this"),
            "length_scale": declare(self, "length_scale", 1.0,
                                    "every link's centre-of-mass offset times this, its "
                                    "inertia times its square (a longer link, same joints)"),
            "gravity_scale": declare(self, "gravity_scale", 1.0, "gravity times this"),
        }
        self.damping = declare(self, "damping", 0.0,
                               "viscous damping added to every task joint (N m s/rad)")
        self.friction = declare(self, "friction", 0.0,
                                "dry (Coulomb) friction added to every task joint (N m)")
        self.cpr = declare(self, "encoder_counts_per_rev", 4096,
                           "position quantisation of revolute joints (0: none)")
        self.vel_noise = declare(self, "velocity_noise_std", 0.0,
                                 "std of the Gaussian noise on published velocities (rad/s)")
        self.delay_ns = int(1e6 * declare(self, "actuator_delay_ms", 5.0,
                                          "a command takes effect this long after it arrives"))
        self.timeout_ns = int(1e6 * declare(self, "command_timeout_ms", 200.0,
                                            "safe action after this long without a command"))
        self.extra = [j for j in declare(self, "extra_joints", ["passive_joint"],
                                         "joints published (position 0) that the task does "
                                         "not use; [''] for none") if j]
        initial = declare(self, "initial_positions", ("float", []),
                          "start positions of the task's joints (empty: a random start)")
        if self.rate <= 0 or self.timeout_ns <= 0 or self.delay_ns < 0 or self.cpr < 0:
            raise SystemExit("fake_hardware: rate_hz and command_timeout_ms must be positive, "
                             "actuator_delay_ms and encoder_counts_per_rev not negative")
        self.env = task.make_env().unwrapped  # the MuJoCo robot, no episode time limit
        self.env.reset(seed=seed)
        self.model, self.data = self.env.model, self.env.data
        self._perturb(scales)
        if initial:
            if len(initial) != len(task.joint_names):
                raise SystemExit(f"fake_hardware: initial_positions needs "
                                 f"{len(task.joint_names)} values ({list(task.joint_names)})")
            self.data.qpos[self.env._joint_qpos] = initial
            self.data.qvel[:] = 0.0
        mujoco.mj_forward(self.model, self.data)
        self.rng = np.random.default_rng(seed + 1)
        self.interface = _interface(self.model, self.p.codec.kind)
        self.low, self.high = task.action_low.astype(float), task.action_high.astype(float)
        self.diag = Diagnostics(self)
        self.diag.set("interface", self.interface)

        uses_odom = self.p.layout.uses_odom
        joint_topic = self.p.joint_state_topic if uses_odom else self.p.state_topic
        self.joint_pub = self.create_publisher(JointState, joint_topic, QOS_STREAM)
        self.odom_pub = (self.create_publisher(Odometry, self.p.state_topic, QOS_STREAM)
                         if uses_odom else None)
        self.create_subscription(self.p.codec.msg_type, self.p.command_topic, self.on_command,
                                 QOS_STREAM)
        self.target_pub = (self.create_publisher(PointStamped, TARGET_TOPIC, QOS_LATCHED)
                           if self.p.layout.needs_target else None)
        if self.target_pub is not None:
            self.target_pub.publish(
                self.p.layout.target(self.env._read_state(), time.time_ns(), "base_link"))

        self.pending: deque[tuple[int, np.ndarray]] = deque()  # (apply at ns, action)
        self.last_command_ns: int | None = None
        self.applied = self._safe_action()
        self.timed_out = True
        self.start_ns = time.time_ns()
        self.sim_ns = 0
        self.create_timer(1.0 / self.rate, self.on_tick)
        self.get_logger().info(
            f"fake {task.name} robot ({self.interface} interface): commands on "
            f"{self.p.command_topic}, joints on {joint_topic} at {self.rate:g} Hz; "
            f"{', '.join(f'{k}={v:g}' for k, v in scales.items())}, damping={self.damping:g}, "
            f"friction={self.friction:g}")

    # ------------------------------------------------------------------ the robot
    def _perturb(self, scales: dict[str, float]) -> None:
        m = self.model
        mass, length = scales["mass_scale"], scales["length_scale"]
        if min(mass, length) <= 0 or self.damping < 0 or self.friction < 0:
            raise SystemExit("fake_hardware: mass_scale and length_scale must be positive, "
                             "damping and friction not negative")
        m.body_mass[1:] *= mass
        m.body_inertia[1:] *= mass * length**2
        m.body_ipos[1:] *= length
        m.opt.gravity[:] *= scales["gravity_scale"]
        dofs = self.env._joint_dof
        m.dof_damping[dofs] += self.damping
        m.dof_frictionloss[dofs] += self.friction
        if self.friction > 0:  # frictionloss is a constraint: the solver must run
            m.opt.disableflags &= ~int(mujoco.mjtDisableBit.mjDSBL_CONSTRAINT)
        m.opt.timestep = PHYSICS_DT

    def _safe_action(self) -> np.ndarray:
        """Zero effort or velocity; the measured positions for position servos."""
        if self.interface == "position":
            q = self.data.qpos[self.env._joint_qpos]
            return np.clip(q, self.low, self.high)
        return np.clip(np.zeros_like(self.low), self.low, self.high)

    def on_command(self, msg, info: dict) -> None:
        try:
            action, _ = self.p.codec.from_msg(msg, info.get("source_timestamp"))
        except BadMessage as exc:
            self.diag.drop(exc.reason, f"command: {exc}")
            return
        now = time.time_ns()
        self.pending.append((now + self.delay_ns, np.clip(action, self.low, self.high)))
        self.last_command_ns = now
        self.diag.count("commands")

    def _control(self, now_ns: int) -> None:
        """The command in force at ``now_ns`` (delay, hold, timeout) into ``data.ctrl``."""
        while self.pending and self.pending[0][0] <= now_ns:
            _, self.applied = self.pending.popleft()
            self.timed_out = False
        if self.last_command_ns is None or now_ns - self.last_command_ns > self.timeout_ns:
            if not self.timed_out:
                self.timed_out = True
                self.applied = self._safe_action()
                self.pending.clear()
                self.diag.count("command_timeouts")
                self.diag.warn("timeout", f"no command for {self.timeout_ns * 1e-6:.0f} ms: "
                               f"safe action ({self.interface})")
        self.env._set_control(self.applied)

    def on_tick(self) -> None:
        now = time.time_ns()
        behind = now - self.start_ns - self.sim_ns
        if behind > MAX_CATCH_UP_S * 1e9:  # starved: skip the gap rather than race through it
            self.diag.count("overruns")
            self.sim_ns = now - self.start_ns - int(PHYSICS_DT * 1e9)
        step_ns = int(PHYSICS_DT * 1e9)
        stepped = False
        while self.start_ns + self.sim_ns + step_ns <= now:
            self.sim_ns += step_ns
            self._control(self.start_ns + self.sim_ns)
            mujoco.mj_step(self.model, self.data)
            stepped = True
        if stepped:  # a state is published once per measurement instant
            self._publish(self.start_ns + self.sim_ns)

    # ------------------------------------------------------------------ output
    def _publish(self, ns: int) -> None:
        names, q, v = self.env.joint_state()
        q = np.array(q, dtype=np.float64)
        if self.cpr > 0:
            revolute = [self.model.jnt_type[self.model.joint(n).id] == mujoco.mjtJoint.mjJNT_HINGE
                        for n in names]
            step = 2 * math.pi / self.cpr
            q = np.where(revolute, np.round(q / step) * step, q)
        v = np.array(v, dtype=np.float64)
        if self.vel_noise > 0:
            v = v + self.vel_noise * self.rng.standard_normal(v.shape)
        effort = self.data.qfrc_actuator[self.env._joint_dof]
        msg = JointState()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
        msg.name = list(names) + list(self.extra)
        msg.position = [float(x) for x in q] + [0.0] * len(self.extra)
        msg.velocity = [float(x) for x in v] + [0.0] * len(self.extra)
        msg.effort = [float(x) for x in effort] + [0.0] * len(self.extra)
        self.joint_pub.publish(msg)
        if self.odom_pub is not None:
            state = self.env._read_state()
            i = [k for k, f in enumerate(self.p.layout.fields) if f == "odom.vx"]
            if i and self.vel_noise > 0:
                state[i[0]] += self.vel_noise * self.rng.standard_normal()
            self.odom_pub.publish(self.p.layout.odometry(state, ns))
        self.diag.count("states")

    def close(self) -> None:
        self.env.close()


def _interface(model: mujoco.MjModel, command_kind: str) -> str:
    """effort, position or velocity: what the commands drive (decides the safe action)."""
    if command_kind == "twist":
        return "velocity"
    affine = model.actuator_biastype == mujoco.mjtBias.mjBIAS_AFFINE
    if len(affine) and affine.all() and (model.actuator_biasprm[:, 1] < 0).all():
        return "position"  # a servo: bias -kp q
    return "effort"


def main(args=None) -> int:
    return run(FakeHardware, args)


if __name__ == "__main__":
    raise SystemExit(main())
