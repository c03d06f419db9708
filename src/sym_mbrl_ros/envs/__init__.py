"""The shipped MuJoCo tasks: Pendulum, Reacher, Car2d and CartPole.

``TASKS`` maps a task name to its :class:`~sym_mbrl_ros.envs.base.TaskSpec` (observer, reward,
termination, success, action box); ``register_all()`` registers the gymnasium ids
``SymMbrl/Pendulum-v0``, ``SymMbrl/Reacher-v0``, ``SymMbrl/Car2d-v0`` and
``SymMbrl/CartPole-v0``; ``make_env(name)`` creates an environment by task name. Each task's
spec (``pendulum``, ``reacher``, ``car2d``, ``cartpole``) is plain numpy/torch; its MuJoCo
environment lives beside it (``pendulum_sim``, ...), so that the nodes on a robot computer
import neither MuJoCo nor gymnasium. docs/tasks.md describes their physics and observers.
"""

from __future__ import annotations

import os
import sys

# MuJoCo picks its OpenGL backend when it is first imported; with no display, GLFW cannot
# open a context, so offscreen rendering defaults to OSMesa (set MUJOCO_GL=egl for a GPU).
if (
    sys.platform.startswith("linux")
    and "MUJOCO_GL" not in os.environ
    and not os.environ.get("DISPLAY")
    and not os.environ.get("WAYLAND_DISPLAY")
):
    os.environ["MUJOCO_GL"] = "osmesa"

from .base import ArrayOps, TaskError, TaskSpec, check_action, wrap_angle  # noqa: E402
from .car2d import TASK as CAR2D  # noqa: E402
from .cartpole import TASK as CARTPOLE  # noqa: E402
from .pendulum import TASK as PENDULUM  # noqa: E402
from .reacher import TASK as REACHER  # noqa: E402

TASKS: dict[str, TaskSpec] = {
    "pendulum": PENDULUM, "reacher": REACHER, "car2d": CAR2D, "cartpole": CARTPOLE,
}

_ENTRY_POINTS = {
    "pendulum": "sym_mbrl_ros.envs.pendulum_sim:PendulumEnv",
    "reacher": "sym_mbrl_ros.envs.reacher_sim:ReacherEnv",
    "car2d": "sym_mbrl_ros.envs.car2d_sim:Car2dEnv",
    "cartpole": "sym_mbrl_ros.envs.cartpole_sim:CartPoleEnv",
}


def get_task(name: str) -> TaskSpec:
    """The task called ``name``; raises TaskError naming the valid choices otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise TaskError(
            f"unknown task {name!r}; choose one of: {', '.join(TASKS)}"
        ) from None


def register_all() -> None:
    """Register every task's gymnasium id (safe to call any number of times)."""
    import gymnasium as gym

    for name, task in TASKS.items():
        if task.env_id not in gym.registry:
            gym.register(
                id=task.env_id,
                entry_point=_ENTRY_POINTS[name],
                max_episode_steps=task.max_episode_steps,
            )


def make_env(name: str, **kwargs):
    """``gymnasium.make`` the task called ``name`` (kwargs: ``render_mode``, ``width``, ...)."""
    return get_task(name).make_env(**kwargs)


__all__ = [
    "TASKS",
    "ArrayOps",
    "TaskError",
    "TaskSpec",
    "check_action",
    "get_task",
    "make_env",
    "register_all",
    "wrap_angle",
]
