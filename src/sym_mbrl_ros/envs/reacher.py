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

import math

import gymnasium as gym
import mujoco
import numpy as np

from .assets import load_urdf_spec
from .base import ArrayOps, TaskSpec
from .mujoco_env import MujocoTaskEnv, add_floor, add_light_and_camera, add_target_marker

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
