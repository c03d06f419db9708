"""Car2d: drive a small steered car to a random target on the floor (``SymMbrl/Car2d-v0``).

Physics (``urdf/car2d.urdf``): a 1.25 kg four-wheeled car, wheelbase 0.25 m, track 0.2 m,
wheel radius 0.05 m, turntable steering (the front axle turns about a vertical pivot, +-0.5
rad). MuJoCo simulates it; nothing here is a kinematic formula. The chassis moves on planar
joints (slide x, slide y, hinge yaw, plus slide z so that gravity loads the wheels); the four
wheels are spheres that touch the ground with friction 1.0 and roll without sliding at the
speeds and accelerations the actuators allow.

* ``drive`` in [-1, 1] is a speed command: a velocity servo on a differential (a tendon
  averaging the two rear wheel angles) with target ``drive * 1.0 m/s``; its gain gives a
  first-order speed response with time constant 0.3 s, which also bounds the speed to 1 m/s.
* ``steer`` in [-1, 1] is a steering angle command ``steer * 0.5 rad``, tracked by a PD
  position servo on the steering pivot, critically damped at 10 rad/s.

Control period 0.05 s (5 implicit-fast steps of 10 ms). Episodes are 150 steps (7.5 s): the
target is at most 2 m away and the car's top speed is 1 m/s; a naive pursuit controller
(forward or reverse, steering at the target, slowing in proportion to the distance) reaches
and stops within 0.1 m after at most about 80 steps (4 s, a target behind or beside the car),
so 150 steps leave a learned controller about twice the time it needs.

Observer: obs (x, y, cos yaw, sin yaw, v, steer, steer_rate, tx, ty, dx_body, dy_body) ->
state (x, y, yaw, v, steer_angle, steer_rate, target_x, target_y). (x, y) is the centre of the rear
axle (base_link), yaw in [-pi, pi), v the forward speed of base_link in the car's frame,
steer_angle and steer_rate the steering pivot's angle and rate (the steering servo is second order,
so its rate is part of the state), (dx_body, dy_body) the target in the car's frame.
Policy inputs (``TaskSpec.policy_inputs``): v, steer, steer_rate, dx_body, dy_body. On a flat
floor the reward and the motion depend only on where the target lies relative to the car, so
a policy reads nothing else (the world model still needs x, y, yaw and the target).
Reward: ``-|(x, y) - target|`` after the step. Success: within 0.1 m at the end.
Start: at the origin at rest, yaw ~ U[-pi, pi); target uniform over 0.5 m <= r <= 2 m.
"""

from __future__ import annotations

import math

import gymnasium as gym
import mujoco
import numpy as np

from .assets import load_urdf_spec
from .base import ArrayOps, TaskSpec, wrap_angle
from .mujoco_env import MujocoTaskEnv, add_floor, add_light_and_camera, add_target_marker

WHEEL_RADIUS = 0.05
WHEELBASE = 0.25  # rear axle (base_link) to the steering pivot, as in the URDF
MAX_SPEED = 1.0
SPEED_TIME_CONSTANT = 0.3
MAX_STEER = 0.5
STEER_OMEGA = 10.0
STEER_DAMPING_RATIO = 1.0
STEER_ARMATURE = 1e-3
FRICTION = 1.0
TIMESTEP = 0.01
N_SUBSTEPS = 5
DT = TIMESTEP * N_SUBSTEPS
MAX_EPISODE_STEPS = 150
TARGET_RADIUS = (0.5, 2.0)
SUCCESS_DISTANCE = 0.1
CHASSIS_JOINTS = ("chassis_x", "chassis_y", "chassis_z", "chassis_yaw")
WHEELS = (
    "rear_left_wheel_joint",
    "rear_right_wheel_joint",
    "front_left_wheel_joint",
    "front_right_wheel_joint",
)
STEERING = "steering_joint"


def distance(state):
    """Distance from base_link to the target, (B,)."""
    ops = ArrayOps(state)
    return ops.sqrt((state[..., 0] - state[..., 6]) ** 2 + (state[..., 1] - state[..., 7]) ** 2)


def observe(obs):
    """Observation -> (x, y, yaw, v, steer_angle, steer_rate, target_x, target_y)."""
    ops = ArrayOps(obs)
    yaw = wrap_angle(ops.atan2(obs[..., 3], obs[..., 2]))
    return ops.stack([obs[..., 0], obs[..., 1], yaw, obs[..., 4], obs[..., 5], obs[..., 6],
                      obs[..., 7], obs[..., 8]])


def observation(state):
    """State -> (x, y, cos yaw, sin yaw, v, steer, steer_rate, tx, ty, dx_body, dy_body)."""
    ops = ArrayOps(state)
    c, s = ops.cos(state[..., 2]), ops.sin(state[..., 2])
    dx, dy = state[..., 6] - state[..., 0], state[..., 7] - state[..., 1]
    return ops.stack([state[..., 0], state[..., 1], c, s, state[..., 3], state[..., 4],
                      state[..., 5], state[..., 6], state[..., 7], c * dx + s * dy,
                      c * dy - s * dx])


