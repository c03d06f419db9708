"""Evaluate a policy on the real task: deterministic actions, episodes with given seeds.

The episodes run side by side, one environment each, so the policy is called once per step
for all of them (a batch), not once per episode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from ..envs.base import TaskSpec


class EvalResult(NamedTuple):
    """Returns (and success, for tasks with a success test) of a set of episodes."""

    mean: float
    std: float
    returns: list[float]
    success_rate: float | None
    """Share of episodes that ended in success; None for tasks without a success test."""


class Evaluator:
    """Runs ``episodes`` evaluation episodes of ``task``.

    Args:
        task: the task; its environment is created ``episodes`` times.
        episodes: episodes per evaluation.
        seed: without ``seeds`` in the call, episode ``i`` resets with seed ``seed + i``.
        env_kwargs: passed to ``task.make_env``.

    The benchmark protocol (:mod:`sym_mbrl_ros.protocol`) passes fresh ``seeds`` to every
    call, so that no two evaluations of a run replay the same episodes.
    """

    def __init__(self, task: TaskSpec, episodes: int = 5, seed: int = 10_000, **env_kwargs):
        self.task = task
        self.seed = seed
        self.envs = [task.make_env(**env_kwargs) for _ in range(episodes)]

    def __call__(self, policy: Callable[[np.ndarray], np.ndarray] | object,
                 seeds: Sequence[int] | None = None) -> EvalResult:
        """Evaluate ``policy``: an object with ``predict(obs_batch, deterministic=True)`` or a
        function mapping a (B, o) batch of observations to (B, m) actions. ``seeds``: one
        reset seed per episode (default ``seed + i``)."""
        act = _as_batch_policy(policy)
        n = len(self.envs)
        if seeds is None:
            seeds = [self.seed + i for i in range(n)]
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} episode seeds for {n} evaluation episodes")
        obs = np.stack([env.reset(seed=int(s))[0] for s, env in zip(seeds, self.envs)])
        returns = np.zeros(n)
        done = np.zeros(n, dtype=bool)
        success = np.zeros(n, dtype=bool)
        while not done.all():
            live = np.flatnonzero(~done)
            actions = np.asarray(act(obs[live]), dtype=np.float64).reshape(len(live), -1)
            for j, i in enumerate(live):
                o, r, terminated, truncated, info = self.envs[i].step(actions[j])
                obs[i] = o
                returns[i] += r
                if terminated or truncated:
                    done[i] = True
                    success[i] = bool(info.get("is_success", False))
        rate = float(success.mean()) if self.task.success is not None else None
        return EvalResult(float(returns.mean()), float(returns.std()), returns.tolist(), rate)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _as_batch_policy(policy) -> Callable[[np.ndarray], np.ndarray]:
    if hasattr(policy, "predict"):
        def act(obs: np.ndarray) -> np.ndarray:
            out = policy.predict(obs, deterministic=True)
            return out[0] if isinstance(out, tuple) else out  # SB3 returns (action, state)

        return act
    return policy
