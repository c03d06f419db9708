"""Cart-pole swing-up: push a cart along a rail to swing its pole up and balance it
(``SymMbrl/CartPole-v0``).

Physics (``urdf/cartpole.urdf``, PILCO's parameters without cart friction): a cart of
M = 0.5 kg slides on a frictionless rail (joint ``slider``, hard stops at +-2 m) under a force
|F| <= 10 N; a uniform pole, m = 0.5 kg, l = 0.6 m, turns on an undamped hinge on the cart
(joint ``hinge``), theta = 0 upright, theta > 0 tilting the tip towards +x. With
g = 9.81 m/s^2 and D = M + m - (3/4) m cos^2(theta),

    P       = F + (m l / 2) theta'^2 sin(theta)
    x''     = (P - (3/4) m g sin(theta) cos(theta)) / D
    theta'' = (3 / (2 l)) ((M + m) g sin(theta) - cos(theta) P) / D

(:func:`accelerations`; docs/tasks.md derives them). MuJoCo integrates with RK4 at 0.01 s,
5 substeps per control period of 0.05 s. Episodes are 100 steps (5 s).

Observer: obs (x, cos theta, sin theta, x', theta') -> state (x, theta, x_dot, theta_dot),
theta in [-pi, pi). Reward, from the state *after* the step and the applied (clipped) force:
``exp(-d^2 / (2 * 0.5^2)) + 0.01 (1 - (F / 10)^2)``, d the distance of the pole tip from its
upright position over the rail's centre (PILCO's saturating cost, and a small action cost
shifted so that no step's reward is negative). The episode terminates when the cart leaves
the rail's soft limits (|x| > 1.5 m). Success: for the last 2 s (40 steps) of the episode,
every state had the pole within 0.2 rad of upright and the cart within the soft limits.
Start: hanging down, theta = pi + U[-0.05, 0.05], x, x', theta' ~ U[-0.05, 0.05].
"""

from __future__ import annotations

import numpy as np

from .base import ArrayOps, TaskSpec, wrap_angle

CART_MASS = 0.5
POLE_MASS = 0.5
POLE_LENGTH = 0.6
GRAVITY = 9.81
MAX_FORCE = 10.0
RAIL_LIMIT = 2.0
"""Hard stops of the rail (the slider's URDF ``<limit>``), m."""
SOFT_LIMIT = 1.5
"""Soft limits of the rail (the slider's URDF ``<safety_controller>``), m: leaving them ends the
episode."""
TIMESTEP = 0.01
N_SUBSTEPS = 5
DT = TIMESTEP * N_SUBSTEPS
MAX_EPISODE_STEPS = 100
COST_WIDTH = 0.5
"""Width (m) of the saturating cost on the pole tip's distance from its upright position."""
ACTION_COST = 0.01
SUCCESS_ANGLE = 0.2
SUCCESS_STEPS = 40
"""Steps (2 s) at the end of an episode during which the pole must stay balanced."""
START_NOISE = 0.05
JOINTS = ("slider", "hinge")


def accelerations(state, force):
    """The law: (x'', theta'') of states (B, 4) under forces (B,), numpy or torch."""
    ops = ArrayOps(state)
    s, c = ops.sin(state[..., 1]), ops.cos(state[..., 1])
    m, big_m, half_l = POLE_MASS, CART_MASS, POLE_LENGTH / 2
    push = force + m * half_l * state[..., 3] ** 2 * s
    den = big_m + m - 0.75 * m * c**2
    x_acc = (push - 0.75 * m * GRAVITY * s * c) / den
    theta_acc = (1.5 / POLE_LENGTH) * ((big_m + m) * GRAVITY * s - c * push) / den
    return x_acc, theta_acc


def derivatives(state, action):
    """Time derivative (x', theta', x'', theta'') of states (B, 4) under actions (B, 1)."""
    x_acc, theta_acc = accelerations(state, action[..., 0])
    return ArrayOps(state).stack([state[..., 2], state[..., 3], x_acc, theta_acc])


