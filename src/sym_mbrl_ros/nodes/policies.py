"""What the controller can act with: exploration, a published policy, or a planner (no ROS here).

The policy message (``/sym_mbrl/policy``, std_msgs/String, transient-local) is JSON with
``"format": "sym-mbrl/policy-v1"`` and one of two kinds:

* ``{"kind": "formula", "observation_names": [...], "action_names": [...], "expressions":
  [one per action coordinate], "action_low": [...], "action_high": [...]}``: an ESPL
  ``policy.json`` (:class:`sym_mbrl_ros.agents.espl.SymbolicPolicy`; ``kind`` may be left
  out), plain math over the observation in the grammar of the world model, read by the
  whitelisted parser (optional ``input_indices`` and ``observation_size``: the variables are
  those entries of the observation, a task's policy inputs);
* ``{"kind": "weights", "actor": "mlp", "payload": {"encoding", "size", "sha256", "data"}}``:
  the SAC actor itself, carried in the message (:mod:`.policy_payload`: the MLP actor as a
  numpy archive that acts without torch; other actors as a torch state dict), acting on the
  observation. The bytes are checked against their size and sha256 before they are read. The
  message never names a file: the controller may run on another machine, and a policy
  recorded in a bag can be replayed anywhere (``sym-mbrl eval --policy-message``).

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
MAX_MESSAGE_CHARS = 4_000_000

Policy = Callable[[np.ndarray], np.ndarray]
"""state (n,) -> action (m,), float64."""


class PolicyError(UserError):
    """A policy message that cannot be used (the sentence says why, ``reason`` in a word)."""

    def __init__(self, text: str, reason: str = "invalid"):
        super().__init__(text)
        self.reason = reason


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file."""
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
        raise PolicyError(f"policy message is not a string of at most {MAX_MESSAGE_CHARS} "
                          f"characters", "format")
    try:
        msg = json.loads(text)
    except ValueError as exc:
        raise PolicyError(f"policy message is not JSON ({exc})", "truncated") from None
    if not isinstance(msg, dict) or msg.get("format") != FORMAT:
        raise PolicyError(f"policy message lacks \"format\": \"{FORMAT}\"", "format")
    msg.setdefault("kind", "formula" if "expressions" in msg else None)
    if msg["kind"] not in ("formula", "weights"):
        raise PolicyError(f"policy kind must be 'formula' or 'weights', not {msg['kind']!r}",
                          "format")
    return msg


def load_policy(text: str, task: TaskSpec) -> tuple[Policy, dict[str, Any]]:
    """Build the policy a message describes; returns it with the parsed message."""
    msg = parse_policy_message(text)
    if msg.get("task") not in (None, task.name):
        raise PolicyError(f"policy is for task {msg['task']!r}, this controller runs "
                          f"{task.name!r}", "task")
    actor = _formula(msg, task) if msg["kind"] == "formula" else _weights(msg, task)
    observe = _observe(task)
    return (lambda state: actor.predict(observe(state))), msg


def actor_from_message(text: str, task: TaskSpec):
    """The policy a message carries as an object with ``predict(observation)`` (what
    ``sym-mbrl eval`` replays), with the parsed message."""
    msg = parse_policy_message(text)
    if msg.get("task") not in (None, task.name):
        raise PolicyError(f"policy is for task {msg['task']!r}, not {task.name!r}", "task")
    return (_formula(msg, task) if msg["kind"] == "formula" else _weights(msg, task)), msg


def _observe(task: TaskSpec) -> Callable[[np.ndarray], np.ndarray]:
    return lambda s: np.asarray(task.observation(s[None]), dtype=np.float64)[0]


def _obs_dim(task: TaskSpec) -> int:
    return int(np.asarray(task.observation(np.zeros((1, task.state_dim)))).shape[-1])


def _formula(msg: dict, task: TaskSpec):
    from ..agents.espl import FormulaPolicy

    try:
        formula = FormulaPolicy.from_dict(msg, "formula policy")
    except UserError as exc:
        raise PolicyError(str(exc), "format") from None
    obs_dim = _obs_dim(task)
    if formula.input_size != obs_dim or len(formula.action_names) != task.action_dim:
        raise PolicyError(f"formula policy maps {formula.input_size} observations to "
                          f"{len(formula.action_names)} actions; {task.name} has {obs_dim} and "
                          f"{task.action_dim}", "shape")
    return formula


def _weights(msg: dict, task: TaskSpec):
    """The actor of a weights message, checked against the task (no file is opened)."""
    from .policy_payload import PayloadError, decode

    if "payload" not in msg and "path" in msg:
        raise PolicyError("weights policy names a file (\"path\") instead of carrying its "
                          "weights; it comes from an older policy_trainer: upgrade it", "format")
    try:
        actor = decode(msg.get("payload"))
    except PayloadError as exc:
        raise PolicyError(str(exc), exc.reason) from None
    obs_dim = _obs_dim(task)
    if actor.obs_dim != obs_dim or actor.action_dim != task.action_dim:
        raise PolicyError(f"weights policy maps {actor.obs_dim} observations to "
                          f"{actor.action_dim} actions; {task.name} has {obs_dim} and "
                          f"{task.action_dim}", "shape")
    return actor


def weights_message(task: TaskSpec, agent, version: int, actor: str = "mlp",
                    info: dict | None = None) -> str:
    """The JSON text of a weights policy message (what the policy trainer publishes).

    ``agent``: a :class:`~sym_mbrl_ros.agents.sac.SAC` agent, or the path of one saved with
    ``SAC.save``. Only its actor travels (:func:`.policy_payload.encode_agent`).
    """
    from .policy_payload import encode_agent

    if isinstance(agent, (str, Path)):
        from ..agents.sac import SAC

        if actor == "espl":
            from ..agents.espl import register_espl

            register_espl()
        agent = SAC.load(agent, num_threads=1)
    return json.dumps({"format": FORMAT, "kind": "weights", "task": task.name,
                       "version": int(version), "created": time.time(), "actor": actor,
                       "payload": encode_agent(agent), "info": info or {}})


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
