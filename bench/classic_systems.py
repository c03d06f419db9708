"""Classic control systems for the dynamics benchmark, simulated in numpy (no MuJoCo).

Each system is a batched step function ``step(s, a) -> s'`` plus the names and ranges that
``bench/dynamics.py`` needs to record random-action episodes from random initial states.

* ``cartpole``: Gym's CartPole equations (Barto, Sutton & Anderson 1983) with a continuous
  force and explicit Euler at 0.02 s; the pole may swing all the way round (theta is an angle,
  0 upright). The map is rational in cos(theta), so no finite library holds it exactly.
* ``duffing``: a damped, driven Duffing oscillator ``x'' = -0.3 x' - x - 0.5 x^3 + u``,
  integrated by RK4 at 0.05 s (the exact one-step map is a polynomial of high degree).
* ``unicycle``: kinematic unicycle ``(px, py, heading)`` driven by speed and turn rate, Euler
  at 0.1 s (the map is exactly ``v*cos(heading)``-type terms).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def wrap(x):
    return (x + np.pi) % (2 * np.pi) - np.pi


@dataclass(frozen=True)
class ClassicSystem:
    """A batched simulator with the fields of a task that the benchmark uses."""

    name: str
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    angle_coords: tuple[int, ...]
    static_coords: tuple[int, ...]
    dt: float
    action_low: np.ndarray
    action_high: np.ndarray
    init_low: np.ndarray
    init_high: np.ndarray
    episode_length: int
    step: Callable[[np.ndarray, np.ndarray], np.ndarray]
    description: str

    def episodes(self, n_steps: int, seed: int) -> dict[str, np.ndarray]:
        """At least ``n_steps`` transitions of random-action episodes, run as a batch."""
        rng = np.random.default_rng(seed)
        n_eps = -(-n_steps // self.episode_length)
        s = rng.uniform(self.init_low, self.init_high, size=(n_eps, len(self.state_names)))
        for i in self.angle_coords:
            s[:, i] = wrap(s[:, i])
        S, A, S2 = [], [], []
        for _ in range(self.episode_length):
            a = rng.uniform(self.action_low, self.action_high, size=(n_eps, len(self.action_names)))
            s2 = self.step(s, a)
            S.append(s)
            A.append(a)
            S2.append(s2)
            s = s2
        # episode-major order: rows of one episode are consecutive
        states = np.stack(S, axis=1).reshape(-1, len(self.state_names))[:n_steps]
        actions = np.stack(A, axis=1).reshape(-1, len(self.action_names))[:n_steps]
        next_states = np.stack(S2, axis=1).reshape(-1, len(self.state_names))[:n_steps]
        episode = np.repeat(np.arange(n_eps), self.episode_length)[:n_steps]
        return {
            "states": states,
            "actions": actions,
            "next_states": next_states,
            "episode": episode,
        }


# --- cart-pole ---------------------------------------------------------------------------------

GRAVITY, CART_MASS, POLE_MASS, HALF_LENGTH = 9.8, 1.0, 0.1, 0.5


def cartpole_step(s: np.ndarray, a: np.ndarray, dt: float = 0.02) -> np.ndarray:
    x, x_dot, th, th_dot = s.T
    force = a[:, 0]
    total = CART_MASS + POLE_MASS
    sin, cos = np.sin(th), np.cos(th)
    temp = (force + POLE_MASS * HALF_LENGTH * th_dot**2 * sin) / total
    th_acc = (GRAVITY * sin - cos * temp) / (HALF_LENGTH * (4.0 / 3.0 - POLE_MASS * cos**2 / total))
    x_acc = temp - POLE_MASS * HALF_LENGTH * th_acc * cos / total
    return np.stack(
        [x + dt * x_dot, x_dot + dt * x_acc, wrap(th + dt * th_dot), th_dot + dt * th_acc], axis=1
    )


CARTPOLE = ClassicSystem(
    name="cartpole",
    state_names=("x", "x_dot", "theta", "theta_dot"),
    action_names=("force",),
    angle_coords=(2,),
    static_coords=(),
    dt=0.02,
    action_low=np.array([-10.0]),
    action_high=np.array([10.0]),
    init_low=np.array([-1.0, -1.0, -np.pi, -2.0]),
    init_high=np.array([1.0, 1.0, np.pi, 2.0]),
    episode_length=100,
    step=cartpole_step,
    description="Gym CartPole equations, continuous force, explicit Euler 0.02 s, free pole",
)


# --- Duffing oscillator ----------------------------------------------------------------------

DAMPING, STIFFNESS, CUBIC = 0.3, 1.0, 0.5


def _duffing_rhs(x, v, u):
    return v, -DAMPING * v - STIFFNESS * x - CUBIC * x**3 + u


def duffing_step(s: np.ndarray, a: np.ndarray, dt: float = 0.05) -> np.ndarray:
    x, v = s.T
    u = a[:, 0]
    k1x, k1v = _duffing_rhs(x, v, u)
    k2x, k2v = _duffing_rhs(x + 0.5 * dt * k1x, v + 0.5 * dt * k1v, u)
    k3x, k3v = _duffing_rhs(x + 0.5 * dt * k2x, v + 0.5 * dt * k2v, u)
    k4x, k4v = _duffing_rhs(x + dt * k3x, v + dt * k3v, u)
    return np.stack(
        [
            x + dt / 6 * (k1x + 2 * k2x + 2 * k3x + k4x),
            v + dt / 6 * (k1v + 2 * k2v + 2 * k3v + k4v),
        ],
        axis=1,
    )


DUFFING = ClassicSystem(
    name="duffing",
    state_names=("x", "v"),
    action_names=("force",),
    angle_coords=(),
    static_coords=(),
    dt=0.05,
    action_low=np.array([-2.0]),
    action_high=np.array([2.0]),
    init_low=np.array([-2.0, -2.0]),
    init_high=np.array([2.0, 2.0]),
    episode_length=100,
    step=duffing_step,
    description="damped driven Duffing oscillator x'' = -0.3x' - x - 0.5x^3 + u, RK4 0.05 s",
)


# --- unicycle ----------------------------------------------------------------------------------


def unicycle_step(s: np.ndarray, a: np.ndarray, dt: float = 0.1) -> np.ndarray:
    px, py, heading = s.T
    v, omega = a.T
    return np.stack(
        [px + dt * v * np.cos(heading), py + dt * v * np.sin(heading), wrap(heading + dt * omega)],
        axis=1,
    )


UNICYCLE = ClassicSystem(
    name="unicycle",
    state_names=("px", "py", "heading"),
    action_names=("v", "omega"),
    angle_coords=(2,),
    static_coords=(),
    dt=0.1,
    action_low=np.array([-1.0, -2.0]),
    action_high=np.array([1.0, 2.0]),
    init_low=np.array([-2.0, -2.0, -np.pi]),
    init_high=np.array([2.0, 2.0, np.pi]),
    episode_length=100,
    step=unicycle_step,
    description="kinematic unicycle, speed and turn-rate commands, Euler 0.1 s",
)

SYSTEMS = {s.name: s for s in (CARTPOLE, DUFFING, UNICYCLE)}
