"""MuJoCo simulation of the ``pendulum`` task (the spec, without MuJoCo, is ``pendulum.py``)."""

from __future__ import annotations

import math

import gymnasium as gym
import mujoco
import numpy as np

from .assets import load_urdf_spec
from .mujoco_env import MujocoTaskEnv, add_floor, add_light_and_camera
from .pendulum import DT, GRAVITY, MAX_TORQUE, N_SUBSTEPS, TASK, TIMESTEP


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
