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

import numpy as np

from .base import ArrayOps, TaskSpec, wrap_angle

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
    terminates=False,
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


def __getattr__(name: str):
    """The MuJoCo side lives in ``car2d_sim`` (imported on first use): this module, the
    task's spec, needs neither MuJoCo nor gymnasium."""
    if name in ('build_model', 'rest_height', 'sample_target', 'Car2dEnv'):
        from . import car2d_sim

        return getattr(car2d_sim, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