def reward(state, action, next_state):
    """``-|(x, y) - target|`` after the step."""
    return -distance(next_state)


def terminated(state, action, next_state):
    """Never: episodes end by truncation after 150 steps."""
    return ArrayOps(state).zeros_bool(state)


def success(state):
    """base_link within 0.1 m of the target."""
    return distance(state) < SUCCESS_DISTANCE


TASK = TaskSpec(
    name="car2d",
    env_id="SymMbrl/Car2d-v0",
    state_names=("x", "y", "yaw", "v", "steer_angle", "steer_rate", "target_x", "target_y"),
    action_names=("drive", "steer"),
    angle_coords=(2,),
    static_coords=(6, 7),
    invariant_coords=(0, 1),  # flat, uniform floor: the motion does not depend on where
    # a policy reads v, steer, steer_rate and the target in the car's frame: the absolute
    # pose adds 6 inputs that change no reward and no motion, and the networks had to learn
    # to ignore them (sym-mbpo, seed 0: 25% success at 3000 steps with them, 95% at 1000
    # without them; 45% at 2000 with cos and sin of the yaw kept)
    policy_inputs=(4, 5, 6, 9, 10),
    action_low=np.array([-1.0, -1.0]),
    action_high=np.array([1.0, 1.0]),
    dt=DT,
    max_episode_steps=MAX_EPISODE_STEPS,
    observe=observe,
    observation=observation,
    reward=reward,
    terminated=terminated,
    success=success,
    description=(
        "Four-wheeled car with turntable steering on a plane, simulated with wheel contacts; "
        "drive (speed command, <= 1 m/s) and steer (<= 0.5 rad) in [-1, 1]; reach a random "
        "target 0.5-2 m away (success: within 0.1 m at the end), reward -distance, "
        "dt = 0.05 s, 150 steps."
    ),
    joint_names=(*WHEELS, STEERING),
    observation_names=(
        "x", "y", "cos_yaw", "sin_yaw", "v", "steer", "steer_rate", "target_x", "target_y",
        "target_dx_body", "target_dy_body",
    ),
)


def _dof(model: mujoco.MjModel, joint: str) -> int:
    return int(model.jnt_dofadr[model.joint(joint).id])


def _qpos(model: mujoco.MjModel, joint: str) -> int:
    return int(model.jnt_qposadr[model.joint(joint).id])


def build_model() -> mujoco.MjModel:
    """MuJoCo model from ``urdf/car2d.urdf``: planar chassis, ground, actuators, sensors."""
    spec = load_urdf_spec("car2d")
    spec.modelname = "car2d"
    spec.option.timestep = TIMESTEP
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    chassis = spec.body("base_link")
    chassis.pos = [0.0, 0.0, WHEEL_RADIUS]
    for name, kind, axis in (
        ("chassis_x", mujoco.mjtJoint.mjJNT_SLIDE, [1, 0, 0]),
        ("chassis_y", mujoco.mjtJoint.mjJNT_SLIDE, [0, 1, 0]),
        ("chassis_z", mujoco.mjtJoint.mjJNT_SLIDE, [0, 0, 1]),
        ("chassis_yaw", mujoco.mjtJoint.mjJNT_HINGE, [0, 0, 1]),
    ):
        chassis.add_joint(name=name, type=kind, axis=axis)
    # Only wheel-ground contacts: wheels collide with the floor, the floor with nothing else.
    for geom in spec.geoms:
        if geom.contype != 0:
            geom.contype, geom.conaffinity, geom.group = 1, 0, 3
            geom.condim = 3
            geom.friction = [FRICTION, 0.005, 0.0001]
    floor = add_floor(spec, z=0.0, half_size=4.0, collide=True)
    floor.friction = [FRICTION, 0.005, 0.0001]
    spec.joint(STEERING).armature = STEER_ARMATURE
    differential = spec.add_tendon(name="rear_differential")
    differential.wrap_joint(WHEELS[0], 0.5)
    differential.wrap_joint(WHEELS[1], 0.5)

    # Gains from the car's inertia: translational mass seen by the drive, steering inertia.
    probe = spec.compile()
    probe_data = mujoco.MjData(probe)
    mujoco.mj_forward(probe, probe_data)
    inertia = np.zeros((probe.nv, probe.nv))
    mujoco.mj_fullM(probe, probe_data, inertia)
    wheel_inertia = sum(inertia[_dof(probe, w), _dof(probe, w)] for w in WHEELS)
    drive_mass = float(probe.body_subtreemass[probe.body("base_link").id]) + (
        wheel_inertia / WHEEL_RADIUS**2
    )
    steer_inertia = inertia[_dof(probe, STEERING), _dof(probe, STEERING)]

    drive = spec.add_actuator(name="drive", target="rear_differential",
                              trntype=mujoco.mjtTrn.mjTRN_TENDON)
    drive.set_to_velocity(kv=drive_mass * WHEEL_RADIUS**2 / SPEED_TIME_CONSTANT)
    drive.ctrlrange = [-MAX_SPEED / WHEEL_RADIUS, MAX_SPEED / WHEEL_RADIUS]
    drive.ctrllimited = 1
    steer = spec.add_actuator(name="steer", target=STEERING, trntype=mujoco.mjtTrn.mjTRN_JOINT)
    steer.set_to_position(
        kp=steer_inertia * STEER_OMEGA**2,
        kv=2.0 * STEER_DAMPING_RATIO * steer_inertia * STEER_OMEGA,
    )
    steer.ctrlrange = [-MAX_STEER, MAX_STEER]
    steer.ctrllimited = 1
    spec.joint(STEERING).actfrclimited = 0

    chassis.add_site(name="base_link", size=[0.01, 0.01, 0.01])
    spec.add_sensor(name="base_velocity", type=mujoco.mjtSensor.mjSENS_VELOCIMETER,
                    objname="base_link", objtype=mujoco.mjtObj.mjOBJ_SITE)
    spec.add_sensor(name="steering_pos", type=mujoco.mjtSensor.mjSENS_JOINTPOS,
                    objname=STEERING, objtype=mujoco.mjtObj.mjOBJ_JOINT)
    add_target_marker(spec, [
        dict(type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[SUCCESS_DISTANCE, 0.001, 0],
             pos=[0, 0, 0.001], rgba=[0.1, 0.8, 0.2, 0.6]),
        dict(type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[0.015, 0.1, 0], pos=[0, 0, 0.1],
             rgba=[0.1, 0.6, 0.15, 1.0]),
    ])
    add_light_and_camera(spec, pos=[0.0, 0.0, 6.2], xyaxes=[1, 0, 0, 0, 1, 0])
    return spec.compile()


