"""In-memory replay buffers for the agents: a ring buffer of transitions stored as torch tensors.

The same :class:`ReplayBuffer` holds real transitions (with the observer states, so a world
model can be fitted on them and rollouts can start from them) and synthetic transitions from
model rollouts. Batches come out as typed NamedTuples, like Stable-Baselines3's.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import UserError


class ReplayBatch(NamedTuple):
    """A batch of transitions for the SAC losses; every field has batch size B on dim 0."""

    observations: torch.Tensor
    """(B, o) observations the policy acted on."""
    actions: torch.Tensor
    """(B, m) actions, in the task's units."""
    rewards: torch.Tensor
    """(B,) rewards."""
    next_observations: torch.Tensor
    """(B, o) observations after the step."""
    terminated: torch.Tensor
    """(B,) 1.0 where the episode ended by termination (no bootstrap), else 0.0."""


class StateTransitions(NamedTuple):
    """Observer-state transitions, the data a world model is fitted on (numpy, float64)."""

    states: np.ndarray
    """(N, n) states."""
    actions: np.ndarray
    """(N, m) actions."""
    next_states: np.ndarray
    """(N, n) next states."""


def _as_rows(x, dim: int, dtype: torch.dtype) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=dtype)
    return t.reshape(-1, dim) if dim else t.reshape(-1)


class ReplayBuffer:
    """A fixed-capacity ring buffer of transitions; the oldest ones are overwritten first.

    Args:
        obs_dim: length of an observation.
        action_dim: length of an action.
        capacity: the most transitions kept.
        state_dim: length of the observer state; 0 stores no states.
        seed: seed of the buffer's own sampling generator.
    """

    def __init__(
        self, obs_dim: int, action_dim: int, capacity: int, state_dim: int = 0, seed: int = 0
    ):
        if capacity <= 0:
            raise UserError(f"replay buffer capacity must be positive, got {capacity}")
        self.obs_dim, self.action_dim, self.state_dim = obs_dim, action_dim, state_dim
        self.capacity = int(capacity)
        f32 = torch.float32
        self.observations = torch.zeros(capacity, obs_dim, dtype=f32)
        self.actions = torch.zeros(capacity, action_dim, dtype=f32)
        self.rewards = torch.zeros(capacity, dtype=f32)
        self.next_observations = torch.zeros(capacity, obs_dim, dtype=f32)
        self.terminated = torch.zeros(capacity, dtype=f32)
        self.states = torch.zeros(capacity, state_dim, dtype=torch.float64)
        self.next_states = torch.zeros(capacity, state_dim, dtype=torch.float64)
        self.pos = 0
        """Index the next transition is written to."""
        self.size = 0
        self.samples_drawn = 0
        """How many transitions :meth:`sample` has returned in total (for tests and logs)."""
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs,
        action,
        reward: float,
        next_obs,
        terminated: bool,
        state=None,
        next_state=None,
    ) -> None:
        """Store one transition (numpy arrays or floats)."""
        i = self.pos
        self.observations[i] = torch.as_tensor(obs, dtype=torch.float32)
        self.actions[i] = torch.as_tensor(action, dtype=torch.float32)
        self.rewards[i] = float(reward)
        self.next_observations[i] = torch.as_tensor(next_obs, dtype=torch.float32)
        self.terminated[i] = float(terminated)
        if self.state_dim:
            self.states[i] = torch.as_tensor(state, dtype=torch.float64)
            self.next_states[i] = torch.as_tensor(next_state, dtype=torch.float64)
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def add_batch(
        self,
        observations,
        actions,
        rewards,
        next_observations,
        terminated,
        states=None,
        next_states=None,
    ) -> None:
        """Store B transitions at once (torch tensors or numpy arrays with B rows)."""
        f32 = torch.float32
        obs = _as_rows(observations, self.obs_dim, f32)
        n = obs.shape[0]
        if n == 0:
            return
        if n > self.capacity:  # only the newest rows fit
            keep = slice(n - self.capacity, n)
            return self.add_batch(
                observations[keep], actions[keep], rewards[keep], next_observations[keep],
                terminated[keep],
                None if states is None else states[keep],
                None if next_states is None else next_states[keep],
            )
        idx = (torch.arange(n) + self.pos) % self.capacity
        self.observations[idx] = obs
        self.actions[idx] = _as_rows(actions, self.action_dim, f32)
        self.rewards[idx] = _as_rows(rewards, 0, f32)
        self.next_observations[idx] = _as_rows(next_observations, self.obs_dim, f32)
        self.terminated[idx] = _as_rows(terminated, 0, f32)
        if self.state_dim:
            self.states[idx] = _as_rows(states, self.state_dim, torch.float64)
            self.next_states[idx] = _as_rows(next_states, self.state_dim, torch.float64)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> ReplayBatch:
        """Draw ``batch_size`` transitions uniformly, with replacement."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = torch.randint(0, self.size, (batch_size,), generator=self.generator)
        self.samples_drawn += batch_size
        return ReplayBatch(
            self.observations[idx],
            self.actions[idx],
            self.rewards[idx],
            self.next_observations[idx],
            self.terminated[idx],
        )

    def recent_indices(self, window: int) -> torch.Tensor:
        """Indices of the ``window`` most recently added transitions, oldest first."""
        k = min(int(window), self.size)
        return (torch.arange(self.pos - k, self.pos) + self.capacity) % self.capacity

    def sample_recent_states(self, n: int, window: int) -> torch.Tensor:
        """Draw ``n`` observer states uniformly from the ``window`` newest transitions."""
        if not self.state_dim:
            raise RuntimeError("this replay buffer stores no states")
        recent = self.recent_indices(window)
        if recent.numel() == 0:
            raise RuntimeError("cannot sample states from an empty replay buffer")
        pick = torch.randint(0, recent.numel(), (n,), generator=self.generator)
        return self.states[recent[pick]]

    def state_transitions(self, window: int | None = None) -> StateTransitions:
        """The stored (state, action, next_state) triples, oldest first, as float64 numpy."""
        if not self.state_dim:
            raise RuntimeError("this replay buffer stores no states")
        idx = self.recent_indices(self.size if window is None else window)
        return StateTransitions(
            self.states[idx].numpy().copy(),
            self.actions[idx].double().numpy(),
            self.next_states[idx].numpy().copy(),
        )

    def save(self, path: str | Path) -> None:
        """Write the stored transitions, oldest first, to an ``.npz`` file."""
        idx = self.recent_indices(self.size)
        arrays = {
            "observations": self.observations[idx].numpy(),
            "actions": self.actions[idx].numpy(),
            "rewards": self.rewards[idx].numpy(),
            "next_observations": self.next_observations[idx].numpy(),
            "terminated": self.terminated[idx].numpy(),
            "capacity": np.array(self.capacity),
        }
        if self.state_dim:
            arrays["states"] = self.states[idx].numpy()
            arrays["next_states"] = self.next_states[idx].numpy()
        np.savez_compressed(Path(path), **arrays)

    @classmethod
    def load(cls, path: str | Path, seed: int = 0) -> ReplayBuffer:
        """Read a buffer written by :meth:`save`."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                d = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read replay buffer {path}: {exc}") from exc
        state_dim = d["states"].shape[1] if "states" in d else 0
        buf = cls(
            d["observations"].shape[1], d["actions"].shape[1], int(d["capacity"]), state_dim, seed
        )
        buf.add_batch(
            d["observations"], d["actions"], d["rewards"], d["next_observations"],
            d["terminated"], d.get("states"), d.get("next_states"),
        )
        return buf
