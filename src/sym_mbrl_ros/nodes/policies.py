"""What the controller can act with: exploration, a published policy, or a planner (no ROS here).

The policy message (``/sym_mbrl/policy``, std_msgs/String, transient-local) is JSON with
``"format": "sym-mbrl/policy-v1"`` and one of two kinds:

* ``{"kind": "formula", "observation_names": [...], "action_names": [...], "expressions":
  [one per action coordinate], "action_low": [...], "action_high": [...]}``: an ESPL
  ``policy.json`` (:class:`sym_mbrl_ros.agents.espl.SymbolicPolicy`; ``kind`` may be left
  out), plain math over the observation in the grammar of the world model, read by the
  whitelisted parser (optional ``input_indices`` and ``observation_size``: the variables are
  those entries of the observation, a task's policy inputs);
* ``{"kind": "weights", "path": "...", "sha256": "...", "actor": "mlp"}``: a SAC agent file
  (:meth:`sym_mbrl_ros.agents.sac.SAC.save`, read with ``weights_only=True``) acting on the
  observation; the hash is checked before the file is used.

Optional fields: ``version`` (int), ``task``, ``created`` (unix time), ``info`` (dict).
A malformed message raises :class:`PolicyError` and the controller keeps its current policy.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..envs.base import TaskSpec
from ..errors import UserError

FORMAT = "sym-mbrl/policy-v1"
MAX_MESSAGE_CHARS = 1_000_000

Policy = Callable[[np.ndarray], np.ndarray]
"""state (n,) -> action (m,), float64."""


class PolicyError(UserError):
    """A policy message or file that cannot be used (the sentence says why)."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Exploration:
    """Actions before any policy exists: ``uniform`` or ``gaussian`` noise, or ``zero``.

    ``hold_steps`` repeats each random action that many ticks (smoother, more informative
    data for a world model than white noise); ``scale`` is the gaussian std as a fraction of
    the half-range; ``amplitude`` bounds every exploratory action to that fraction of the
    half-range around the middle of the action box (1: the whole box).
    """

    KINDS = ("uniform", "gaussian", "zero")

    def __init__(self, task: TaskSpec, kind: str = "uniform", hold_steps: int = 1,
                 scale: float = 0.5, seed: int = 0, amplitude: float = 1.0):
        if kind not in self.KINDS:
            raise PolicyError(f"exploration must be one of {', '.join(self.KINDS)}, not {kind!r}")
        if not 0.0 <= amplitude <= 1.0:
            raise PolicyError(f"exploration_amplitude must be between 0 and 1 (a fraction of the "
                              f"action range), not {amplitude}")
        low, high = np.asarray(task.action_low, float), np.asarray(task.action_high, float)
        mid, half = (high + low) / 2, (high - low) / 2
        self.low, self.high = mid - amplitude * half, mid + amplitude * half
        self._mid, self._half = mid, half
        self.kind, self.hold, self.scale = kind, max(1, int(hold_steps)), float(scale)
        self.rng = np.random.default_rng(seed)
        self._n = 0
        self._last = np.clip(np.zeros_like(low), low, high)

    def __call__(self, state: np.ndarray) -> np.ndarray:
        if self.kind == "zero":
            return self._last
        if self._n % self.hold == 0:
            if self.kind == "uniform":
                self._last = self.rng.uniform(self.low, self.high)
            else:
                noise = self.scale * self._half * self.rng.standard_normal(self.low.shape)
                self._last = np.clip(self._mid + noise, self.low, self.high)
        self._n += 1
        return self._last


def parse_policy_message(text: str) -> dict[str, Any]:
    """The policy message as a dict, checked for format and kind."""
    if not isinstance(text, str) or len(text) > MAX_MESSAGE_CHARS:
        raise PolicyError("policy message is not a string of reasonable size")
    try:
        msg = json.loads(text)
    except ValueError as exc:
        raise PolicyError(f"policy message is not JSON ({exc})") from None
    if not isinstance(msg, dict) or msg.get("format") != FORMAT:
        raise PolicyError(f"policy message lacks \"format\": \"{FORMAT}\"")
    msg.setdefault("kind", "formula" if "expressions" in msg else None)
    if msg["kind"] not in ("formula", "weights"):
        raise PolicyError(f"policy kind must be 'formula' or 'weights', not {msg['kind']!r}")
    return msg


def load_policy(text: str, task: TaskSpec) -> tuple[Policy, dict[str, Any]]:
    """Build the policy a message describes; returns it with the parsed message."""
    msg = parse_policy_message(text)
    if msg.get("task") not in (None, task.name):
        raise PolicyError(f"policy is for task {msg['task']!r}, this controller runs "
                          f"{task.name!r}")
    policy = _formula(msg, task) if msg["kind"] == "formula" else _weights(msg, task)
    return policy, msg


def _observe(task: TaskSpec) -> Callable[[np.ndarray], np.ndarray]:
    return lambda s: np.asarray(task.observation(s[None]), dtype=np.float64)[0]


