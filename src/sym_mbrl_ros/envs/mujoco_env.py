"""The gymnasium environment shared by the MuJoCo tasks: step, reset, render, info['state'].

A task module subclasses :class:`MujocoTaskEnv` and supplies the model (built from its URDF),
how a reset places the robot and the target, how an action becomes ``data.ctrl`` and how the
state is read from the simulation. Reward, termination and success come from the task's
:class:`~sym_mbrl_ros.envs.base.TaskSpec`, so the environment and a model rollout score a
transition with the very same function.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from .base import TaskError, TaskSpec, check_action


class MujocoTaskEnv(gym.Env):
    """A MuJoCo simulation behind the gymnasium API, driven by a :class:`TaskSpec`.

    ``info`` of ``reset`` and of every ``step`` holds ``'state'``: the observer state (numpy,
    shape ``(n,)``) after the call. On the last step of an episode a task with a success test
    adds ``info['is_success']``.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 20}
    task: TaskSpec
    n_substeps: int = 1
    camera: str = "overview"

    def __init__(self, render_mode: str | None = None, width: int = 480, height: int = 360):
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise TaskError(
                f"render_mode {render_mode!r} is not supported; use None or 'rgb_array'"
            )
        self.render_mode = render_mode
        self.width, self.height = int(width), int(height)
        self.model = self._build_model()
        self.data = mujoco.MjData(self.model)
        offscreen = self.model.vis.global_
        offscreen.offwidth = max(offscreen.offwidth, self.width)
        offscreen.offheight = max(offscreen.offheight, self.height)
        joints = [self.model.joint(name).id for name in self.task.joint_names]
        self._joint_qpos = self.model.jnt_qposadr[joints].copy()
        self._joint_dof = self.model.jnt_dofadr[joints].copy()
        self._low = np.asarray(self.task.action_low, dtype=np.float64)
        self._high = np.asarray(self.task.action_high, dtype=np.float64)
        self.action_space = gym.spaces.Box(
            self._low.astype(np.float32), self._high.astype(np.float32), dtype=np.float32
        )
        self.observation_space = self._observation_space()
        self._renderer: mujoco.Renderer | None = None
        self._elapsed = 0
        self._state = np.zeros(self.task.state_dim)

    # ---- what a task supplies -------------------------------------------------------------
    def _build_model(self) -> mujoco.MjModel:
        raise NotImplementedError

    def _observation_space(self) -> gym.spaces.Box:
        raise NotImplementedError

    def _reset_simulation(self, rng: np.random.Generator) -> None:
        """Place robot and target after ``mj_resetData`` (qpos, qvel, mocap, ...)."""
        raise NotImplementedError

    def _set_control(self, action: np.ndarray) -> None:
        """Write the (valid, clipped) action into ``self.data.ctrl``."""
        raise NotImplementedError

    def _read_state(self) -> np.ndarray:
        """The observer state (a new array) of the current simulation."""
        raise NotImplementedError

    # ---- gymnasium API --------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self._reset_simulation(self.np_random)
        mujoco.mj_forward(self.model, self.data)
        self._elapsed = 0
        self._state = self._read_state()
        return self._observe(self._state), {"state": self._state.copy()}

    def step(self, action):
        a = check_action(action, self._low, self._high)
        self._set_control(a)
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        before, after = self._state, self._read_state()
        s, u, s2 = before[None], a[None], after[None]
        reward = float(self.task.reward(s, u, s2)[0])
        terminated = bool(self.task.terminated(s, u, s2)[0])
        self._elapsed += 1
        truncated = self._elapsed >= self.task.max_episode_steps
        info: dict[str, Any] = {"state": after.copy()}
        if (terminated or truncated) and self.task.success is not None:
            info["is_success"] = bool(self.task.success(s2)[0])
        self._state = after
        return self._observe(after), reward, terminated, truncated, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            try:
                self._renderer = mujoco.Renderer(self.model, self.height, self.width)
            except Exception as exc:  # no OpenGL context: say how to get one
                raise TaskError(
                    f"cannot open an OpenGL context for rendering ({exc}); set MUJOCO_GL=osmesa "
                    f"(or egl) before Python imports mujoco"
                ) from exc
        self._renderer.update_scene(self.data, camera=self.camera)
        return self._renderer.render()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ---- helpers for bridges and tests ----------------------------------------------------
    @property
    def state(self) -> np.ndarray:
        """The observer state after the last reset/step (a copy)."""
        return self._state.copy()

    def joint_state(self) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
        """``(names, positions, velocities)`` of the task's URDF joints, for ``/joint_states``."""
        return (
            self.task.joint_names,
            self.data.qpos[self._joint_qpos],
            self.data.qvel[self._joint_dof],
        )

    def _observe(self, state: np.ndarray) -> np.ndarray:
        return np.asarray(self.task.observation(state[None]), dtype=np.float64)[0]


# ---- scene dressing shared by the task models (visual only: no contacts, no mass) ---------
def add_light_and_camera(spec: mujoco.MjSpec, pos, xyaxes, fovy: float = 45.0) -> None:
    """A directional light from above and the fixed ``overview`` camera."""
    spec.worldbody.add_light(
        name="sun",
        pos=[0.0, 0.0, 4.0],
        dir=[0.0, 0.3, -1.0],
        type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL,
        diffuse=[0.5, 0.5, 0.5],
        specular=[0.2, 0.2, 0.2],
    )
    spec.visual.headlight.ambient = [0.25, 0.25, 0.25]
    spec.visual.headlight.diffuse = [0.45, 0.45, 0.45]
    spec.worldbody.add_camera(name="overview", pos=list(pos), xyaxes=list(xyaxes), fovy=fovy)


def add_floor(spec: mujoco.MjSpec, z: float, half_size: float, collide: bool = False):
    """A checkered ground plane at height ``z``; ``collide`` lets wheels touch it."""
    tex = spec.add_texture(
        name="floor_checker",
        type=mujoco.mjtTexture.mjTEXTURE_2D,
        builtin=mujoco.mjtBuiltin.mjBUILTIN_CHECKER,
        rgb1=[0.62, 0.64, 0.66],
        rgb2=[0.52, 0.54, 0.57],
        width=64,
        height=64,
    )
    mat = spec.add_material(name="floor", texrepeat=[8, 8])
    mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = tex.name
    floor = spec.worldbody.add_geom(
        name="floor",
        type=mujoco.mjtGeom.mjGEOM_PLANE,
        size=[half_size, half_size, 0.05],
        pos=[0.0, 0.0, z],
        material="floor",
    )
    floor.contype = 0
    floor.conaffinity = 1 if collide else 0
    return floor


def add_target_marker(spec: mujoco.MjSpec, geoms: list[dict]) -> None:
    """A mocap body ``target`` carrying visual-only geoms (moved by writing ``mocap_pos``)."""
    body = spec.worldbody.add_body(name="target", mocap=True)
    for g in geoms:
        geom = body.add_geom(**g)
        geom.contype = 0
        geom.conaffinity = 0
        geom.group = 2