def rest_height(model: mujoco.MjModel) -> float:
    """Height of chassis_z where the wheels carry the car's weight (after settling)."""
    data = mujoco.MjData(model)
    mujoco.mj_step(model, data, nstep=int(round(1.0 / model.opt.timestep)))
    return float(data.qpos[_qpos(model, "chassis_z")])


def sample_target(rng: np.random.Generator) -> tuple[float, float]:
    """A target uniform over the annulus 0.5 m <= r <= 2 m around the start."""
    r_lo, r_hi = TARGET_RADIUS
    r = math.sqrt(rng.uniform(r_lo**2, r_hi**2))
    phi = rng.uniform(-math.pi, math.pi)
    return r * math.cos(phi), r * math.sin(phi)


class Car2dEnv(MujocoTaskEnv):
    """Steered four-wheeled car driven to a target; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": round(1.0 / DT)}
    task = TASK
    n_substeps = N_SUBSTEPS

    def _build_model(self) -> mujoco.MjModel:
        model = build_model()
        self._x, self._y, self._z, self._yaw = (_qpos(model, j) for j in CHASSIS_JOINTS)
        self._vx, self._vy = _dof(model, "chassis_x"), _dof(model, "chassis_y")
        self._steer_q, self._steer_v = _qpos(model, STEERING), _dof(model, STEERING)
        self._z_rest = rest_height(model)
        self._target = np.zeros(2)
        return model

    def _observation_space(self) -> gym.spaces.Box:
        return gym.spaces.Box(-np.inf, np.inf, shape=(11,), dtype=np.float64)

    def _reset_simulation(self, rng: np.random.Generator) -> None:
        self.data.qpos[self._z] = self._z_rest
        self.data.qpos[self._yaw] = rng.uniform(-math.pi, math.pi)
        self._target[:] = sample_target(rng)
        self.data.mocap_pos[0] = [self._target[0], self._target[1], 0.0]

    def _set_control(self, action: np.ndarray) -> None:
        self.data.ctrl[0] = action[0] * (MAX_SPEED / WHEEL_RADIUS)
        self.data.ctrl[1] = action[1] * MAX_STEER

    def _read_state(self) -> np.ndarray:
        q, v = self.data.qpos, self.data.qvel
        yaw = q[self._yaw]
        c, s = math.cos(yaw), math.sin(yaw)
        return np.array([
            q[self._x], q[self._y], (yaw + math.pi) % (2 * math.pi) - math.pi,
            c * v[self._vx] + s * v[self._vy], q[self._steer_q], v[self._steer_v],
            self._target[0], self._target[1],
        ])

    @property
    def target(self) -> np.ndarray:
        """Target (x, y) in metres, world (odom) frame."""
        return self._target.copy()