def tip_distance_sq(state):
    """Squared distance of the pole tip from its upright position over the rail's centre."""
    ops = ArrayOps(state)
    x, theta = state[..., 0], state[..., 1]
    dx = x + POLE_LENGTH * ops.sin(theta)
    dz = POLE_LENGTH * (1.0 - ops.cos(theta))
    return dx**2 + dz**2


def observe(obs):
    """(x, cos theta, sin theta, x_dot, theta_dot) -> (x, theta, x_dot, theta_dot)."""
    ops = ArrayOps(obs)
    theta = wrap_angle(ops.atan2(obs[..., 2], obs[..., 1]))
    return ops.stack([obs[..., 0], theta, obs[..., 3], obs[..., 4]])


def observation(state):
    """(x, theta, x_dot, theta_dot) -> (x, cos theta, sin theta, x_dot, theta_dot)."""
    ops = ArrayOps(state)
    theta = state[..., 1]
    return ops.stack([state[..., 0], ops.cos(theta), ops.sin(theta), state[..., 2], state[..., 3]])


def reward(state, action, next_state):
    """exp(-d^2 / (2 w^2)) + 0.01 (1 - (F / F_max)^2), d the tip's distance after the step."""
    ops = ArrayOps(state)
    u = ops.clip(action[..., 0], -MAX_FORCE, MAX_FORCE) / MAX_FORCE
    exponent = -tip_distance_sq(next_state) / (2 * COST_WIDTH**2)
    near = exponent.exp() if ops.is_torch else np.exp(exponent)
    return near + ACTION_COST * (1.0 - u**2)


def off_rail(state):
    """The cart is beyond the rail's soft limits, (B,) bool."""
    x = state[..., 0]
    return (x > SOFT_LIMIT) | (x < -SOFT_LIMIT)


def terminated(state, action, next_state):
    """The cart left the rail's soft limits during the step."""
    return off_rail(next_state)


def success(state):
    """Balanced now: pole within 0.2 rad of upright and cart within the soft limits, (B,)."""
    upright = wrap_angle(state[..., 1])
    return (upright < SUCCESS_ANGLE) & (upright > -SUCCESS_ANGLE) & ~off_rail(state)


def sustained_success(states):
    """Episode success of trajectories (B, T, 4): balanced in each of the last 40 states.

    ``states[:, t]`` is the state after step t (the reset state excluded); a trajectory shorter
    than 40 steps is no success. This is what ``info['is_success']`` reports.
    """
    if states.shape[1] < SUCCESS_STEPS:
        return ArrayOps(states).zeros_bool(states)
    last = states[:, -SUCCESS_STEPS:]
    ok = success(last.reshape(-1, last.shape[-1])).reshape(last.shape[0], SUCCESS_STEPS)
    return ok.all(-1)


TASK = TaskSpec(
    name="cartpole",
    env_id="SymMbrl/CartPole-v0",
    state_names=("x", "theta", "x_dot", "theta_dot"),
    action_names=("force",),
    angle_coords=(1,),
    static_coords=(),
    action_low=np.array([-MAX_FORCE]),
    action_high=np.array([MAX_FORCE]),
    dt=DT,
    max_episode_steps=MAX_EPISODE_STEPS,
    observe=observe,
    observation=observation,
    reward=reward,
    terminated=terminated,
    success=success,
    description=(
        "Swing up a uniform 0.5 kg, 0.6 m pole hanging from a 0.5 kg cart and balance it by "
        "pushing the cart (|force| <= 10 N) on a rail; leaving the soft limits (+-1.5 m) ends "
        "the episode; success: balanced within 0.2 rad for the last 2 s; dt = 0.05 s, 100 steps."
    ),
    joint_names=JOINTS,
    observation_names=("x", "cos_theta", "sin_theta", "x_dot", "theta_dot"),
    invariant_coords=(0,),
)


def __getattr__(name: str):
    """The MuJoCo side lives in ``cartpole_sim`` (imported on first use): this module, the
    task's spec, needs neither MuJoCo nor gymnasium."""
    if name in ('build_model', 'CartPoleEnv'):
        from . import cartpole_sim

        return getattr(cartpole_sim, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
