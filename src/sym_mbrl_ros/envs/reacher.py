"""Reacher: move a planar two-link arm's fingertip onto a random target (``SymMbrl/Reacher-v0``).

Physics (``urdf/reacher.urdf``): links of 0.1 m and 0.11 m (0.04 kg each) turning about
vertical axes, like Gym's Reacher. The action is a pair of joint *position targets*, tracked by
MuJoCo position servos (PD: ``kp (target - q) - kv q'``) with rotor armature 0.01 kg m^2 on
each joint. The gains put each joint at a critically damped natural frequency of 10 rad/s
(``kp = I omega^2``, ``kv = 2 I omega`` with I the joint's inertia incl. armature), so the arm
settles on a new target in about 0.6 s; the armature dominates the link inertia, which keeps
each joint close to a linear second-order system with weak coupling. Joint ranges are the
action box: shoulder [-3.0, 3.0] rad, elbow [-2.8, 2.8] rad; neither joint reaches +-pi, so no
angle wrapping is needed. Control period 0.04 s (8 implicit-fast steps of 5 ms), 50 steps.

Observer: obs (cos q1, cos q2, sin q1, sin q2, tx, ty, q1', q2', fx - tx, fy - ty) -> state
(shoulder, elbow, shoulder_vel, elbow_vel, target_x, target_y); the target is static.
Reward: ``-|fingertip - target|`` of the state *after* the step, no control cost.
Success: fingertip within 0.02 m of the target at the end of the episode.
Start: joints ~ U over 90 % of their range, velocities ~ U[-0.1, 0.1]; the target is uniform
over the annulus 0.05 m <= r <= 0.19 m, every point of which the arm can reach.
"""

from __future__ import annotations

import numpy as np

from .base import ArrayOps, TaskSpec

LINK1 = 0.1
LINK2 = 0.11
SHOULDER_LIMIT = 3.0
ELBOW_LIMIT = 2.8
ARMATURE = 0.01
SERVO_OMEGA = 10.0
SERVO_DAMPING_RATIO = 1.0
TIMESTEP = 0.005
N_SUBSTEPS = 8
DT = TIMESTEP * N_SUBSTEPS
MAX_EPISODE_STEPS = 50
TARGET_RADIUS = (0.05, 0.19)
SUCCESS_DISTANCE = 0.02
JOINTS = ("shoulder", "elbow")


def fingertip(state):
    """Fingertip (x, y) of each state, by forward kinematics; returns two (B,) arrays."""
    ops = ArrayOps(state)
    q1, q12 = state[..., 0], state[..., 0] + state[..., 1]
    return (LINK1 * ops.cos(q1) + LINK2 * ops.cos(q12), LINK1 * ops.sin(q1) + LINK2 * ops.sin(q12))


def distance(state):
    """Fingertip-to-target distance of each state, (B,)."""
    fx, fy = fingertip(state)
    return ArrayOps(state).sqrt((fx - state[..., 4]) ** 2 + (fy - state[..., 5]) ** 2)


def observe(obs):
    """Gym-style observation -> (shoulder, elbow, shoulder_vel, elbow_vel, target_x, target_y)."""
    ops = ArrayOps(obs)
    q1 = ops.atan2(obs[..., 2], obs[..., 0])
    q2 = ops.atan2(obs[..., 3], obs[..., 1])
    return ops.stack([q1, q2, obs[..., 6], obs[..., 7], obs[..., 4], obs[..., 5]])


def observation(state):
    """State -> (cos q1, cos q2, sin q1, sin q2, tx, ty, q1', q2', fx - tx, fy - ty)."""
    ops = ArrayOps(state)
    q1, q2, tx, ty = state[..., 0], state[..., 1], state[..., 4], state[..., 5]
    fx, fy = fingertip(state)
    return ops.stack(
        [ops.cos(q1), ops.cos(q2), ops.sin(q1), ops.sin(q2), tx, ty,
         state[..., 2], state[..., 3], fx - tx, fy - ty]
    )


def reward(state, action, next_state):
    """``-|fingertip - target|`` after the step."""
    return -distance(next_state)


def terminated(state, action, next_state):
    """Never: episodes end by truncation after 50 steps."""
    return ArrayOps(state).zeros_bool(state)


def success(state):
    """Fingertip within 0.02 m of the target."""
    return distance(state) < SUCCESS_DISTANCE


TASK = TaskSpec(
    name="reacher",
    env_id="SymMbrl/Reacher-v0",
    state_names=("shoulder", "elbow", "shoulder_vel", "elbow_vel", "target_x", "target_y"),
    action_names=("shoulder_target", "elbow_target"),
    angle_coords=(),
    static_coords=(4, 5),
    action_low=np.array([-SHOULDER_LIMIT, -ELBOW_LIMIT]),
    action_high=np.array([SHOULDER_LIMIT, ELBOW_LIMIT]),
    dt=DT,
    max_episode_steps=MAX_EPISODE_STEPS,
    observe=observe,
    observation=observation,
    reward=reward,
    terminated=terminated,
    terminates=False,
    success=success,
    description=(
        "Planar two-link arm (0.1 m + 0.11 m) whose joint position targets are tracked by "
        "PD servos; bring the fingertip onto a random reachable target (success: within "
        "0.02 m at the end), reward -distance, dt = 0.04 s, 50 steps."
    ),
    joint_names=JOINTS,
    observation_names=(
        "cos_shoulder", "cos_elbow", "sin_shoulder", "sin_elbow", "target_x", "target_y",
        "shoulder_vel", "elbow_vel", "tip_dx", "tip_dy",
    ),
)


def __getattr__(name: str):
    """The MuJoCo side lives in ``reacher_sim`` (imported on first use): this module, the
    task's spec, needs neither MuJoCo nor gymnasium."""
    if name in ('build_model', 'sample_target', 'ReacherEnv'):
        from . import reacher_sim

        return getattr(reacher_sim, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
