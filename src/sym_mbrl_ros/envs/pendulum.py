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

import math

import gymnasium as gym
import mujoco
import numpy as np

from .assets import load_urdf_spec
from .base import ArrayOps, TaskSpec, wrap_angle
from .mujoco_env import MujocoTaskEnv, add_floor, add_light_and_camera

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
    success=None,
    description=(
        "Swing up and balance a uniform 1 kg, 1 m pole (theta = 0 upright) with |torque| <= 2 "
        "N m; theta'' = 15 sin(theta) + 3 u, dt = 0.05 s, 200 steps, Gym Pendulum-v1's reward."
    ),
    joint_names=("hinge",),
    observation_names=("cos_theta", "sin_theta", "theta_dot"),
)


def build_model() -> mujoco.MjModel:
    """MuJoCo model from ``urdf/pendulum.urdf`` plus torque motor, sensors and scene."""
    spec = load_urdf_spec("pendulum")
    spec.modelname = "pendulum"
    spec.option.timestep = TIMESTEP
    spec.option.gravity = [0.0, 0.0, -GRAVITY]
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_RK4
    # The pole touches nothing and the hinge is unlimited: skip the constraint solver.
    spec.option.disableflags |= mujoco.mjtDisableBit.mjDSBL_CONSTRAINT
    hinge = spec.joint("hinge")
    hinge.damping = [0.0, 0.0, 0.0]
    hinge.frictionloss = 0.0
    hinge.armature = 0.0
    motor = spec.add_actuator(name="torque", target="hinge", trntype=mujoco.mjtTrn.mjTRN_JOINT)
    motor.set_to_motor()
    motor.ctrlrange = [-MAX_TORQUE, MAX_TORQUE]
    motor.ctrllimited = 1
    spec.add_sensor(name="hinge_pos", type=mujoco.mjtSensor.mjSENS_JOINTPOS, objname="hinge",
                    objtype=mujoco.mjtObj.mjOBJ_JOINT)
    spec.add_sensor(name="hinge_vel", type=mujoco.mjtSensor.mjSENS_JOINTVEL, objname="hinge",
                    objtype=mujoco.mjtObj.mjOBJ_JOINT)
    add_floor(spec, z=-1.25, half_size=3.0)
    add_light_and_camera(spec, pos=[0.0, -3.6, 0.0], xyaxes=[1, 0, 0, 0, 0, 1])
    return spec.compile()


class PendulumEnv(MujocoTaskEnv):
    """Torque-driven pole on a hinge; see the module docstring for physics and reward."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": round(1.0 / DT)}
    task = TASK
    n_substeps = N_SUBSTEPS

    def _build_model(self) -> mujoco.MjModel:
        model = build_model()
        self._qpos = model.jnt_qposadr[model.joint("hinge").id]
        self._qvel = model.jnt_dofadr[model.joint("hinge").id]
        return model

    def _observation_space(self) -> gym.spaces.Box:
        high = np.array([1.0, 1.0, np.inf])
        return gym.spaces.Box(-high, high, dtype=np.float64)

    def _reset_simulation(self, rng: np.random.Generator) -> None:
        self.data.qpos[self._qpos] = rng.uniform(-math.pi, math.pi)
        self.data.qvel[self._qvel] = rng.uniform(-1.0, 1.0)

    def _set_control(self, action: np.ndarray) -> None:
        self.data.ctrl[0] = action[0]

    def _read_state(self) -> np.ndarray:
        theta = (self.data.qpos[self._qpos] + math.pi) % (2 * math.pi) - math.pi
        return np.array([theta, self.data.qvel[self._qvel]])
