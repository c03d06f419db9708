"""sym-mpc: model-predictive control with the symbolic world model, learned online.

The MPC loop of the MBRL overview, per real step:

1. act: for the first ``init_random_steps`` uniformly at random, then with the planner
   (CEM or gradient-based, ``agents/cem.py`` / ``agents/planning.py``) on the current model:
   plan ``horizon`` steps ahead, execute the first action, keep the rest as the next warm start;
2. append the transition (observer states) to the data;
3. every ``refit_every`` steps refit the world model on all the data, warm-started from the
   previous fit (``SymbolicDynamics.fit(..., init=previous)``), and plan with the new one.

There is no policy network: the controller *is* the planner plus the formulas of the model.
:class:`MPCController` is that controller (``predict(obs)`` batched, like a policy;
``act(state)`` for one state, what the ROS controller calls); :func:`make_planner` is the
``module:factory`` hook of ``nodes/policies.py``; :class:`SymMPC` is the learner with the
same ``learn / predict / save`` verbs as SAC and MBPO; ``sym-mbrl train TASK --algo sym-mpc``
(``commands/train.py``) runs it and writes the run folder.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..envs.base import TaskSpec
from ..errors import UserError
from .cem import CEMConfig, CEMPlanner
from .planning import GradientPlanner, GradientPlannerConfig, planning_model

PLANNERS = ("cem", "gradient")


@dataclass
class MPCConfig:
    """Hyper-parameters of sym-mpc (the planner's are nested)."""

    planner: str = "cem"
    """``cem`` or ``gradient``."""
    cem: CEMConfig = field(default_factory=CEMConfig)
    """CEM settings (horizon, population, elites, iterations, ...)."""
    gradient: GradientPlannerConfig = field(default_factory=GradientPlannerConfig)
    """Gradient-planner settings."""
    init_random_steps: int = 200
    """Real steps with uniformly random actions before the first model fit."""
    refit_every: int = 200
    """Refit the world model every this many real steps (warm-started from the last fit)."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``SymbolicDynamics`` (backend, library settings, ...)."""
    model_max_samples: int | None = None
    """Fit on at most this many of the newest transitions (None: all of them)."""
    float64: bool = False
    """Plan in float64 (float32 is faster and precise enough for control)."""
    num_threads: int | None = 1
    """torch intra-op threads of each thread that plans (set there on its first plan; None
    leaves torch's setting). The planner's tensors are small: with more threads every matrix
    product and ``sin`` waits for a second core, which on a busy machine costs milliseconds."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MPCConfig:
        """Build a config from a dict (as written by ``asdict``; ``cem`` and ``gradient`` may
        be dicts of their settings); an unknown key is a :class:`UserError` naming the known."""
        kw = _checked(cls, d, "MPC")
        if isinstance(kw.get("cem"), dict):
            kw["cem"] = CEMConfig(**_checked(CEMConfig, kw["cem"], "CEM"))
        if isinstance(kw.get("gradient"), dict):
            kw["gradient"] = GradientPlannerConfig(
                **_checked(GradientPlannerConfig, kw["gradient"], "gradient planner")
            )
        return cls(**kw)


def _checked(cls, d: dict[str, Any], what: str) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise UserError(
            f"unknown {what} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    return dict(d)


class MPCController:
    """Receding-horizon control with a world model: plan, execute the first action, replan.

    Args:
        task: the task (observer, reward, action box).
        model: the dynamics model (``predict_torch``); symbolic models are compiled for speed
            (:func:`~sym_mbrl_ros.agents.planning.planning_model`).
        config: settings (only the planner fields are used here).
        seed: seed of the planner's sampling.
    """

    def __init__(self, task: TaskSpec, model: Any, config: MPCConfig | None = None, seed: int = 0):
        self.task = task
        self.config = cfg = config or MPCConfig()
        if cfg.planner not in PLANNERS:
            raise UserError(f"unknown planner {cfg.planner!r}; choose one of {', '.join(PLANNERS)}")
        dtype = torch.float64 if cfg.float64 else torch.float32
        dynamics = planning_model(model)
        if cfg.planner == "cem":
            pcfg = CEMConfig(**{**asdict(cfg.cem), "seed": cfg.cem.seed + seed})
            self.planner: CEMPlanner | GradientPlanner = CEMPlanner(dynamics, task, pcfg, dtype)
        else:
            gseed = cfg.gradient.seed + seed
            gcfg = GradientPlannerConfig(**{**asdict(cfg.gradient), "seed": gseed})
            self.planner = GradientPlanner(dynamics, task, gcfg, torch.float64)
        self.model = model
        self.plan_seconds: deque[float] = deque(maxlen=10_000)
        """Wall time of each planning call (for diagnostics and benchmarks)."""
        self._threads = threading.local()

    def _limit_threads(self) -> None:
        """Apply ``config.num_threads`` in the calling thread (once per thread).

        torch's thread count is partly per thread (OpenMP) and partly per process (MKL), and
        ``torch.get_num_threads()`` can report 1 in a thread that still runs small matrix
        products on two: only calling ``torch.set_num_threads`` in the planning thread itself
        makes it single-threaded. The ROS controller builds the planner in a loader thread
        and plans in its executor thread, so this runs in both.
        """
        n = self.config.num_threads
        if n and getattr(self._threads, "set", None) != n:
            torch.set_num_threads(n)
            self._threads.set = n

    def set_model(self, model: Any) -> None:
        """Plan with a new (refitted) model from the next call on; the warm start is kept."""
        self.model = model
        self.planner.set_dynamics(planning_model(model))

    def reset(self) -> None:
        """Forget the warm start (call at the start of an episode)."""
        self.planner.reset()

    def act(self, state) -> np.ndarray:
        """Action(s) for one observer state (n,) or a batch (S, n), float64 numpy."""
        s = np.asarray(state, dtype=np.float64)
        single = s.ndim == 1
        self._limit_threads()
        t0 = time.perf_counter()
        a = self.planner.act(s.reshape(-1, self.task.state_dim)).double().numpy()
        self.plan_seconds.append(time.perf_counter() - t0)
        a = np.clip(a, self.task.action_low, self.task.action_high)
        return a[0] if single else a

    __call__ = act

    def predict(self, obs, deterministic: bool = True) -> np.ndarray:
        """Action(s) for one observation (o,) or a batch (B, o), like a policy's ``predict``."""
        o = np.asarray(obs, dtype=np.float64)
        single = o.ndim == 1
        states = np.asarray(self.task.observe(o.reshape(1, -1) if single else o), dtype=np.float64)
        a = self.act(states)
        return a[0] if single else a


def make_planner(task: TaskSpec, model: Any, **options: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The controller-node hook (``planner: sym_mbrl_ros.agents.mpc:make_planner``).

    ``options`` are :class:`MPCConfig` fields; ``cem`` / ``gradient`` may be dicts of their
    settings. Returns ``state (n,) -> action (m,)`` with the warm start kept between calls.

    The planner is warmed up here (one plan from the zero state, then the warm start is
    forgotten), so the first control step does not pay for the one-off set-up (torch's
    first calls, the model's constant tensors); the controller builds it in its loader
    thread, beside the control loop.
    """
    config = MPCConfig.from_dict(options)
    controller = MPCController(task, model, config)
    controller.act(np.zeros(task.state_dim))
    controller.reset()
    controller.plan_seconds.clear()
    return controller.act


# ---------------------------------------------------------------- the online learner


class SymMPC:
    """The sym-mpc learner: collect data, fit the symbolic model, plan, execute, refit.

    Args:
        task: the task.
        config: settings.
        seed: seeds the random actions, the planner and the first environment reset.
    """

    def __init__(self, task: TaskSpec, config: MPCConfig | None = None, seed: int = 0):
        self.task = task
        self.config = config or MPCConfig()
        if self.config.planner not in PLANNERS:
            raise UserError(
                f"unknown planner {self.config.planner!r}; choose one of {', '.join(PLANNERS)}"
            )
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.eval_rng = np.random.default_rng(seed + 7919)
        """Evaluation's random actions before the first fit: never the training stream, so
        the evaluation schedule cannot change a run."""
        self.states: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.next_states: list[np.ndarray] = []
        self.model: Any = None
        self.controller: MPCController | None = None
        self.num_timesteps = 0
        self.num_model_fits = 0
        self.num_updates = 0  # no gradient updates: kept for the train command's summary
        self.last_fit_step = 0
        self.model_metrics: dict[str, Any] = {}
        self.timings = {"model_fit_s": 0.0, "plan_s": 0.0, "env_s": 0.0}
        self._eval_controller: MPCController | None = None

    def fit_model(self) -> dict[str, Any]:
        """Refit the symbolic model on the data, warm-started from the current one."""
        from ..dynamics.symbolic import SymbolicDynamics

        cfg = self.config
        n = cfg.model_max_samples or len(self.states)
        s, a, s2 = (np.asarray(x[-n:]) for x in (self.states, self.actions, self.next_states))
        metrics: dict[str, Any] = {}
        new = self.num_timesteps - self.last_fit_step
        if self.model is not None and new > 1:
            metrics["r2_holdout"] = dict(
                self.model.score(s[-new:], a[-new:], s2[-new:])
            )
        t0 = time.perf_counter()
        model = SymbolicDynamics.for_task(
            self.task, seed=self.seed + self.num_model_fits, **cfg.model_kwargs
        )
        model.fit(s, a, s2, init=self.model)
        metrics["fit_s"] = time.perf_counter() - t0
        metrics["r2"] = dict(model.score(s, a, s2))
        metrics["samples"] = len(s)
        metrics["step"] = self.num_timesteps
        self.timings["model_fit_s"] += metrics["fit_s"]
        self.model = model
        if self.controller is None:
            self.controller = MPCController(self.task, model, cfg, seed=self.seed)
        else:
            self.controller.set_model(model)
        self.num_model_fits += 1
        self.last_fit_step = self.num_timesteps
        self.model_metrics = metrics
        return metrics

    @property
    def model_r2(self) -> float:
        """Mean R² of the model over the changing coordinates, held-out when available (as
        MBPO's ``model_r2``; NaN before the first fit)."""
        from .mbpo import dynamic_r2

        r2 = self.model_metrics.get("r2_holdout", self.model_metrics.get("r2"))
        return float("nan") if r2 is None else dynamic_r2(self.task, r2)

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
    ) -> SymMPC:
        """Run the MPC loop for ``total_steps`` real steps in ``env`` (default: a new one).

        ``callback(step, learner)`` runs after every real step (``step`` counts from 1).
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
            if self.controller is None or self.num_timesteps < cfg.init_random_steps:
                action = self.rng.uniform(self.task.action_low, self.task.action_high)
            else:
                action = self.controller.act(state)
                self.timings["plan_s"] += self.controller.plan_seconds[-1]
            t1 = time.perf_counter()
            obs, _, terminated, truncated, info = env.step(action)
            self.timings["env_s"] += time.perf_counter() - t1
            next_state = self._state(obs, info)
            self.states.append(state)
            self.actions.append(np.asarray(action, dtype=np.float64).reshape(-1))
            self.next_states.append(next_state)
            self.num_timesteps += 1
            if terminated or truncated:
                obs, info = env.reset()
                state = self._state(obs, info)
                if self.controller is not None:
                    self.controller.reset()
            else:
                state = next_state
            due = self.num_timesteps - self.last_fit_step >= cfg.refit_every
            if self.num_timesteps >= cfg.init_random_steps and (self.model is None or due):
                self.fit_model()
            if bar is not None:
                bar.update(1)
            if callback is not None:
                callback(self.num_timesteps, self)
        if bar is not None:
            bar.close()
        return self

    def evaluation_controller(self) -> MPCController:
        """A fresh controller on the current model (its own warm start), for evaluation."""
        if self.model is None:
            raise UserError("sym-mpc has no model yet; run more steps than init_random_steps")
        return MPCController(self.task, self.model, self.config, seed=self.seed + 12345)

    def predict(self, obs, deterministic: bool = True) -> np.ndarray:
        """Planned action(s) for one observation or a batch; random before the first fit.

        Used by evaluators: a batch of B observations is planned for together, and the warm
        start is kept per row while B stays the same.
        """
        o = np.asarray(obs, dtype=np.float64)
        if self.model is None:
            shape = (self.task.action_dim,) if o.ndim == 1 else (o.shape[0], self.task.action_dim)
            return self.eval_rng.uniform(self.task.action_low, self.task.action_high, size=shape)
        if self._eval_controller is None or self._eval_controller.model is not self.model:
            self._eval_controller = self.evaluation_controller()
        return self._eval_controller.predict(o)

    def reset_evaluation(self) -> None:
        """Forget the evaluation controller's warm start (between evaluations)."""
        if self._eval_controller is not None:
            self._eval_controller.reset()

    def save(self, directory: str | Path) -> None:
        """Write the world model (``model.json``), the data (``transitions.npz``) and
        ``mpc.json`` (config, model metrics) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.model is not None:
            self.model.save(d / "model.json")
        if self.states:
            np.savez_compressed(
                d / "transitions.npz",
                states=np.asarray(self.states),
                actions=np.asarray(self.actions),
                next_states=np.asarray(self.next_states),
                state_names=np.asarray(self.task.state_names),
                action_names=np.asarray(self.task.action_names),
                dt=np.asarray(self.task.dt),
            )
        meta = {"config": asdict(self.config), "model_metrics": self.model_metrics}
        (d / "mpc.json").write_text(json.dumps(meta, indent=2, default=_jsonable) + "\n")


def evaluate_controller(task: TaskSpec, controller, episodes: int = 5, seed: int = 10_000):
    """Returns of ``episodes`` episodes run side by side (seeds ``seed + i``), planned together.

    ``controller`` has ``predict(obs_batch)`` and optionally ``reset()``/``reset_evaluation()``.
    """
    from .evaluation import Evaluator

    evaluator = Evaluator(task, episodes, seed=seed)
    try:
        for name in ("reset", "reset_evaluation"):
            if hasattr(controller, name):
                getattr(controller, name)()
        return evaluator(controller)
    finally:
        evaluator.close()


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
