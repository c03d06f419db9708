"""Pendulum: swing a torque-limited pole up and balance it (``SymMbrl/Pendulum-v0``).

Physics (``urdf/pendulum.urdf``): a uniform rod, m = 1 kg, l = 1 m, on an undamped,
frictionless hinge; I = m l^2 / 3 about the hinge and g = 10 m/s^2, so

    theta'' = (3 g / (2 l)) sin(theta) + 3 u / (m l^2) = 15 sin(theta) + 3 u,

Gym Pendulum-v1's equation, with theta = 0 upright and |u| <= 2 N m. MuJoCo integrates it with
RK4 at 0.01 s, 5 substeps per control period of 0.05 s (Gym uses one semi-implicit Euler
step of 0.05 s and clips theta' to +-8; here theta' is not clipped). Episodes are 200 steps.

Observer: obs (cos theta, sin theta, theta') -> state (theta, theta_dot), theta in [-pi, pi).
Reward, as in Gym, from the state *before* the step and the applied (clipped) torque:
``-(theta^2 + 0.1 theta_dot^2 + 0.001 u^2)``. No early termination, no success test.
Start: theta ~ U[-pi, pi), theta_dot ~ U[-1, 1].
"""

from __future__ import annotations

import numpy as np

from .base import ArrayOps, TaskSpec, wrap_angle

GRAVITY = 10.0
MAX_TORQUE = 2.0
TIMESTEP = 0.01
N_SUBSTEPS = 5
DT = TIMESTEP * N_SUBSTEPS
MAX_EPISODE_STEPS = 200


def observe(obs):
    """(cos theta, sin theta, theta_dot) -> (theta, theta_dot)."""
    ops = ArrayOps(obs)
    theta = wrap_angle(ops.atan2(obs[..., 1], obs[..., 0]))
    return ops.stack([theta, obs[..., 2]])


def observation(state):
    """(theta, theta_dot) -> (cos theta, sin theta, theta_dot)."""
    ops = ArrayOps(state)
    return ops.stack([ops.cos(state[..., 0]), ops.sin(state[..., 0]), state[..., 1]])


def reward(state, action, next_state):
    """Gym's cost on the state before the step: -(theta^2 + 0.1 theta_dot^2 + 0.001 u^2)."""
    ops = ArrayOps(state)
    theta = wrap_angle(state[..., 0])
    u = ops.clip(action[..., 0], -MAX_TORQUE, MAX_TORQUE)
    return -(theta**2 + 0.1 * state[..., 1] ** 2 + 0.001 * u**2)


def terminated(state, action, next_state):
    """Never: episodes end by truncation after 200 steps."""
    return ArrayOps(state).zeros_bool(state)


TASK = TaskSpec(
    name="pendulum",
    env_id="SymMbrl/Pendulum-v0",
    state_names=("theta", "theta_dot"),
    action_names=("torque",),
    angle_coords=(0,),
    static_coords=(),
    action_low=np.array([-MAX_TORQUE]),
    action_high=np.array([MAX_TORQUE]),
    dt=DT,
    max_episode_steps=MAX_EPISODE_STEPS,
    observe=observe,
    observation=observation,
    reward=reward,
    terminated=terminated,
    terminates=False,
    success=None,
    description=(
        "Swing up and balance a uniform 1 kg, 1 m pole (theta = 0 upright) with |torque| <= 2 "
        "N m; theta'' = 15 sin(theta) + 3 u, dt = 0.05 s, 200 steps, Gym Pendulum-v1's reward."
    ),
    joint_names=("hinge",),
    observation_names=("cos_theta", "sin_theta", "theta_dot"),
)


def __getattr__(name: str):
    """The MuJoCo side lives in ``pendulum_sim`` (imported on first use): this module, the
    task's spec, needs neither MuJoCo nor gymnasium."""
    if name in ('build_model', 'PendulumEnv'):
        from . import pendulum_sim

        return getattr(pendulum_sim, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
