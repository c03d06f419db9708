"""MuJoCo simulation of the ``cartpole`` task (the spec, without MuJoCo, is ``cartpole.py``)."""

from __future__ import annotations

import math

import gymnasium as gym
import mujoco
import numpy as np

from .assets import load_urdf_spec
from .cartpole import (
    DT,
    GRAVITY,
    JOINTS,
    MAX_FORCE,
    N_SUBSTEPS,
    START_NOISE,
    SUCCESS_STEPS,
    TASK,
    TIMESTEP,
    success,
)
from .mujoco_env import MujocoTaskEnv, add_floor, add_light_and_camera


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