def _formula(msg: dict, task: TaskSpec) -> Policy:
    from ..agents.espl import FormulaPolicy

    try:
        formula = FormulaPolicy.from_dict(msg, "formula policy")
    except UserError as exc:
        raise PolicyError(str(exc)) from None
    obs_dim = int(np.asarray(task.observation(np.zeros((1, task.state_dim)))).shape[-1])
    if formula.input_size != obs_dim or len(formula.action_names) != task.action_dim:
        raise PolicyError(f"formula policy maps {formula.input_size} observations to "
                          f"{len(formula.action_names)} actions; {task.name} has {obs_dim} and "
                          f"{task.action_dim}")
    observe = _observe(task)
    return lambda state: formula.predict(observe(state))


def _weights(msg: dict, task: TaskSpec) -> Policy:
    path, digest = msg.get("path"), msg.get("sha256")
    if not isinstance(path, str) or not isinstance(digest, str):
        raise PolicyError("weights policy needs \"path\" and \"sha256\" strings")
    if not Path(path).is_file():
        raise PolicyError(f"policy file {path} does not exist (is the run folder shared?)")
    if file_sha256(path) != digest:
        raise PolicyError(f"policy file {path} does not match its sha256; it was changed or "
                          f"is still being written")
    from ..agents.sac import ACTORS, SAC

    if msg.get("actor", "mlp") not in ACTORS and msg.get("actor") == "espl":
        from ..agents.espl import register_espl

        register_espl()
    try:
        agent = SAC.load(path, num_threads=1)
    except (UserError, KeyError, RuntimeError, TypeError) as exc:
        raise PolicyError(f"cannot load policy file {path}: {exc}") from None
    if agent.action_dim != task.action_dim:
        raise PolicyError(f"policy file {path} has {agent.action_dim} actions, task "
                          f"{task.name} has {task.action_dim}")

    observe = _observe(task)
    fast = _numpy_actor(agent)
    if fast is not None:
        return lambda state: fast(observe(state))
    return lambda state: agent.predict(observe(state), deterministic=True)


def _numpy_actor(agent) -> Callable[[np.ndarray], np.ndarray] | None:
    """The deterministic action of the default MLP actor in plain numpy (no torch call per
    tick: ~20x less latency); None for other actor architectures."""
    from torch import nn

    from ..agents.sac import GaussianMLPActor, base_actor

    actor = base_actor(agent.actor)
    select = agent.config.observation_indices  # the task's policy inputs (None: all)
    if select is not None:
        select = list(select)
    if type(actor) is not GaussianMLPActor:
        return None
    layers = []
    for m in actor.trunk:
        if isinstance(m, nn.Linear):
            layers.append((m.weight.detach().double().numpy().T.copy(),
                           m.bias.detach().double().numpy().copy()))
        elif not isinstance(m, nn.ReLU):
            return None
    w_out = actor.mean.weight.detach().double().numpy().T.copy()
    b_out = actor.mean.bias.detach().double().numpy().copy()
    scale = agent.action_scale.double().numpy()
    bias = agent.action_bias.double().numpy()

    def act(obs: np.ndarray) -> np.ndarray:
        h = np.asarray(obs, dtype=np.float64)
        if select is not None:
            h = h[..., select]
        for w, b in layers:
            h = np.maximum(h @ w + b, 0.0)
        return np.tanh(h @ w_out + b_out) * scale + bias

    return act


def weights_message(task: TaskSpec, path: str | Path, version: int, actor: str = "mlp",
                    info: dict | None = None) -> str:
    """The JSON text of a weights policy message (what the policy trainer publishes)."""
    p = Path(path).resolve()
    return json.dumps({"format": FORMAT, "kind": "weights", "task": task.name,
                       "version": int(version), "created": time.time(), "path": str(p),
                       "sha256": file_sha256(p), "actor": actor, "info": info or {}})


def formula_message(task: TaskSpec, policy: dict, version: int) -> str:
    """The JSON text of a formula policy message from an ESPL ``policy.json`` dict."""
    return json.dumps({**policy, "kind": "formula", "task": task.name, "version": int(version),
                       "created": time.time()})


def load_planner(spec: str, task: TaskSpec, model_text: str,
                 options: dict[str, Any] | None = None) -> Policy:
    """A planner (MPC) acting with the latest world model, from ``"module:factory"``.

    ``factory(task, model, **options)`` receives the task and the
    :class:`~sym_mbrl_ros.dynamics.symbolic.SymbolicDynamics` of the newest
    ``/sym_mbrl/dynamics_model`` message and returns ``state -> action``. This is the hook
    sym-mpc plugs into. The controller calls this in its loader thread, beside the control
    loop, so a factory should do its one-off set-up here (sym-mpc's plans once to warm up)
    rather than on the first control step.
    """
    module, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr or "make_planner")
    except (ImportError, AttributeError) as exc:
        raise PolicyError(f"planner {spec!r} is not available ({exc}); set planner to '' or "
                          f"install the module that provides it") from None
    return factory(task, model_from_message(model_text), **(options or {}))


def model_from_message(text: str):
    """A SymbolicDynamics from a ``/sym_mbrl/dynamics_model`` message (the model's JSON)."""
    from ..dynamics.symbolic import SymbolicDynamics

    try:
        return SymbolicDynamics.from_json(text, "model message")
    except UserError as exc:
        raise PolicyError(str(exc)) from None
