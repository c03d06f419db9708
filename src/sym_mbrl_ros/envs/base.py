"""The task contract shared by the environments, the world model and the agents.

A *task* is a MuJoCo-backed gymnasium environment plus everything a model-based learner needs
to plan without touching the simulator:

* an **observer** ``observe(obs) -> state``: the state whose dynamics are learned, one named
  coordinate per entry (``state_names``); ``observation(state) -> obs`` is its inverse, so a
  policy that reads observations can act inside a model rollout;
* the **reward** and **termination** as vectorised functions of ``(state, action, next_state)``,
  written once against an array namespace so they run on numpy arrays *and* torch tensors and
  give exactly the environment's own reward.

All batched functions take arrays of shape ``(B, n)`` / ``(B, m)`` and return ``(B,)`` or
``(B, k)``; numpy in, numpy out; torch in, torch out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:  # torch is a hard dependency of the package, but keep the import cheap to reason about
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]


class TaskError(ValueError):
    """A user-facing error about a task: unknown name, bad action, bad array."""


class ArrayOps:
    """The handful of array functions the task formulas need, for numpy or torch."""

    def __init__(self, like: Any):
        self.is_torch = torch is not None and isinstance(like, torch.Tensor)

    def sin(self, x):
        return torch.sin(x) if self.is_torch else np.sin(x)

    def cos(self, x):
        return torch.cos(x) if self.is_torch else np.cos(x)

    def sqrt(self, x):
        return torch.sqrt(x) if self.is_torch else np.sqrt(x)

    def atan2(self, y, x):
        return torch.atan2(y, x) if self.is_torch else np.arctan2(y, x)

    def stack(self, xs, axis=-1):
        return torch.stack(xs, dim=axis) if self.is_torch else np.stack(xs, axis=axis)

    def clip(self, x, lo, hi):
        if self.is_torch:
            if np.ndim(lo) == 0 and np.ndim(hi) == 0:
                # scalar bounds: one clamp, no bound tensors built per call (a planner's
                # reward calls this once per step of every rollout)
                return torch.clamp(x, float(lo), float(hi))
            lo_t = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
            hi_t = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
            return torch.maximum(torch.minimum(x, hi_t), lo_t)
        return np.minimum(np.maximum(x, lo), hi)  # np.clip, without its per-call overhead

    def zeros_bool(self, like):
        if self.is_torch:
            return torch.zeros(like.shape[0], dtype=torch.bool, device=like.device)
        return np.zeros(like.shape[0], dtype=bool)


def wrap_angle(x):
    """Map angles (numpy or torch) to [-pi, pi)."""
    return (x + np.pi) % (2 * np.pi) - np.pi


@dataclass(frozen=True)
class TaskSpec:
    """Everything about a task that a model-based learner may use, with no simulator inside.

    Attributes:
        name: short name used on the command line (``pendulum``).
        env_id: gymnasium id (``SymMbrl/Pendulum-v0``).
        state_names: one name per modelled state coordinate (the observer's output).
        action_names: one name per action coordinate.
        angle_coords: indices of periodic state coordinates, kept in [-pi, pi).
        static_coords: indices of coordinates that never change within an episode (a target);
            a world model copies them through instead of learning them.
        invariant_coords: indices of coordinates the dynamics do not depend on (a mobile
            base's position on a flat floor: the physics is the same everywhere); a symbolic
            world model predicts them but uses them in no expression.
        action_low, action_high: box bounds of the action.
        dt: control period in seconds.
        max_episode_steps: episode length in control steps.
        observe: observer, obs (B, o) -> state (B, n); numpy or torch.
        observation: inverse observer, state (B, n) -> obs (B, o); numpy or torch.
        reward: (state, action, next_state) -> (B,) reward, identical to the env's reward.
        terminated: (state, action, next_state) -> (B,) bool.
        terminates: False when ``terminated`` is always False (episodes end only by
            truncation): a planner's scorer then skips it (a test holds each task to it).
        success: state (B, n) -> (B,) bool, the task's success test (None if the task has none).
        description: one paragraph for ``sym-mbrl tasks`` and the docs.
        joint_names: names of the URDF joints the topic contract uses, in command order.
        observation_names: one name per observation entry (what a policy formula reads).
        policy_inputs: indices of the observation entries a policy network reads (None: all).
            The observation keeps what the observer needs to rebuild the state; a policy only
            needs what the reward and the motion depend on. Car2d's reward and motion depend
            on where the target lies relative to the car, not on where on the floor the two
            are, so its policies read the speed, the steering and the target in the car's
            frame. Every learner (ours and the Stable-Baselines3 anchor) gets the same inputs.
    """

    name: str
    env_id: str
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    angle_coords: tuple[int, ...]
    static_coords: tuple[int, ...]
    action_low: np.ndarray
    action_high: np.ndarray
    dt: float
    max_episode_steps: int
    observe: Callable[[Any], Any]
    observation: Callable[[Any], Any]
    reward: Callable[[Any, Any, Any], Any]
    terminated: Callable[[Any, Any, Any], Any]
    success: Callable[[Any], Any] | None = None
    description: str = ""
    joint_names: tuple[str, ...] = field(default_factory=tuple)
    observation_names: tuple[str, ...] = field(default_factory=tuple)
    invariant_coords: tuple[int, ...] = ()
    policy_inputs: tuple[int, ...] | None = None
    terminates: bool = True

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    def make_env(self, **kwargs):
        """Create the gymnasium environment (``gymnasium.make(env_id, **kwargs)``)."""
        import gymnasium as gym

        from . import register_all

        register_all()
        return gym.make(self.env_id, **kwargs)


def check_action(action, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Validate an action for ``env.step``: right shape, finite; returns it clipped to the box."""
    a = np.asarray(action, dtype=np.float64)
    if a.shape != low.shape:
        raise TaskError(
            f"action has shape {a.shape}, but this task expects shape {low.shape}; "
            f"pass one value per action coordinate"
        )
    if not np.isfinite(a).all():
        raise TaskError(f"action contains NaN or inf ({a.tolist()}); pass finite values")
    return np.minimum(np.maximum(a, low), high)  # np.clip, without its per-call overhead
