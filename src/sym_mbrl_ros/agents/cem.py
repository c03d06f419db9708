"""The cross-entropy method (CEM) over action sequences, for model-predictive control.

Per planning call and start state: a Gaussian over the next ``horizon`` actions (one mean and
std per step and action coordinate); ``iterations`` times, draw ``population`` sequences
(clipped to the action box; the current mean is always one of them), score them with the
world model and the task's reward (:class:`~sym_mbrl_ros.agents.planning.SequenceScorer`, one
batched model call per time step for all sequences and all start states), and refit the
Gaussian to the ``elites`` best, smoothed by ``momentum``. The first action of the result is
executed; the rest of the plan, shifted by one step, warm-starts the next call (receding
horizon), while the std starts afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..envs.base import TaskSpec
from ..errors import UserError
from .planning import ActionBox, SequenceScorer, as_dynamics, shift_plan


@dataclass
class CEMConfig:
    """Settings of the CEM planner."""

    horizon: int = 30
    """Planned steps."""
    population: int = 500
    """Sequences scored per iteration and start state."""
    elites: int = 50
    """Best sequences the Gaussian is refitted to."""
    iterations: int = 3
    """Refits per planning call (3 with the shifted warm start keeps a 30 x 500 plan of the
    learned Pendulum model near 15 ms of CPU, within a 20 Hz control period)."""
    init_std: float = 0.5
    """Initial std of every step, as a fraction of the half action range."""
    min_std: float = 0.0
    """Stop iterating once every std is below this fraction of the half range."""
    momentum: float = 0.1
    """Share of the old mean/std kept at each refit."""
    execute: str = "best"
    """Which sequence's first action is executed: ``best`` (best scored) or ``mean``."""
    gamma: float = 1.0
    """Discount of the planning objective."""
    seed: int = 0
    """Seed of the planner's random generator."""

    def __post_init__(self):
        if self.horizon < 1 or self.population < 2 or self.iterations < 1:
            raise UserError("CEM needs horizon >= 1, population >= 2 and iterations >= 1")
        if not 1 <= self.elites <= self.population:
            raise UserError(f"CEM elites must be in [1, population], got {self.elites}")
        if self.execute not in ("best", "mean"):
            raise UserError(f"CEM execute must be 'best' or 'mean', not {self.execute!r}")


class CEMPlanner:
    """CEM with a shifted warm start, for S start states at once.

    Args:
        dynamics: world model with ``predict_torch`` (or a function ``(s, a) -> s'``).
        task: reward, termination and action box.
        config: settings.
        dtype: torch dtype of the plans and rollouts (float32 is faster on CPU).
    """

    def __init__(
        self,
        dynamics: Any,
        task: TaskSpec,
        config: CEMConfig | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.config = config or CEMConfig()
        self.task, self.dtype = task, dtype
        self.scorer = SequenceScorer(dynamics, task, self.config.gamma)
        self.box = ActionBox(task.action_low, task.action_high, dtype)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.mean: torch.Tensor | None = None
        """Warm start: the mean of the next call's Gaussian, (S, H, m); after ``plan`` the
        plan itself, after ``act`` that plan shifted by one step."""
        self.last_plan: torch.Tensor | None = None
        """The plan of the last call, (S, H, m)."""
        self.last_returns: torch.Tensor | None = None
        """Model return of the best sequence of the last call, (S,)."""
        self.iterations_run = 0

    def set_dynamics(self, dynamics: Any) -> None:
        """Plan with another model from now on (the warm start is kept)."""
        self.scorer.dynamics = as_dynamics(dynamics)

    def reset(self) -> None:
        """Forget the warm start (at the start of an episode)."""
        self.mean = None

    @torch.inference_mode()
    def plan(self, states) -> torch.Tensor:
        """The planned action sequences (S, H, m) for start states (S, n)."""
        cfg = self.config
        s0 = torch.as_tensor(states, dtype=self.dtype).reshape(-1, self.task.state_dim)
        S, H, m, P = s0.shape[0], cfg.horizon, self.task.action_dim, cfg.population
        if self.mean is None or self.mean.shape[0] != S:
            self.mean = self.box.mid.expand(S, H, m).clone()
        mean = self.mean
        std = (cfg.init_std * self.box.half).expand(S, H, m).clone()
        best = mean.clone()
        best_ret = torch.full((S,), -float("inf"), dtype=self.dtype)
        rows = torch.arange(S)
        self.iterations_run = 0
        for _ in range(cfg.iterations):
            noise = torch.randn((S, P, H, m), generator=self.generator, dtype=self.dtype)
            samples = self.box.clip(mean.unsqueeze(1) + std.unsqueeze(1) * noise)
            samples[:, 0] = mean
            returns = self.scorer(s0, samples)  # (S, P)
            top_ret, top = returns.topk(cfg.elites, dim=1)
            elites = samples[rows[:, None], top]  # (S, K, H, m)
            improved = top_ret[:, 0] > best_ret
            best = torch.where(improved[:, None, None], elites[:, 0], best)
            best_ret = torch.where(improved, top_ret[:, 0], best_ret)
            a = cfg.momentum
            mean = a * mean + (1 - a) * elites.mean(1)
            std = a * std + (1 - a) * elites.std(1, unbiased=False)
            self.iterations_run += 1
            if cfg.min_std > 0 and bool((std <= cfg.min_std * self.box.half).all()):
                break
        plan = best if cfg.execute == "best" else mean
        self.last_plan = plan
        self.last_returns = best_ret
        self.mean = plan
        return plan

    def act(self, states) -> torch.Tensor:
        """First action (S, m) of the plan for each state; the shifted plan warm-starts the next."""
        plan = self.plan(states)
        self.mean = shift_plan(self.mean, self.box.mid)
        return plan[:, 0]
