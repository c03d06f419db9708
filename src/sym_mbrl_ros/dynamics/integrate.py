"""Integrators of a continuous-time model ``x' = f(x, u)`` over a step ``dt``, batched.

One implementation serves numpy arrays and torch tensors: a step is written with ``+`` and
``*`` only, so the same code runs on either (and torch's autograd sees through it). The action
is held constant over the step (zero-order hold, as a controller applies it). ``dt`` is one
number or one per row (``(B,)``): recorded stamps of a real robot jitter.

Example::

    integrator = Integrator("rk4", substeps=2)
    next_states = integrator.step(derivative, states, actions, 0.05)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError

METHODS = ("rk4", "euler")

Derivative = Callable[[Any, Any], Any]
"""(states (B, n), actions (B, m)) -> time derivatives (B, n), numpy or torch."""


def as_step_column(dt: Any, like: Any) -> Any:
    """``dt`` shaped to broadcast against a (B, n) batch: a number, or a (B, 1) column."""
    if isinstance(dt, (int, float, np.floating, np.integer)):
        return float(dt)
    if isinstance(like, np.ndarray):
        arr = np.asarray(dt, dtype=like.dtype)
        return float(arr) if arr.ndim == 0 else arr.reshape(-1, 1)
    import torch

    t = torch.as_tensor(dt, dtype=like.dtype, device=like.device)
    return t if t.ndim == 0 else t.reshape(-1, 1)


def rk4(f: Derivative, x: Any, u: Any, dt: Any, substeps: int = 1) -> Any:
    """Classical fourth-order Runge-Kutta over ``dt`` in ``substeps`` equal steps."""
    h = as_step_column(dt, x) / substeps
    for _ in range(substeps):
        k1 = f(x, u)
        k2 = f(x + (0.5 * h) * k1, u)
        k3 = f(x + (0.5 * h) * k2, u)
        k4 = f(x + h * k3, u)
        x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return x


def euler(f: Derivative, x: Any, u: Any, dt: Any, substeps: int = 1) -> Any:
    """Explicit Euler over ``dt`` in ``substeps`` equal steps (cheap, first order)."""
    h = as_step_column(dt, x) / substeps
    for _ in range(substeps):
        x = x + h * f(x, u)
    return x


@dataclass(frozen=True)
class Integrator:
    """How a continuous-time model is stepped: a method and a number of equal substeps."""

    method: str = "rk4"
    substeps: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(
                f"unknown integrator {self.method!r}; choose one of {', '.join(METHODS)}"
            )
        if isinstance(self.substeps, bool) or not isinstance(self.substeps, (int, np.integer)):
            raise UserError(f"integrator substeps must be a whole number, got {self.substeps!r}")
        if not 1 <= int(self.substeps) <= 1000:
            raise UserError(f"integrator substeps must be in [1, 1000], got {self.substeps}")

    def step(self, f: Derivative, x: Any, u: Any, dt: Any) -> Any:
        """The state after ``dt`` (numpy or torch, same type as ``x``)."""
        fn = rk4 if self.method == "rk4" else euler
        return fn(f, x, u, dt, int(self.substeps))

    @property
    def evaluations(self) -> int:
        """Derivative evaluations per step (the cost of one prediction)."""
        return int(self.substeps) * (4 if self.method == "rk4" else 1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in a ``sym-mbrl/dynamics-v2`` file."""
        return {"method": self.method, "substeps": int(self.substeps)}

    @classmethod
    def from_dict(cls, doc: Any, source: str = "model") -> Integrator:
        """Read the JSON form back; anything else is a :class:`UserError`."""
        if not isinstance(doc, dict):
            raise UserError(f"{source}: integrator must be a JSON object like "
                            f"{{\"method\": \"rk4\", \"substeps\": 1}}")
        return cls(str(doc.get("method", "rk4")), doc.get("substeps", 1))
