"""Classic control systems with known laws, simulated in numpy (no MuJoCo).

Each system is a continuous-time law ``x' = f(x, u)``, written twice: as a hand-written numpy
right-hand side (``rhs``, what the simulator integrates) and as one sympy-parsable string per
state coordinate (``laws``, what the world-model suite compares fitted models with). The
tests check that the two agree. A step of ``dt`` is ``substeps`` steps of the stated
integrator (``rk4`` or ``euler``) with the action held; ``step(s, a)`` is that map.

Systems (``SUITE``; every one RK4 with substeps, so the data are samples of the true flow):

* ``cartpole``: Gym's CartPole equations (Barto, Sutton & Anderson 1983), continuous force,
  free pole; the law is rational in cos(theta).
* ``duffing``: damped, driven Duffing oscillator ``x'' = -0.3 x' - x - 0.5 x^3 + u``.
* ``unicycle``: kinematic unicycle ``(px, py, heading)`` driven by speed and turn rate.
* ``vanderpol``: Van der Pol oscillator (mu = 1) with a force input.
* ``lorenz``: the Lorenz system (10, 28, 8/3) with inputs on x and y.
* ``drag``: a spring and quadratic drag, ``v' = -2 x - 0.8 v |v| + u``.
* ``coulomb``: a spring, viscous and Coulomb friction, the sign smoothed as tanh(v / 0.05).
* ``damped_pendulum``: ``theta'' = -9.81 sin(theta) - 0.2 theta' + u`` (theta = 0 hanging).
* ``acrobot``: Spong's acrobot with Gym's parameters ("book" dynamics), torque on the elbow.
* ``arm``: a two-link planar arm in a horizontal plane (no gravity), torques at both joints,
  viscous joint damping.

The acrobot's and the arm's laws are ``M(q)^-1 (tau - h(q, q'))``, rational in cos(q2); their
strings are generated once with sympy from M and h (``two_link_law``), while the simulator
solves the 2x2 system numerically per sample.

``SYSTEMS`` keeps the three systems of ``bench/dynamics.py``'s default mode exactly as that
benchmark recorded them (cartpole: one Euler step of 0.02 s; duffing: one RK4 step of
0.05 s; unicycle: one Euler step of 0.1 s; angles wrapped to [-pi, pi), 100-step episodes),
so its results files stay reproducible. The suite's systems never wrap an angle: the
recorded angle is the continuous joint angle, as a multi-turn encoder gives it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache

import numpy as np


def wrap(x):
    """Angles to [-pi, pi)."""
    return (x + np.pi) % (2 * np.pi) - np.pi


Rhs = Callable[[np.ndarray, np.ndarray], np.ndarray]


def integrate(rhs: Rhs, s: np.ndarray, a: np.ndarray, dt: float, substeps: int, method: str):
    """``substeps`` steps of ``method`` (``rk4`` or ``euler``) over ``dt``, action held."""
    h = dt / substeps
    for _ in range(substeps):
        if method == "euler":
            s = s + h * rhs(s, a)
            continue
        k1 = rhs(s, a)
        k2 = rhs(s + 0.5 * h * k1, a)
        k3 = rhs(s + 0.5 * h * k2, a)
        k4 = rhs(s + h * k3, a)
        s = s + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return s


@dataclass(frozen=True)
class ClassicSystem:
    """A batched simulator of a known law, with the fields of a task that the benches use."""

    name: str
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    angle_coords: tuple[int, ...]
    """Periodic coordinates (used only by bench/dynamics.py, which declares them)."""
    static_coords: tuple[int, ...]
    dt: float
    action_low: np.ndarray
    action_high: np.ndarray
    init_low: np.ndarray
    init_high: np.ndarray
    episode_length: int
    rhs: Rhs
    laws: tuple[str, ...]
    """``x_i' = f_i(x, u)`` per state coordinate, sympy-parsable, in the state/action names."""
    description: str
    integrator: str = "rk4"
    substeps: int = 1
    wrap_angles: bool = False
    """Wrap the angle coordinates to [-pi, pi) after each step and at the start."""

    def step(self, s: np.ndarray, a: np.ndarray) -> np.ndarray:
        """The state ``dt`` later under the held action (batched)."""
        s2 = integrate(self.rhs, s, a, self.dt, self.substeps, self.integrator)
        if self.wrap_angles:
            s2 = s2.copy()
            for i in self.angle_coords:
                s2[:, i] = wrap(s2[:, i])
        return s2

    @property
    def integration(self) -> str:
        """The simulator's integrator in words."""
        h = self.dt / self.substeps
        return f"{self.integrator.upper()}, {self.substeps} x {h:g} s per step of {self.dt:g} s"

    def episodes(self, n_steps: int, seed: int) -> dict[str, np.ndarray]:
        """At least ``n_steps`` transitions of random-action episodes, run as a batch."""
        rng = np.random.default_rng(seed)
        n_eps = -(-n_steps // self.episode_length)
        s = rng.uniform(self.init_low, self.init_high, size=(n_eps, len(self.state_names)))
        if self.wrap_angles:
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


def _box(*pairs: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = zip(*pairs)
    return np.array(lo, dtype=float), np.array(hi, dtype=float)


# --- cart-pole ---------------------------------------------------------------------------------

GRAVITY, CART_MASS, POLE_MASS, HALF_LENGTH = 9.8, 1.0, 0.1, 0.5


def cartpole_rhs(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    _, x_dot, th, th_dot = s.T
    force = a[:, 0]
    total = CART_MASS + POLE_MASS
    sin, cos = np.sin(th), np.cos(th)
    temp = (force + POLE_MASS * HALF_LENGTH * th_dot**2 * sin) / total
    th_acc = (GRAVITY * sin - cos * temp) / (HALF_LENGTH * (4.0 / 3.0 - POLE_MASS * cos**2 / total))
    x_acc = temp - POLE_MASS * HALF_LENGTH * th_acc * cos / total
    return np.stack([x_dot, x_acc, th_dot, th_acc], axis=1)


def _cartpole_laws() -> tuple[str, ...]:
    total = CART_MASS + POLE_MASS
    ml = POLE_MASS * HALF_LENGTH
    temp = f"((force + {ml!r}*theta_dot**2*sin(theta))/{total!r})"
    th_acc = (
        f"(({GRAVITY!r}*sin(theta) - cos(theta)*{temp})"
        f"/({HALF_LENGTH!r}*(4/3 - {POLE_MASS / total!r}*cos(theta)**2)))"
    )
    x_acc = f"{temp} - {ml / total!r}*cos(theta)*{th_acc}"
    return ("x_dot", x_acc, "theta_dot", th_acc)


_CARTPOLE_BOX = _box((-1, 1), (-1, 1), (-np.pi, np.pi), (-2, 2))
CARTPOLE = ClassicSystem(
    name="cartpole",
    state_names=("x", "x_dot", "theta", "theta_dot"),
    action_names=("force",),
    angle_coords=(2,),
    static_coords=(),
    dt=0.02,
    action_low=np.array([-10.0]),
    action_high=np.array([10.0]),
    init_low=_CARTPOLE_BOX[0],
    init_high=_CARTPOLE_BOX[1],
    episode_length=50,
    rhs=cartpole_rhs,
    laws=_cartpole_laws(),
    description="Gym CartPole equations, continuous force |F| <= 10 N, free pole (theta 0 up)",
    substeps=4,
)


# --- Duffing oscillator ----------------------------------------------------------------------

DAMPING, STIFFNESS, CUBIC = 0.3, 1.0, 0.5


def duffing_rhs(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    x, v = s.T
    return np.stack([v, -DAMPING * v - STIFFNESS * x - CUBIC * x**3 + a[:, 0]], axis=1)


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
    episode_length=50,
    rhs=duffing_rhs,
    laws=("v", f"-{DAMPING!r}*v - {STIFFNESS!r}*x - {CUBIC!r}*x**3 + force"),
    description="damped driven Duffing oscillator x'' = -0.3x' - x - 0.5x^3 + u",
    substeps=5,
)


# --- unicycle ----------------------------------------------------------------------------------


def unicycle_rhs(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    heading = s[:, 2]
    v, omega = a.T
    return np.stack([v * np.cos(heading), v * np.sin(heading), omega], axis=1)


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
    episode_length=50,
    rhs=unicycle_rhs,
    laws=("v*cos(heading)", "v*sin(heading)", "omega"),
    description="kinematic unicycle, speed and turn-rate commands",
    substeps=5,
)


# --- Van der Pol -------------------------------------------------------------------------------

VDP_MU = 1.0


def vanderpol_rhs(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    x, v = s.T
    return np.stack([v, VDP_MU * (1 - x**2) * v - x + a[:, 0]], axis=1)


VANDERPOL = ClassicSystem(
    name="vanderpol",
    state_names=("x", "v"),
    action_names=("force",),
    angle_coords=(),
    static_coords=(),
    dt=0.05,
    action_low=np.array([-1.0]),
    action_high=np.array([1.0]),
    init_low=np.array([-2.5, -2.5]),
    init_high=np.array([2.5, 2.5]),
    episode_length=50,
    rhs=vanderpol_rhs,
    laws=("v", f"{VDP_MU!r}*(1 - x**2)*v - x + force"),
    description="Van der Pol oscillator x'' = (1 - x^2) x' - x + u",
    substeps=5,
)


# --- Lorenz ------------------------------------------------------------------------------------

SIGMA, RHO, BETA = 10.0, 28.0, 8.0 / 3.0


def lorenz_rhs(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    x, y, z = s.T
    u1, u2 = a.T
    return np.stack([SIGMA * (y - x) + u1, x * (RHO - z) - y + u2, x * y - BETA * z], axis=1)


LORENZ = ClassicSystem(
    name="lorenz",
    state_names=("x", "y", "z"),
    action_names=("u1", "u2"),
    angle_coords=(),
    static_coords=(),
    dt=0.01,
    action_low=np.array([-20.0, -20.0]),
    action_high=np.array([20.0, 20.0]),
    init_low=np.array([-15.0, -15.0, 5.0]),
    init_high=np.array([15.0, 15.0, 40.0]),
    episode_length=50,
    rhs=lorenz_rhs,
    laws=(
        f"{SIGMA!r}*(y - x) + u1",
        f"x*({RHO!r} - z) - y + u2",
        f"x*y - {BETA!r}*z",
    ),
    description="Lorenz system (10, 28, 8/3), inputs added to x' and y'",
    substeps=5,
)


# --- quadratic drag ----------------------------------------------------------------------------

DRAG_SPRING, DRAG = 2.0, 0.8


def drag_rhs(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    x, v = s.T
    return np.stack([v, -DRAG_SPRING * x - DRAG * v * np.abs(v) + a[:, 0]], axis=1)


DRAG_SYSTEM = ClassicSystem(
    name="drag",
    state_names=("x", "v"),
    action_names=("force",),
    angle_coords=(),
    static_coords=(),
    dt=0.05,
    action_low=np.array([-3.0]),
    action_high=np.array([3.0]),
    init_low=np.array([-2.0, -3.0]),
    init_high=np.array([2.0, 3.0]),
    episode_length=50,
    rhs=drag_rhs,
    laws=("v", f"-{DRAG_SPRING!r}*x - {DRAG!r}*v*abs(v) + force"),
    description="mass on a spring with quadratic drag v' = -2x - 0.8 v|v| + u",
    substeps=5,
)


# --- Coulomb friction --------------------------------------------------------------------------

CF_SPRING, CF_VISCOUS, CF_COULOMB, CF_EPS = 2.0, 0.3, 1.0, 0.05


def coulomb_rhs(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    x, v = s.T
    acc = -CF_SPRING * x - CF_VISCOUS * v - CF_COULOMB * np.tanh(v / CF_EPS) + a[:, 0]
    return np.stack([v, acc], axis=1)


COULOMB = ClassicSystem(
    name="coulomb",
    state_names=("x", "v"),
    action_names=("force",),
    angle_coords=(),
    static_coords=(),
    dt=0.02,
    action_low=np.array([-3.0]),
    action_high=np.array([3.0]),
    init_low=np.array([-2.0, -2.0]),
    init_high=np.array([2.0, 2.0]),
    episode_length=50,
    rhs=coulomb_rhs,
    laws=(
        "v",
        f"-{CF_SPRING!r}*x - {CF_VISCOUS!r}*v - {CF_COULOMB!r}*tanh(v/{CF_EPS!r}) + force",
    ),
    description="spring, viscous and Coulomb friction (sign(v) smoothed as tanh(v/0.05))",
    # the friction term changes over |v| ~ 0.05: substeps of 2 ms keep RK4 accurate there
    substeps=10,
)


# --- damped driven pendulum --------------------------------------------------------------------

PEND_G, PEND_DAMPING = 9.81, 0.2


def damped_pendulum_rhs(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    th, om = s.T
    return np.stack([om, -PEND_G * np.sin(th) - PEND_DAMPING * om + a[:, 0]], axis=1)


DAMPED_PENDULUM = ClassicSystem(
    name="damped_pendulum",
    state_names=("theta", "omega"),
    action_names=("torque",),
    angle_coords=(0,),
    static_coords=(),
    dt=0.02,
    action_low=np.array([-3.0]),
    action_high=np.array([3.0]),
    init_low=np.array([-np.pi, -3.0]),
    init_high=np.array([np.pi, 3.0]),
    episode_length=50,
    rhs=damped_pendulum_rhs,
    laws=("omega", f"-{PEND_G!r}*sin(theta) - {PEND_DAMPING!r}*omega + torque"),
    description="damped driven pendulum theta'' = -9.81 sin(theta) - 0.2 theta' + u (0 down)",
    substeps=4,
)


# --- two-link systems: acrobot and planar arm --------------------------------------------------


@dataclass(frozen=True)
class TwoLink:
    """Parameters of a two-link chain with revolute joints (link i: mass, length, centre of
    mass distance, inertia about the centre of mass), gravity along the links' plane."""

    m1: float
    m2: float
    l1: float
    lc1: float
    lc2: float
    i1: float
    i2: float
    gravity: float
    damping: float
    actuated: tuple[bool, bool]

    def mass_matrix(self, q2):
        """M(q) of the chain (numpy or sympy cos)."""
        import sympy

        cos = sympy.cos if isinstance(q2, sympy.Basic) else np.cos
        m2, l1, lc2 = self.m2, self.l1, self.lc2
        d1 = (
            self.m1 * self.lc1**2
            + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos(q2))
            + self.i1
            + self.i2
        )
        d2 = m2 * (lc2**2 + l1 * lc2 * cos(q2)) + self.i2
        d3 = m2 * lc2**2 + self.i2
        return d1, d2, d3

    def bias(self, q1, q2, dq1, dq2):
        """h(q, q'): Coriolis, centrifugal, gravity and damping forces (M q'' = tau - h)."""
        import sympy

        sym = isinstance(q1, sympy.Basic)
        sin = sympy.sin if sym else np.sin
        m2, l1, lc2, g = self.m2, self.l1, self.lc2, self.gravity
        c = m2 * l1 * lc2 * sin(q2)
        # theta measured from hanging down (acrobot convention): gravity torque ~ sin
        h1 = (
            -c * dq2**2
            - 2 * c * dq1 * dq2
            + (self.m1 * self.lc1 + m2 * l1) * g * sin(q1)
            + m2 * lc2 * g * sin(q1 + q2)
            + self.damping * dq1
        )
        h2 = c * dq1**2 + m2 * lc2 * g * sin(q1 + q2) + self.damping * dq2
        return h1, h2

    def rhs(self, s: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Batched ``(q1', q2', q1'', q2'')``: M q'' = tau - h solved per sample."""
        q1, q2, dq1, dq2 = s.T
        d1, d2, d3 = self.mass_matrix(q2)
        h1, h2 = self.bias(q1, q2, dq1, dq2)
        tau = self._torques(a)
        M = np.stack([np.stack([d1, d2], -1), np.stack([d2, d3 * np.ones_like(d1)], -1)], -2)
        rhs = np.stack([tau[0] - h1, tau[1] - h2], -1)[..., None]
        acc = np.linalg.solve(M, rhs)[..., 0]
        return np.stack([dq1, dq2, acc[:, 0], acc[:, 1]], axis=1)

    def _torques(self, a):
        cols = iter(a.T)
        return [next(cols) if act else np.zeros(len(a)) for act in self.actuated]


@cache
def two_link_law(link: TwoLink, names: tuple[str, ...], actions: tuple[str, ...]):
    """The law strings of a two-link chain: ``(q1', q2', M^-1 (tau - h))`` with sympy."""
    import sympy

    q1, q2, dq1, dq2 = (sympy.Symbol(n, real=True) for n in names)
    acts = iter(sympy.Symbol(n, real=True) for n in actions)
    tau = [next(acts) if act else sympy.Integer(0) for act in link.actuated]
    d1, d2, d3 = link.mass_matrix(q2)
    h1, h2 = link.bias(q1, q2, dq1, dq2)
    det = d1 * d3 - d2 * d2
    acc1 = (d3 * (tau[0] - h1) - d2 * (tau[1] - h2)) / det
    acc2 = (d1 * (tau[1] - h2) - d2 * (tau[0] - h1)) / det
    return (names[2], names[3], str(acc1), str(acc2))


# Gym Acrobot-v1 parameters; continuous elbow torque instead of {-1, 0, 1}
ACROBOT_LINK = TwoLink(1.0, 1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 9.8, 0.0, (False, True))
# uniform 1 kg, 1 m rods turning in a horizontal plane, 0.1 N m s/rad joint damping
ARM_LINK = TwoLink(1.0, 1.0, 1.0, 0.5, 0.5, 1.0 / 12, 1.0 / 12, 0.0, 0.1, (True, True))
_TWO_LINK_NAMES = ("q1", "q2", "dq1", "dq2")

ACROBOT = ClassicSystem(
    name="acrobot",
    state_names=_TWO_LINK_NAMES,
    action_names=("tau",),
    angle_coords=(0, 1),
    static_coords=(),
    dt=0.05,
    action_low=np.array([-2.0]),
    action_high=np.array([2.0]),
    init_low=np.array([-np.pi, -np.pi, -2.0, -3.0]),
    init_high=np.array([np.pi, np.pi, 2.0, 3.0]),
    episode_length=50,
    rhs=ACROBOT_LINK.rhs,
    laws=two_link_law(ACROBOT_LINK, _TWO_LINK_NAMES, ("tau",)),
    description="Spong acrobot, Gym parameters, |elbow torque| <= 2 N m (q1 = 0 hanging)",
    substeps=10,
)

ARM = ClassicSystem(
    name="arm",
    state_names=_TWO_LINK_NAMES,
    action_names=("tau1", "tau2"),
    angle_coords=(0, 1),
    static_coords=(),
    dt=0.05,
    action_low=np.array([-2.0, -2.0]),
    action_high=np.array([2.0, 2.0]),
    init_low=np.array([-np.pi, -np.pi, -2.0, -2.0]),
    init_high=np.array([np.pi, np.pi, 2.0, 2.0]),
    episode_length=50,
    rhs=ARM_LINK.rhs,
    laws=two_link_law(ARM_LINK, _TWO_LINK_NAMES, ("tau1", "tau2")),
    description="two-link planar arm, no gravity, joint damping 0.1, |torques| <= 2 N m",
    substeps=10,
)


SUITE: dict[str, ClassicSystem] = {
    s.name: s
    for s in (
        CARTPOLE,
        DUFFING,
        UNICYCLE,
        VANDERPOL,
        LORENZ,
        DRAG_SYSTEM,
        COULOMB,
        DAMPED_PENDULUM,
        ACROBOT,
        ARM,
    )
}

# bench/dynamics.py's default mode: the systems as its results were recorded
SYSTEMS: dict[str, ClassicSystem] = {
    "cartpole": replace(
        CARTPOLE, integrator="euler", substeps=1, wrap_angles=True, episode_length=100
    ),
    "duffing": replace(DUFFING, substeps=1, episode_length=100),
    "unicycle": replace(
        UNICYCLE, integrator="euler", substeps=1, wrap_angles=True, episode_length=100
    ),
}
