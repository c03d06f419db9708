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

import math

import gymnasium as gym
import mujoco
import numpy as np

from .assets import load_urdf_spec
from .base import ArrayOps, TaskSpec, wrap_angle
from .mujoco_env import MujocoTaskEnv, add_floor, add_light_and_camera

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


def build_model() -> mujoco.MjModel:
    """MuJoCo model from ``urdf/cartpole.urdf`` plus the force motor, sensors and scene."""
    spec = load_urdf_spec("cartpole")
    spec.modelname = "cartpole"
    spec.option.timestep = TIMESTEP
    spec.option.gravity = [0.0, 0.0, -GRAVITY]
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_RK4
    # Nothing touches anything; the one constraint is the slider's limit (the hard stops).
    spec.option.disableflags |= mujoco.mjtDisableBit.mjDSBL_CONTACT
    for name in JOINTS:
        joint = spec.joint(name)
        joint.damping = [0.0, 0.0, 0.0]
        joint.frictionloss = 0.0
        joint.armature = 0.0
    motor = spec.add_actuator(name="force", target="slider", trntype=mujoco.mjtTrn.mjTRN_JOINT)
    motor.set_to_motor()
    motor.ctrlrange = [-MAX_FORCE, MAX_FORCE]
    motor.ctrllimited = 1
    for name in JOINTS:
        for kind, suffix in ((mujoco.mjtSensor.mjSENS_JOINTPOS, "pos"),
                             (mujoco.mjtSensor.mjSENS_JOINTVEL, "vel")):
            spec.add_sensor(name=f"{name}_{suffix}", type=kind, objname=name,
                            objtype=mujoco.mjtObj.mjOBJ_JOINT)
    add_floor(spec, z=-0.75, half_size=4.0)
    add_light_and_camera(spec, pos=[0.0, -4.6, 0.1], xyaxes=[1, 0, 0, 0, 0, 1])
    return spec.compile()


class CartPoleEnv(MujocoTaskEnv):
    """Force-driven cart with a hinged pole; see the module docstring for physics and reward.

    ``info['is_success']`` (last step) is :func:`sustained_success` of the episode: the env
    counts the consecutive balanced states up to the current step.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": round(1.0 / DT)}
    task = TASK
    n_substeps = N_SUBSTEPS

    def _build_model(self) -> mujoco.MjModel:
        model = build_model()
        ids = [model.joint(n).id for n in JOINTS]
        self._qpos = np.array([model.jnt_qposadr[i] for i in ids])
        self._qvel = np.array([model.jnt_dofadr[i] for i in ids])
        self._balanced = 0
        return model

    def _observation_space(self) -> gym.spaces.Box:
        high = np.array([np.inf, 1.0, 1.0, np.inf, np.inf])
        return gym.spaces.Box(-high, high, dtype=np.float64)

    def _reset_simulation(self, rng: np.random.Generator) -> None:
        noise = rng.uniform(-START_NOISE, START_NOISE, 4)
        self.data.qpos[self._qpos] = [noise[0], math.pi + noise[1]]
        self.data.qvel[self._qvel] = noise[2:]
        self._balanced = 0

    def _set_control(self, action: np.ndarray) -> None:
        self.data.ctrl[0] = action[0]

    def _read_state(self) -> np.ndarray:
        q, v = self.data.qpos, self.data.qvel
        theta = (q[self._qpos[1]] + math.pi) % (2 * math.pi) - math.pi
        return np.array([q[self._qpos[0]], theta, v[self._qvel[0]], v[self._qvel[1]]])

    def step(self, action):
        obs, reward_, terminated_, truncated, info = super().step(action)
        self._balanced = self._balanced + 1 if bool(success(info["state"][None])[0]) else 0
        if "is_success" in info:
            info["is_success"] = self._balanced >= SUCCESS_STEPS
        return obs, reward_, terminated_, truncated, info
