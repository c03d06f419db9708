"""Model-Based Policy Optimisation (Janner et al. 2019), as arXiv 2407.13518 uses it.

The loop, per real step:

1. act in the real task with the current policy (uniformly random for the first
   ``init_random_steps``); the transition, with its observer states, goes to the real buffer;
2. every ``model_train_freq`` steps refit the world model on the real buffer, warm-started
   from the previous fit (``fit(..., init=previous)``);
3. start ``rollout_batch_size`` model rollouts of ``rollout_horizon`` steps from states drawn
   uniformly from the newest ``rollout_start_window`` real transitions; the current policy acts
   on ``task.observation(state)``, the model predicts, the task's true reward scores; all rows
   move in one batched call (:class:`ModelEnv`) and land in the model buffer;
4. take ``updates_per_step`` SAC gradient steps on batches from the model buffer, with a share
   ``real_ratio`` of real transitions (0 by default: synthetic data only, as in the paper).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.replay import ReplayBatch, ReplayBuffer
from ..envs.base import TaskSpec
from ..errors import UserError
from .model_env import ModelEnv
from .sac import SAC, SACConfig, SACLosses

WORLD_MODELS = ("symbolic", "ensemble")


def _mbpo_sac_config() -> SACConfig:
    return SACConfig(hidden_sizes=(128, 128), learning_rate=1e-3)


@dataclass
class MBPOConfig:
    """Hyper-parameters of MBPO (the SAC ones are nested in ``sac``)."""

    world_model: str = "symbolic"
    """``symbolic`` (SymbolicDynamics) or ``ensemble`` (EnsembleDynamics, MBPO's own model)."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the world model's constructor."""
    init_random_steps: int = 200
    """Real steps with uniformly random actions before the first model fit."""
    model_train_freq: int = 250
    """Refit the world model every this many real steps."""
    model_max_samples: int | None = None
    """Fit on at most this many of the newest real transitions (None: all of them)."""
    rollout_batch_size: int = 400
    """Model rollouts started per real step (M)."""
    rollout_horizon: int = 5
    """Decisions per model rollout (H): steps, or blocks of ``action_repeat`` steps."""
    action_repeat: int = 1
    """Model rollouts hold each action for this many steps, and SAC learns the value of
    holding it: one transition per decision, its reward the discounted sum over the held
    steps, bootstrapped with ``sac.gamma ** action_repeat``. Where one control step changes
    little (Car2d: 0.05 s against a 0.3 s speed lag), the values of different actions differ
    by little more than the critic's error; held for k steps, they differ k times more.
    The policy still acts at every real step (a deviation from the paper; 1: off)."""
    rollout_start_window: int = 1000
    """Rollouts start from states drawn from this many newest real transitions."""
    rollout_mix_static: float = 0.0
    """Share of rollout start states that take their static coordinates (the target) from
    another state, drawn from the *whole* real buffer: robot-target combinations the robot
    never lived, over every target it has seen, not only the few of the recent window (a
    deviation from the paper for goal-conditioned tasks; 0: off)."""
    rollout_mix_uniform: float = 0.0
    """Share of rollout start states drawn uniformly from a box instead of from the real
    buffer: the real states' range widened by ``rollout_uniform_margin`` of its width on each
    side, angles over the whole circle, never beyond the safety envelope; static coordinates
    (a target) stay those of a real state. A policy trained only from the states it has lived
    learns nothing about the states just beyond them, and its critic's guess there can pay for
    running away (the pendulum spun up to ~25 rad/s); where the model extrapolates, as an exact
    symbolic one does, these starts teach the critic what lies there (a deviation from the
    paper; 0: off)."""
    rollout_uniform_margin: float = 0.5
    """How far the box of ``rollout_mix_uniform`` reaches beyond the real states' range, as a
    share of that range's width on each side."""
    rollout_state_margin: float | None = 1.0
    """A rollout stops where the model predicts a state outside the range of the real data
    widened by this many times its width on each side (None: no bounds)."""
    rollout_max_disagreement: float | None = None
    """A rollout stops (its transition dropped) where the symbolic model's bagged members
    disagree by more than this share of a coordinate's typical one-step change
    (``SymbolicDynamics.disagreement``); the symbolic model is then fitted with
    ``bagging_members=5`` unless ``model_kwargs`` says otherwise (None: off)."""
    updates_per_step: int = 20
    """SAC gradient steps per real step (G)."""
    first_fit_updates: int = 0
    """Extra SAC updates right after the first model fit, before the next real step, with a
    fresh rollout batch every ``updates_per_step`` of them: the policy first learns in the
    model as if it had lived ``first_fit_updates / updates_per_step`` more steps there.
    A deviation from the paper (0: off). It pays where the model extrapolates beyond its
    random data, as an exact symbolic model does."""
    real_ratio: float = 0.0
    """Share of each SAC batch drawn from the real buffer (0: synthetic data only)."""
    model_retain_steps: int = 50
    """The model buffer keeps the rollouts of this many real steps."""
    real_buffer_size: int = 1_000_000
    """Capacity of the real buffer."""
    sac: SACConfig = field(default_factory=_mbpo_sac_config)
    """SAC settings; its model-free fields (buffer_size, learning_starts, gradient_steps)
    are not used by MBPO."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MBPOConfig:
        """Build a config from a dict (as written by ``asdict``), ignoring unknown keys."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if isinstance(kw.get("sac"), dict):
            kw["sac"] = SACConfig.from_dict(kw["sac"])
        return cls(**kw)


def make_world_model(task: TaskSpec, kind: str, seed: int = 0, **kwargs):
    """A fresh, unfitted world model of the given kind for ``task``."""
    if kind == "symbolic":
        from ..dynamics.symbolic import SymbolicDynamics

        return SymbolicDynamics.for_task(task, seed=seed, **kwargs)
    common = dict(angle_coords=task.angle_coords, static_coords=task.static_coords, seed=seed)
    if kind == "ensemble":
        from ..dynamics.ensemble import EnsembleDynamics

        return EnsembleDynamics(task.state_names, task.action_names, **common, **kwargs)
    raise UserError(f"unknown world model {kind!r}; choose one of {', '.join(WORLD_MODELS)}")


def dynamic_r2(task: TaskSpec, r2: dict[str, float]) -> float:
    """Mean R² over the coordinates that change (static ones are copied, not modelled)."""
    keep = [r2[name] for i, name in enumerate(task.state_names) if i not in task.static_coords]
    keep = [v for v in keep if v is not None and np.isfinite(v)]
    return float(np.mean(keep)) if keep else float("nan")


class MBPO:
    """MBPO with a pluggable world model; the learned policy is a :class:`SAC` agent.

    Args:
        task: the task (observer, reward, termination, action box).
        config: hyper-parameters.
        seed: seeds the agent, the model, the buffers and the first environment reset.
        obs_dim: observation length; None works it out from ``task.observation``.
    """

    def __init__(
        self,
        task: TaskSpec,
        config: MBPOConfig | None = None,
        seed: int = 0,
        obs_dim: int | None = None,
    ):
        self.task = task
        self.config = cfg = config or MBPOConfig()
        if cfg.world_model not in WORLD_MODELS:
            raise UserError(
                f"unknown world model {cfg.world_model!r}; choose one of {', '.join(WORLD_MODELS)}"
            )
        if not 0.0 <= cfg.real_ratio <= 1.0:
            raise UserError(f"real_ratio must lie in [0, 1], got {cfg.real_ratio}")
        if int(cfg.action_repeat) != cfg.action_repeat or cfg.action_repeat < 1:
            raise UserError(f"action_repeat must be a whole number >= 1, got {cfg.action_repeat}")
        if cfg.action_repeat > 1 and cfg.real_ratio > 0:
            raise UserError(
                "real_ratio > 0 needs action_repeat = 1: real transitions last one step, the "
                "model's last action_repeat steps"
            )
        for name in ("rollout_mix_static", "rollout_mix_uniform"):
            if not 0.0 <= float(getattr(cfg, name)) <= 1.0:
                raise UserError(f"{name} must lie in [0, 1], got {getattr(cfg, name)}")
        if float(cfg.rollout_uniform_margin) < 0:
            raise UserError(
                f"rollout_uniform_margin must be >= 0, got {cfg.rollout_uniform_margin}"
            )
        self.seed = seed
        if obs_dim is None:
            obs_dim = int(np.asarray(task.observation(np.zeros((1, task.state_dim)))).shape[-1])
        self.agent = SAC(obs_dim, task.action_low, task.action_high, self._sac_config(), seed=seed)
        m = task.action_dim
        self.real_buffer = ReplayBuffer(
            obs_dim, m, cfg.real_buffer_size, state_dim=task.state_dim, seed=seed + 1
        )
        capacity = cfg.rollout_batch_size * cfg.rollout_horizon * cfg.model_retain_steps
        self.model_buffer = ReplayBuffer(obs_dim, m, capacity, seed=seed + 2)
        self.model: Any = None
        self.model_env: ModelEnv | None = None
        self.start_box: tuple[np.ndarray, np.ndarray] | None = None
        """The box ``rollout_mix_uniform`` draws start states from (set with the model)."""
        self.envelope_bounds: tuple[np.ndarray, np.ndarray] | None = None
        """Per state coordinate, the robot's safety envelope ``(low, high)`` (inf: unbounded):
        model rollouts that leave it are cut, so a policy cannot learn that a state the robot
        must never reach pays (the policy trainer sets it from the controller's envelope)."""
        self.num_timesteps = 0
        self.num_model_fits = 0
        self.last_fit_step = 0
        self.model_metrics: dict[str, Any] = {}
        """Latest fit: ``r2`` (per coordinate, on the training data), ``r2_holdout`` (the
        previous model on the real data gathered since it was fitted), ``fit_s``."""
        self.last_losses: SACLosses | None = None
        self.timings = {"model_fit_s": 0.0, "rollout_s": 0.0, "sac_update_s": 0.0, "env_s": 0.0}

    def _sac_config(self) -> SACConfig:
        """SAC's settings; with action repeat k, one SAC step spans k steps: gamma ** k."""
        k = int(self.config.action_repeat)
        if k == 1:
            return self.config.sac
        return replace(self.config.sac, gamma=self.config.sac.gamma**k)

    # -- the three pieces of the loop

    def fit_model(self) -> dict[str, Any]:
        """Refit the world model on the real buffer, warm-started from the current one."""
        cfg = self.config
        data = self.real_buffer.state_transitions(cfg.model_max_samples)
        metrics: dict[str, Any] = {}
        new_since_fit = self.num_timesteps - self.last_fit_step
        if self.model is not None and new_since_fit > 1:
            recent = self.real_buffer.state_transitions(new_since_fit)
            metrics["r2_holdout"] = dict(self.model.score(*recent))
        t0 = time.perf_counter()
        kwargs = dict(cfg.model_kwargs)
        if cfg.rollout_max_disagreement is not None and cfg.world_model == "symbolic":
            kwargs.setdefault("bagging_members", 5)
        model = make_world_model(
            self.task, cfg.world_model, seed=self.seed + self.num_model_fits, **kwargs
        )
        fitted = model.fit(*data, init=self.model)
        model = fitted if fitted is not None else model
        metrics["fit_s"] = time.perf_counter() - t0
        metrics["r2"] = dict(model.score(*data))
        metrics["samples"] = len(data.states)
        metrics["step"] = self.num_timesteps
        self.timings["model_fit_s"] += metrics["fit_s"]
        self.set_model(model, data.states)
        self.num_model_fits += 1
        self.last_fit_step = self.num_timesteps
        self.model_metrics = metrics
        return metrics

    def set_model(self, model: Any, states: np.ndarray) -> None:
        """Install a fitted world model; its rollouts are cut where they leave the bounds
        that ``states`` (the real states it was fitted on) give (:meth:`state_bounds`).

        :meth:`fit_model` installs every fit through here, and so does a learner whose model
        is fitted elsewhere (the policy trainer node), so both roll out the same way.
        """
        states = np.asarray(states)
        bounds = self.state_bounds(states)
        env = ModelEnv(self.task, model, max_disagreement=self.config.rollout_max_disagreement,
                       **bounds)
        self.model, self.model_env = model, env
        self.start_box = self.uniform_start_box(states, bounds)

    def uniform_start_box(
        self, states: np.ndarray, bounds: dict[str, np.ndarray | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The box ``rollout_mix_uniform`` draws rollout starts from, for real ``states``:
        their range widened by ``rollout_uniform_margin``, angles over [-pi, pi), inside the
        safety envelope and inside the rollout bounds (None: no states). ``bounds``: those
        rollout bounds when the caller has them (:meth:`state_bounds` of ``states``)."""
        if len(states) == 0:
            return None
        lo, hi = states.min(0).astype(np.float64), states.max(0).astype(np.float64)
        widen = float(self.config.rollout_uniform_margin) * (hi - lo)
        lo, hi = lo - widen, hi + widen
        for i in self.task.angle_coords:
            lo[i], hi[i] = -np.pi, np.pi
        if bounds is None:
            bounds = self.state_bounds(states)
        if bounds["state_low"] is not None:
            lo = np.maximum(lo, bounds["state_low"])
            hi = np.minimum(hi, bounds["state_high"])
        return lo, np.maximum(hi, lo)

    def state_bounds(self, states: np.ndarray) -> dict[str, np.ndarray | None]:
        """Bounds model rollouts must stay in: the data's range, widened by the margin, and
        never beyond the robot's safety envelope (:attr:`envelope_bounds`, where set)."""
        data = self._data_bounds(states)
        if self.envelope_bounds is None:
            return data
        low, high = (np.asarray(b, dtype=np.float64) for b in self.envelope_bounds)
        if data["state_low"] is not None:
            low, high = np.maximum(low, data["state_low"]), np.minimum(high, data["state_high"])
        return {"state_low": low, "state_high": high}

    def _data_bounds(self, states: np.ndarray) -> dict[str, np.ndarray | None]:
        margin = self.config.rollout_state_margin
        if margin is None or len(states) == 0:
            return {"state_low": None, "state_high": None}
        lo, hi = states.min(0), states.max(0)
        width = hi - lo
        lo, hi = lo - margin * width, hi + margin * width
        for i in self.task.angle_coords:  # wrapped anyway
            lo[i], hi[i] = -np.inf, np.inf
        for i in self.task.static_coords:  # copied through; new targets may lie anywhere
            lo[i], hi[i] = -np.inf, np.inf
        if self.config.world_model == "symbolic":  # no expression reads them: valid anywhere
            for i in self.task.invariant_coords:
                lo[i], hi[i] = -np.inf, np.inf
        return {"state_low": lo, "state_high": hi}

    @property
    def model_r2(self) -> float:
        """Mean R² of the model over the changing coordinates (held-out when available)."""
        r2 = self.model_metrics.get("r2_holdout", self.model_metrics.get("r2"))
        return float("nan") if r2 is None else dynamic_r2(self.task, r2)

    def rollout(self) -> int:
        """Run one batch of model rollouts into the model buffer; returns transitions added."""
        if self.model_env is None:
            raise RuntimeError("fit the world model before rolling it out")
        cfg = self.config
        t0 = time.perf_counter()
        starts = self.real_buffer.sample_recent_states(
            cfg.rollout_batch_size, cfg.rollout_start_window
        )
        static = list(self.task.static_coords)
        n_mix = int(round(float(cfg.rollout_mix_static) * cfg.rollout_batch_size))
        if n_mix and static:
            donors = self.real_buffer.sample_recent_states(n_mix, len(self.real_buffer))
            rows = torch.randperm(cfg.rollout_batch_size, generator=self.real_buffer.generator)
            rows = rows[:n_mix]
            cols = torch.as_tensor(static)
            starts[rows[:, None], cols] = donors[:, cols]
        n_uniform = int(round(float(cfg.rollout_mix_uniform) * cfg.rollout_batch_size))
        if n_uniform and self.start_box is not None:
            lo, hi = (torch.as_tensor(b, dtype=starts.dtype) for b in self.start_box)
            u = torch.rand((n_uniform, starts.shape[1]), generator=self.real_buffer.generator,
                           dtype=starts.dtype)
            drawn = lo + u * (hi - lo)
            for i in self.task.static_coords:  # a target stays one the robot has seen
                drawn[:, i] = starts[:n_uniform, i]
            starts[:n_uniform] = drawn
        out = self.model_env.rollout(
            lambda obs: self.agent.act(obs, deterministic=False),
            starts,
            cfg.rollout_horizon,
            repeat=int(cfg.action_repeat),
            gamma=cfg.sac.gamma,
        )
        self.model_buffer.add_batch(*out)
        self.timings["rollout_s"] += time.perf_counter() - t0
        return out.observations.shape[0]

    def sample_batch(self) -> ReplayBatch:
        """A SAC batch: ``real_ratio`` of it from the real buffer, the rest from the model's."""
        cfg = self.config
        n_real = int(round(cfg.sac.batch_size * cfg.real_ratio))
        if n_real == 0 or len(self.real_buffer) == 0:
            return self.model_buffer.sample(cfg.sac.batch_size)
        if n_real == cfg.sac.batch_size or len(self.model_buffer) == 0:
            return self.real_buffer.sample(cfg.sac.batch_size)
        real = self.real_buffer.sample(n_real)
        synthetic = self.model_buffer.sample(cfg.sac.batch_size - n_real)
        return ReplayBatch(*(torch.cat(pair) for pair in zip(real, synthetic)))

    def train_policy(self, updates: int | None = None) -> SACLosses | None:
        """``updates`` (default ``updates_per_step``) SAC updates; returns the last one's
        losses."""
        t0 = time.perf_counter()
        for _ in range(self.config.updates_per_step if updates is None else updates):
            self.last_losses = self.agent.update(self.sample_batch())
        self.timings["sac_update_s"] += time.perf_counter() - t0
        return self.last_losses

    def train_in_model(self, updates: int) -> None:
        """``updates`` SAC updates with no real step: a rollout batch, then
        ``updates_per_step`` updates on the model buffer, until ``updates`` are done."""
        per = max(1, self.config.updates_per_step)
        done = 0
        while done < updates:
            self.rollout()
            n = min(per, updates - done)
            self.train_policy(n)
            done += n

    # -- the real-world loop

    def _state(self, obs, info: dict) -> np.ndarray:
        if "state" in info:
            return np.asarray(info["state"], dtype=np.float64)
        return np.asarray(self.task.observe(np.asarray(obs)[None]), dtype=np.float64)[0]

    def learn(
        self,
        total_steps: int,
        env=None,
        callback: Callable[[int, Any], Any] | None = None,
        progress_bar: bool = False,
    ) -> MBPO:
        """Interact with ``env`` (default: ``task.make_env()``) for ``total_steps`` real steps.

        ``callback(step, mbpo)`` runs after every real step (``step`` counts from 1).
        """
        cfg = self.config
        env = env if env is not None else self.task.make_env()
        obs, info = env.reset(seed=self.seed)
        state = self._state(obs, info)
        bar = None
        if progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True)
        for _ in range(total_steps):
            t0 = time.perf_counter()
            if self.num_timesteps < cfg.init_random_steps:
                action = self.agent.random_action()
            else:
                action = self.agent.predict(obs, deterministic=False)
            next_obs, reward, terminated, truncated, info = env.step(action)
            next_state = self._state(next_obs, info)
            self.real_buffer.add(obs, action, reward, next_obs, terminated, state, next_state)
            self.num_timesteps += 1
            if terminated or truncated:
                obs, info = env.reset()
                state = self._state(obs, info)
            else:
                obs, state = next_obs, next_state
            self.timings["env_s"] += time.perf_counter() - t0

            due = self.num_timesteps - self.last_fit_step >= cfg.model_train_freq
            if self.num_timesteps >= cfg.init_random_steps and (self.model is None or due):
                self.fit_model()
                if self.num_model_fits == 1:
                    self.train_in_model(cfg.first_fit_updates)
            if self.model is not None:
                self.rollout()
                self.train_policy()
            if bar is not None:
                bar.update(1)
            if callback is not None:
                callback(self.num_timesteps, self)
        if bar is not None:
            bar.close()
        return self

    # -- using and keeping the result

    def predict(self, obs, deterministic: bool = True) -> np.ndarray:
        """The policy's action(s) for one observation or a batch."""
        return self.agent.predict(obs, deterministic)

    def save(self, directory: str | Path) -> None:
        """Write ``policy.pt``, the world model (``model.json`` or ``model.pt``) and
        ``mbpo.json`` (config and model metrics) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.agent.save(d / "policy.pt")
        if self.model is not None:
            self.model.save(d / model_filename(self.config.world_model))
        meta = {"config": asdict(self.config), "model_metrics": self.model_metrics}
        (d / "mbpo.json").write_text(json.dumps(meta, indent=2, default=_jsonable))

    @classmethod
    def load(cls, directory: str | Path, task: TaskSpec) -> MBPO:
        """Rebuild an MBPO learner (policy and world model) written by :meth:`save`."""
        d = Path(directory)
        try:
            meta = json.loads((d / "mbpo.json").read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {d / 'mbpo.json'}: {exc}") from exc
        mbpo = cls(task, MBPOConfig.from_dict(meta["config"]))
        mbpo.agent = SAC.load(d / "policy.pt", num_threads=mbpo.config.sac.num_threads)
        path = d / model_filename(mbpo.config.world_model)
        if path.exists():
            mbpo.model = _model_class(mbpo.config.world_model).load(path)
            mbpo.model_env = ModelEnv(task, mbpo.model)  # no real data here, so no bounds
        mbpo.model_metrics = meta.get("model_metrics", {})
        return mbpo


def model_filename(kind: str) -> str:
    """File name a world model of this kind is saved under in a run folder."""
    return "model.json" if kind == "symbolic" else "model.pt"


def _model_class(kind: str):
    if kind == "symbolic":
        from ..dynamics.symbolic import SymbolicDynamics

        return SymbolicDynamics
    from ..dynamics.ensemble import EnsembleDynamics

    return EnsembleDynamics


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
