"""MuJoCo simulation of the ``reacher`` task (the spec, without MuJoCo, is ``reacher.py``)."""

from __future__ import annotations

import math

import gymnasium as gym
import mujoco
import numpy as np

from .assets import load_urdf_spec
from .mujoco_env import MujocoTaskEnv, add_floor, add_light_and_camera, add_target_marker
from .reacher import (
    ARMATURE,
    DT,
    ELBOW_LIMIT,
    JOINTS,
    N_SUBSTEPS,
    SERVO_DAMPING_RATIO,
    SERVO_OMEGA,
    SHOULDER_LIMIT,
    TARGET_RADIUS,
    TASK,
    TIMESTEP,
)


def build_model() -> mujoco.MjModel:
    """MuJoCo model from ``urdf/reacher.urdf`` plus PD position servos, sensors and scene."""
    spec = load_urdf_spec("reacher")
    spec.modelname = "reacher"
    spec.option.timestep = TIMESTEP
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    for name in JOINTS:
        spec.joint(name).armature = ARMATURE
    # Servo gains from each joint's inertia (armature + links, arm stretched out).
    probe = spec.compile()
    probe_data = mujoco.MjData(probe)
    mujoco.mj_forward(probe, probe_data)
    inertia = np.zeros((probe.nv, probe.nv))
    mujoco.mj_fullM(probe, probe_data, inertia)
    for name, limit in zip(JOINTS, (SHOULDER_LIMIT, ELBOW_LIMIT)):
        dof = probe.jnt_dofadr[probe.joint(name).id]
        i = inertia[dof, dof]
        servo = spec.add_actuator(name=name, target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        servo.set_to_position(
            kp=i * SERVO_OMEGA**2, kv=2.0 * SERVO_DAMPING_RATIO * i * SERVO_OMEGA
        )
        servo.ctrlrange = [-limit, limit]
        servo.ctrllimited = 1
        for kind, suffix in ((mujoco.mjtSensor.mjSENS_JOINTPOS, "pos"),
                             (mujoco.mjtSensor.mjSENS_JOINTVEL, "vel")):
            spec.add_sensor(name=f"{name}_{suffix}", type=kind, objname=name,
                            objtype=mujoco.mjtObj.mjOBJ_JOINT)
    spec.body("fingertip").add_site(name="fingertip", size=[0.005, 0.005, 0.005])
    spec.add_sensor(name="fingertip_pos", type=mujoco.mjtSensor.mjSENS_FRAMEPOS,
                    objname="fingertip", objtype=mujoco.mjtObj.mjOBJ_SITE)
    add_floor(spec, z=-0.01, half_size=0.4)
    add_target_marker(spec, [dict(type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[0.009, 0, 0],
                                  rgba=[0.9, 0.1, 0.1, 1.0])])
    add_light_and_camera(spec, pos=[0.0, 0.0, 0.62], xyaxes=[1, 0, 0, 0, 1, 0])
    return spec.compile()


def sample_target(rng: np.random.Generator) -> tuple[float, float]:
    """A target uniform over the reachable annulus 0.05 m <= r <= 0.19 m."""
    r_lo, r_hi = TARGET_RADIUS
    r = math.sqrt(rng.uniform(r_lo**2, r_hi**2))
    phi = rng.uniform(-math.pi, math.pi)
    return r * math.cos(phi), r * math.sin(phi)


class ReacherEnv(MujocoTaskEnv):
    """Two-link arm with PD position servos; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": round(1.0 / DT)}
    task = TASK
    n_substeps = N_SUBSTEPS

    def _build_model(self) -> mujoco.MjModel:
        model = build_model()
        ids = [model.joint(n).id for n in JOINTS]
        self._qpos = np.array([model.jnt_qposadr[i] for i in ids])
        self._qvel = np.array([model.jnt_dofadr[i] for i in ids])
        self._target = np.zeros(2)
        return model

    def _observation_space(self) -> gym.spaces.Box:
        return gym.spaces.Box(-np.inf, np.inf, shape=(10,), dtype=np.float64)

    def _reset_simulation(self, rng: np.random.Generator) -> None:
        self.data.qpos[self._qpos] = rng.uniform(-0.9, 0.9, 2) * [SHOULDER_LIMIT, ELBOW_LIMIT]
        self.data.qvel[self._qvel] = rng.uniform(-0.1, 0.1, 2)
        self._target[:] = sample_target(rng)
        self.data.mocap_pos[0] = [self._target[0], self._target[1], 0.01]

    def _set_control(self, action: np.ndarray) -> None:
        self.data.ctrl[:] = action

    def _read_state(self) -> np.ndarray:
        q, v = self.data.qpos, self.data.qvel
        return np.array([q[self._qpos[0]], q[self._qpos[1]], v[self._qvel[0]], v[self._qvel[1]],
                         self._target[0], self._target[1]])

    @property
    def target(self) -> np.ndarray:
        """Target (x, y) in metres, base frame."""
        return self._target.copy()
