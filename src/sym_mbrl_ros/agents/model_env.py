"""A world model plus a task, used as a batched environment (in the manner of mbrl-lib).

All B rows step in one call: the model predicts the next states, the task's own reward and
termination functions (torch versions) score them, and the inverse observer turns states into
the observations a policy reads. There is no per-sample Python loop anywhere in here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from ..envs.base import TaskSpec
from ..errors import UserError


class ModelStep(NamedTuple):
    """One batched model step."""

    next_observations: torch.Tensor
    """(B, o) float32 observations of the predicted next states."""
    rewards: torch.Tensor
    """(B,) task reward of (state, action, next state)."""
    terminated: torch.Tensor
    """(B,) bool, the task's termination test, or True where the prediction is not valid."""
    next_states: torch.Tensor
    """(B, n) predicted next states."""
    valid: torch.Tensor
    """(B,) bool, False where the prediction was not finite, left the state bounds or (with
    ``max_disagreement``) the model's members disagreed too much."""


class Rollout(NamedTuple):
    """Transitions from a batch of model rollouts, flattened over rows and steps."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    terminated: torch.Tensor
    """float 0/1."""


class ModelEnv:
    """Any dynamics model with ``predict_torch(states, actions)`` stepped as a batched env.

    Args:
        task: the task (reward, termination, observer, angle and static coordinates).
        model: the world model; ``predict_torch`` maps (B, n) states and (B, m) actions to
            (B, n) next states.
        dtype: floating type the states are kept in.
        state_low, state_high: optional (n,) bounds; a predicted state outside them is not
            trusted (the model extrapolates there) and counts as invalid, like NaN.
        max_disagreement: optional; a prediction whose ensemble members disagree by more than
            this (the model's ``disagreement_torch``: the largest member spread of a
            coordinate, in units of its typical one-step change) is not trusted either, so a
            rollout ends where the model does not know. Needs a model with members
            (``SymbolicDynamics`` fitted with ``bagging_members > 0``).
    """

    def __init__(
        self,
        task: TaskSpec,
        model: Any,
        dtype: torch.dtype = torch.float64,
        state_low=None,
        state_high=None,
        max_disagreement: float | None = None,
    ):
        if max_disagreement is not None:
            if not max_disagreement > 0:
                raise UserError(f"max_disagreement must be positive, got {max_disagreement}")
            if getattr(model, "n_members", 0) < 2 or not hasattr(model, "disagreement_torch"):
                raise UserError(
                    "max_disagreement needs a world model with at least 2 ensemble members "
                    "(SymbolicDynamics fitted with bagging_members >= 2)"
                )
        self.max_disagreement = max_disagreement
        self.n_uncertain = 0
        """Predictions dropped so far because the members disagreed (``max_disagreement``)."""
        self.task = task
        self.model = model
        self.dtype = dtype
        self.states: torch.Tensor | None = None
        self.state_low = None if state_low is None else torch.as_tensor(state_low, dtype=dtype)
        self.state_high = None if state_high is None else torch.as_tensor(state_high, dtype=dtype)
        self._angles = list(task.angle_coords)
        self._static = list(task.static_coords)
        self._low = torch.as_tensor(task.action_low, dtype=dtype)
        self._high = torch.as_tensor(task.action_high, dtype=dtype)

    def observe(self, states: torch.Tensor) -> torch.Tensor:
        """Observations (float32) of a batch of states, through the task's inverse observer."""
        return self.task.observation(states).to(torch.float32)

    def reset(self, states: torch.Tensor) -> torch.Tensor:
        """Start B rollouts from the given states; returns their observations."""
        self.states = torch.as_tensor(states, dtype=self.dtype)
        return self.observe(self.states)

    def step(self, actions: torch.Tensor) -> ModelStep:
        """Advance every row by one model step."""
        if self.states is None:
            raise RuntimeError("call reset(states) before step(actions)")
        s = self.states
        a = torch.maximum(torch.minimum(actions.to(self.dtype), self._high), self._low)
        nxt = self.model.predict_torch(s, a).to(self.dtype)
        if self._angles:
            nxt[:, self._angles] = (nxt[:, self._angles] + math.pi) % (2 * math.pi) - math.pi
        if self._static:
            nxt[:, self._static] = s[:, self._static]
        valid = torch.isfinite(nxt).all(-1)
        if self.state_low is not None:
            valid &= (nxt >= self.state_low).all(-1)
        if self.state_high is not None:
            valid &= (nxt <= self.state_high).all(-1)
        if self.max_disagreement is not None:
            spread = self.model.disagreement_torch(s, a).to(self.dtype)
            certain = spread <= self.max_disagreement  # NaN: not certain
            self.n_uncertain += int((valid & ~certain).sum())
            valid &= certain
        nxt = torch.where(valid[:, None], nxt, s)  # keep the math finite; the rows are dropped
        rewards = self.task.reward(s, a, nxt)
        obs = self.observe(nxt)
        valid &= torch.isfinite(rewards) & torch.isfinite(obs).all(-1)
        terminated = self.task.terminated(s, a, nxt) | ~valid
        self.states = nxt
        return ModelStep(obs, rewards, terminated, nxt, valid)

    @torch.no_grad()
    def rollout(
        self,
        policy: Callable[[torch.Tensor], torch.Tensor],
        start_states: torch.Tensor,
        horizon: int,
        repeat: int = 1,
        gamma: float = 1.0,
    ) -> Rollout:
        """Roll ``policy`` (observations -> actions, batched) for ``horizon`` decisions.

        With ``repeat`` k > 1 each decision holds its action for k model steps and is one
        transition: the observation before, the action, the discounted reward sum
        ``r_0 + gamma r_1 + ... + gamma^(k-1) r_(k-1)`` and the observation after the k steps.
        A row stops at its first terminal step (its reward sum ends there); a transition during
        which a prediction was not finite, left the state bounds or was uncertain (members
        disagreeing beyond ``max_disagreement``) is dropped. Returns every kept transition,
        flattened.
        """
        if repeat < 1:
            raise ValueError(f"repeat must be at least 1, got {repeat}")
        obs = self.reset(start_states)
        alive = torch.ones(obs.shape[0], dtype=torch.bool)
        out: list[tuple[torch.Tensor, ...]] = []
        for _ in range(horizon):
            actions = policy(obs)
            total = torch.zeros(obs.shape[0], dtype=self.dtype)
            valid = torch.ones_like(alive)
            ended = torch.zeros_like(alive)
            next_obs = obs
            for j in range(repeat):
                step = self.step(actions)
                running = ~ended
                valid &= step.valid | ended
                total = total + torch.where(running, (gamma**j) * step.rewards, 0.0)
                next_obs = torch.where(running[:, None], step.next_observations, next_obs)
                ended |= step.terminated
                if bool(ended.all()):
                    break
            keep = alive & valid
            out.append((
                obs[keep], actions[keep].to(torch.float32), total[keep].to(torch.float32),
                next_obs[keep], ended[keep].to(torch.float32),
            ))
            alive = alive & ~ended
            if not alive.any():
                break
            obs = next_obs
        return Rollout(*(torch.cat(parts) for parts in zip(*out)))
