"""MuJoCo simulation of the ``car2d`` task (the spec, without MuJoCo, is ``car2d.py``)."""

from __future__ import annotations

import math

import gymnasium as gym
import mujoco
import numpy as np

from .assets import load_urdf_spec
from .car2d import (
    CHASSIS_JOINTS,
    DT,
    FRICTION,
    MAX_SPEED,
    MAX_STEER,
    N_SUBSTEPS,
    SPEED_TIME_CONSTANT,
    STEER_ARMATURE,
    STEER_DAMPING_RATIO,
    STEER_OMEGA,
    STEERING,
    SUCCESS_DISTANCE,
    TARGET_RADIUS,
    TASK,
    TIMESTEP,
    WHEEL_RADIUS,
    WHEELS,
)
from .mujoco_env import MujocoTaskEnv, add_floor, add_light_and_camera, add_target_marker


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
