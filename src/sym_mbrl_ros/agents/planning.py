"""Planning with a world model: scoring action sequences, and the gradient-based planner.

A *planner* picks actions by imagining their consequences with a dynamics model (anything
with ``predict_torch(states, actions)``, e.g. :class:`~sym_mbrl_ros.dynamics.symbolic.
SymbolicDynamics`, or a plain function) and the task's true reward in torch. Two planners
share the interface ``plan(states) -> (S, H, m)`` / ``act(states) -> (S, m)`` / ``reset()``:

* :class:`~sym_mbrl_ros.agents.cem.CEMPlanner` (``agents/cem.py``): the cross-entropy method;
* :class:`GradientPlanner` (here): Adam on tanh-squashed action sequences, back-propagating
  through the torch evaluation of the model, several restarts batched.

Both plan for S start states at once and for every candidate sequence in one batched model call
per time step (no per-candidate Python loop), execute the first action and keep the rest of the
plan, shifted by one step, as the warm start of the next call (receding horizon).

A planner calls the model H times per refit, so its cost is the number of torch calls per model
step: :func:`planning_model` compiles a symbolic model into :class:`FusedSymbolicModel` (shared
subexpressions computed once, all coordinates as one matrix product of their terms), about 3x
faster than ``SymbolicDynamics.predict_torch`` for the same numbers.

:class:`PendulumDynamics` is the exact Pendulum equation in torch, the reference model that the
benchmarks and tests plan with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..envs.base import TaskSpec
from ..errors import UserError

Dynamics = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(states (B, n), actions (B, m)) -> next states (B, n), torch."""


def as_dynamics(model: Any) -> Dynamics:
    """A model with ``predict_torch`` (or a plain function) as a dynamics function."""
    if hasattr(model, "predict_torch"):
        return model.predict_torch
    if callable(model):
        return model
    raise UserError(
        f"a planner needs a dynamics model with predict_torch(states, actions); got {type(model)}"
    )


class SequenceScorer:
    """Sums the task's reward along action sequences rolled through a dynamics model.

    Args:
        dynamics: the model (see :func:`as_dynamics`).
        task: gives the reward and termination (torch), static and angle coordinates.
        gamma: discount per step (1: plain sum).
    """

    def __init__(self, dynamics: Any, task: TaskSpec, gamma: float = 1.0):
        self.dynamics = as_dynamics(dynamics)
        self.task = task
        self.gamma = float(gamma)
        self._static = list(task.static_coords)
        self._terminates = bool(getattr(task, "terminates", True))

    def __call__(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Returns (S, P) of action sequences (S, P, H, m) from start states (S, n).

        Sequences whose rollout turns non-finite score ``-inf`` (or a large negative number
        when gradients are needed). After a terminal step the rewards stop counting.
        """
        S, P, H, m = actions.shape
        s = states.unsqueeze(1).expand(S, P, states.shape[-1]).reshape(S * P, -1)
        a_all = actions.reshape(S * P, H, m)
        total = s.new_zeros(S * P)
        alive = None
        discount = 1.0
        for t in range(H):
            a = a_all[:, t]
            nxt = self.dynamics(s, a)
            if self._static:
                nxt = nxt.clone()
                nxt[:, self._static] = s[:, self._static]
            r = self.task.reward(s, a, nxt)
            if self._terminates:
                if alive is not None:
                    r = r * alive
                done = self.task.terminated(s, a, nxt).to(r.dtype)
                alive = (1.0 - done) if alive is None else alive * (1.0 - done)
            total = total + (r if discount == 1.0 else discount * r)
            discount *= self.gamma
            s = nxt
        total = total.reshape(S, P)
        if total.requires_grad:
            return torch.nan_to_num(total, nan=-1e9, posinf=-1e9, neginf=-1e9)
        return torch.where(torch.isfinite(total), total, torch.full_like(total, -math.inf))


class ActionBox:
    """The action bounds as tensors, with the squashing map used by the gradient planner."""

    def __init__(self, low, high, dtype: torch.dtype = torch.float32):
        self.low = torch.as_tensor(np.asarray(low, dtype=np.float64), dtype=dtype).reshape(-1)
        self.high = torch.as_tensor(np.asarray(high, dtype=np.float64), dtype=dtype).reshape(-1)
        self.mid = (self.high + self.low) / 2
        self.half = (self.high - self.low) / 2

    def clip(self, a: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(a, self.high), self.low)

    def squash(self, u: torch.Tensor) -> torch.Tensor:
        """Unbounded -> inside the box."""
        return self.mid + self.half * torch.tanh(u)

    def unsquash(self, a: torch.Tensor) -> torch.Tensor:
        """Inside the box -> unbounded (inverse of :meth:`squash`, clipped away from the edges)."""
        return torch.atanh(((a - self.mid) / self.half).clamp(-0.999, 0.999))


def shift_plan(plan: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Drop the first step of each plan (S, H, m) and append ``fill`` (m,) as the last step."""
    return torch.cat([plan[:, 1:], fill.expand(plan.shape[0], 1, plan.shape[-1])], dim=1)


# ---------------------------------------------------------------- a fast symbolic model


_TORCH_CALLS = {
    "sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "exp": torch.exp, "log": torch.log,
    "sqrt": torch.sqrt, "abs": torch.abs, "tanh": torch.tanh,
}
_MATH_CALLS = {
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "exp": math.exp, "log": math.log,
    "sqrt": math.sqrt, "abs": abs, "tanh": math.tanh,
}


def _fold(fn: Callable, *args: float) -> float:
    try:
        return float(fn(*args))
    except (ValueError, OverflowError, ZeroDivisionError):
        return math.nan


class FusedSymbolicModel:
    """A symbolic world model compiled for planning: one program for all coordinates.

    ``SymbolicDynamics.predict_torch`` evaluates each coordinate's expression on its own and
    one tree node at a time. Planning calls the model once per time step for the whole
    population, and on a CPU each torch call costs microseconds whatever the batch size, so the
    number of calls is what matters. Here the trees of all coordinates become one program:

    * sums are flattened into ``c0 + sum_k c_k * term_k`` and evaluated as a chain of
      ``torch.add(acc, term, alpha=c_k)`` (a scaled add is one call);
    * products are flattened into a constant times a canonically ordered list of factors;
    * every distinct subexpression (``sin(theta)``, ``theta_dot**2``, a product of factors)
      is computed once, across coordinates; constant subexpressions are folded;
    * constants are 0-dim tensors (a Python float operand costs a tensor construction per call).

    A continuous-time model (the default fit) is compiled the same way from its derivative
    trees, and stepped over its ``dt`` with its own integrator (RK4 and its substeps), each
    stage one run of the program: the uncompiled model would evaluate every coordinate's
    expression tree at every stage.

    The result equals ``predict_torch`` to rounding.

    Args:
        model: a fitted model with ``trees()`` (or, continuous, ``derivative_trees()``,
            ``integrator`` and ``dt``), ``variables``, ``state_names``, ``angle_coords`` and
            ``static_coords`` (a :class:`~sym_mbrl_ros.dynamics.symbolic.SymbolicDynamics`).
    """

    def __init__(self, model: Any):
        from ..dynamics.expression import BinOp, Call, Name, Neg, Num, sum_terms

        self.model = model
        self.state_dim = len(model.state_names)
        self.angle_coords = list(model.angle_coords)
        self.static_coords = list(model.static_coords)
        self.continuous = bool(getattr(model, "is_continuous", False))
        if self.continuous:
            if getattr(model, "integrator", None) is None or not getattr(model, "dt", None):
                raise UserError("a continuous-time model needs its integrator and dt to be "
                                "compiled for planning")
            self.integrator = model.integrator
            self.dt = float(model.dt)
            sources = model.derivative_trees()
        else:
            sources = model.trees()
        index = {name: k for k, name in enumerate(model.variables)}
        steps: list[tuple[Callable, tuple, dict]] = []
        memo: dict[tuple, tuple] = {}
        # operands: ("i", k) input column k, ("c", value) a constant, ("v", k) step k's result

        def emit(key: tuple, fn: Callable, args: tuple, kw: dict | None = None) -> tuple:
            if key not in memo:
                steps.append((fn, args, kw or {}))
                memo[key] = ("v", len(steps) - 1)
            return memo[key]

        def product(n) -> tuple[float, list]:
            if isinstance(n, Num):
                return float(n.value), []
            if isinstance(n, Neg):
                c, f = product(n.arg)
                return -c, f
            if isinstance(n, BinOp) and n.op == "*":
                c1, f1 = product(n.left)
                c2, f2 = product(n.right)
                return c1 * c2, f1 + f2
            if isinstance(n, BinOp) and n.op == "/" and isinstance(n.right, Num):
                c, f = product(n.left)
                return _fold(lambda x, y: x / y, c, n.right.value), f
            return 1.0, [n]

        def term(n) -> tuple[float, tuple | None]:
            coef, factors = product(n)
            ops = []
            for f in factors:
                o = atom(f)
                if o[0] == "c":
                    coef *= o[1]
                else:
                    ops.append(o)
            if not ops:
                return coef, None
            ops.sort(key=repr)
            acc = ops[0]
            for o in ops[1:]:
                acc = emit(("*", acc, o), torch.mul, (acc, o))
            return coef, acc

        def linear_items(n) -> tuple[list[tuple[tuple, float]], float]:
            terms: dict[tuple, float] = {}
            c0 = 0.0
            for sign, t in sum_terms(n):
                coef, op = term(t)
                if op is None:
                    c0 += sign * coef
                else:
                    terms[op] = terms.get(op, 0.0) + sign * coef
            items = sorted(((op, c) for op, c in terms.items() if c != 0.0), key=repr)
            return items, c0

        def linear(n) -> tuple:
            items, c0 = linear_items(n)
            if not items:
                return ("c", c0)
            key = ("sum", tuple(items), c0)
            if key in memo:
                return memo[key]
            (op, c), rest = items[0], items[1:]
            acc = op if c == 1.0 else emit(("scale", op, c), torch.mul, (op, ("c", c)))
            for op, c in rest:
                acc = emit(("add", acc, op, c), torch.add, (acc, op), {"alpha": c})
            if c0 != 0.0:
                acc = emit(("add", acc, ("c", c0)), torch.add, (acc, ("c", c0)))
            memo[key] = acc
            return acc

        def atom(n) -> tuple:
            if isinstance(n, Num):
                return ("c", float(n.value))
            if isinstance(n, Name):
                return ("i", index[n.name])
            if isinstance(n, Call):
                a = linear(n.arg)
                if a[0] == "c":
                    return ("c", _fold(_MATH_CALLS[n.func], a[1]))
                return emit((n.func, a), _TORCH_CALLS[n.func], (a,))
            if isinstance(n, BinOp) and n.op == "/":
                a, b = linear(n.left), linear(n.right)
                if a[0] == "c" and b[0] == "c":
                    return ("c", _fold(lambda x, y: x / y, a[1], b[1]))
                return emit(("/", a, b), torch.div, (a, b))
            if isinstance(n, BinOp) and n.op == "**":
                a, b = linear(n.left), linear(n.right)
                if a[0] == "c" and b[0] == "c":
                    return ("c", _fold(lambda x, y: x**y, a[1], b[1]))
                if b == ("c", 2.0):
                    return emit(("sq", a), torch.square, (a,))
                if b[0] == "c":
                    return emit(("pow", a, b), torch.pow, (a,), {"exponent": b[1]})
                return emit(("pow", a, b), torch.pow, (a, b))
            return linear(n)  # a sum, a product or a negation inside a factor

        # Each coordinate is an affine map of its top-level terms; all of them are computed
        # as one matrix product of the stacked terms (one call instead of a chain of adds).
        outputs = [linear_items(tree) for tree in sources]
        term_list = sorted({op for items, _ in outputs for op, _ in items}, key=repr)
        position = {op: k for k, op in enumerate(term_list)}
        weight = np.zeros((len(outputs), max(1, len(term_list))))
        bias = np.zeros((len(outputs), 1))
        for i, (items, c0) in enumerate(outputs):
            for op, c in items:
                weight[i, position[op]] = c
            bias[i, 0] = c0
        # flat layout of the values list: inputs, then constants, then the steps' results
        n_in = len(model.variables)
        consts: dict[float, int] = {}

        def slot(o: tuple) -> int:
            if o[0] == "i":
                return o[1]
            if o[0] == "c":
                return -1 - consts.setdefault(o[1], len(consts))
            return o[1] + 10**9  # fixed below, once the number of constants is known

        raw = [(fn, tuple(slot(a) for a in args), kw) for fn, args, kw in steps]
        term_slots = [slot(o) for o in term_list]
        n_c = len(consts)

        def final(k: int) -> int:
            if k >= 10**9:
                return n_in + n_c + (k - 10**9)
            if k < 0:
                return n_in + (-1 - k)
            return k

        self._program = [(fn, tuple(final(k) for k in idx), kw) for fn, idx, kw in raw]
        self._terms = [final(k) for k in term_slots]
        self._consts = list(consts)
        self._weight, self._bias = weight, bias
        self._cache: dict[tuple, tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]] = {}
        self.n_calls = len(self._program) + 2
        """Torch calls per prediction besides the input and angle handling (program, stack,
        matrix product)."""

    def predict_torch(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Next states (B, n) for states (B, n) and actions (B, m)."""
        if actions.dtype != states.dtype:
            actions = actions.to(states.dtype)
        key = (states.dtype, states.device)
        if key not in self._cache:
            like = dict(dtype=states.dtype, device=states.device)
            self._cache[key] = (
                [torch.tensor(v, **like) for v in self._consts],
                torch.as_tensor(self._weight, **like),
                torch.as_tensor(self._bias, **like),
            )
        tensors = self._cache[key]
        columns = torch.cat([states, actions], dim=1).T.contiguous()  # (n + m, B)
        if not self.continuous:
            out = self._run(list(columns.unbind(0)), tensors)
        else:  # integrated in the (n, B) layout: every stage reads contiguous rows
            # (dynamics.integrate's rk4/euler, written out with scaled adds: calling them here
            # made a prediction ~20 % slower, and planning is over its time budget; the tests
            # hold both to the same result)
            n = self.state_dim
            u = list(columns[n:].unbind(0))

            def f(x: torch.Tensor) -> torch.Tensor:
                return self._run([*x.unbind(0), *u], tensors)

            x = columns[:n]
            substeps = int(self.integrator.substeps)
            h = self.dt / substeps
            for _ in range(substeps):
                if self.integrator.method == "rk4":
                    k1 = f(x)
                    k2 = f(torch.add(x, k1, alpha=0.5 * h))
                    k3 = f(torch.add(x, k2, alpha=0.5 * h))
                    k4 = f(torch.add(x, k3, alpha=h))
                    total = torch.add(torch.add(k1, k4), torch.add(k2, k3), alpha=2.0)
                    x = torch.add(x, total, alpha=h / 6.0)
                else:
                    x = torch.add(x, f(x), alpha=h)
            out = x
        for i in self.angle_coords:
            out[i] = torch.remainder(out[i] + math.pi, 2 * math.pi) - math.pi
        out = out.T
        if self.static_coords:
            out = out.clone()
            out[:, self.static_coords] = states[:, self.static_coords]
        return out

    def _run(self, rows: list[torch.Tensor], tensors: tuple) -> torch.Tensor:
        """The compiled expressions (n, B) of the input rows (next values, or derivatives)."""
        consts, weight, bias = tensors
        b = rows[0].shape[0]
        values: list[Any] = [*rows, *consts]
        for fn, idx, kw in self._program:
            values.append(fn(*[values[k] for k in idx], **kw))
        if self._terms:
            terms = torch.stack([values[k] for k in self._terms])  # terms are never constant
            out = torch.addmm(bias, weight, terms)  # (n, B)
        else:
            out = bias.expand(-1, b).clone()
        return out


def planning_model(model: Any) -> Any:
    """The fastest equivalent of ``model`` for planning (:class:`FusedSymbolicModel` when it
    has expression trees; the model itself otherwise)."""
    if hasattr(model, "trees") and hasattr(model, "variables"):
        try:
            return FusedSymbolicModel(model)
        except (UserError, KeyError, AttributeError):
            return model
    return model


# ---------------------------------------------------------------- gradient-based planner


@dataclass
class GradientPlannerConfig:
    """Settings of the gradient-based planner."""

    horizon: int = 30
    """Planned steps."""
    restarts: int = 8
    """Action sequences optimised side by side per state; one starts from the warm start."""
    iterations: int = 10
    """Adam steps per planning call (the shifted warm start carries the optimisation on)."""
    learning_rate: float = 0.1
    """Adam step size on the unsquashed actions."""
    init_std: float = 1.0
    """Std of the random restarts in the unsquashed space (1: spread over the whole box)."""
    gamma: float = 1.0
    """Discount of the planning objective."""
    seed: int = 0
    """Seed of the planner's random generator."""


class GradientPlanner:
    """Plans by gradient ascent of the model return over tanh-squashed action sequences.

    Args:
        dynamics: the model (``predict_torch`` must be differentiable: SymbolicDynamics is).
        task: reward, termination and action box.
        config: settings.
        dtype: torch dtype of the plans and rollouts.
    """

    def __init__(
        self,
        dynamics: Any,
        task: TaskSpec,
        config: GradientPlannerConfig | None = None,
        dtype: torch.dtype = torch.float64,
    ):
        self.config = cfg = config or GradientPlannerConfig()
        if cfg.horizon < 1 or cfg.restarts < 1 or cfg.iterations < 0:
            raise UserError(
                "the gradient planner needs horizon >= 1, restarts >= 1 and iterations >= 0"
            )
        self.task, self.dtype = task, dtype
        self.scorer = SequenceScorer(dynamics, task, cfg.gamma)
        self.box = ActionBox(task.action_low, task.action_high, dtype)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.plan_: torch.Tensor | None = None
        """Warm start of the next call, (S, H, m)."""
        self.last_plan: torch.Tensor | None = None
        """The plan of the last call, (S, H, m)."""
        self.last_returns: torch.Tensor | None = None
        self.initial_returns: torch.Tensor | None = None
        """Return of the best initial sequence of the last call (before any Adam step), (S,)."""

    def set_dynamics(self, dynamics: Any) -> None:
        """Plan with another model from now on (the warm start is kept)."""
        self.scorer.dynamics = as_dynamics(dynamics)

    def reset(self) -> None:
        """Forget the warm start."""
        self.plan_ = None

    def plan(self, states) -> torch.Tensor:
        """Best action sequences (S, H, m) for start states (S, n)."""
        cfg = self.config
        s0 = torch.as_tensor(states, dtype=self.dtype).reshape(-1, self.task.state_dim)
        S, H, m, R = s0.shape[0], cfg.horizon, self.task.action_dim, cfg.restarts
        if self.plan_ is None or self.plan_.shape[0] != S:
            self.plan_ = self.box.mid.expand(S, H, m).clone()
        u = cfg.init_std * torch.randn((S, R, H, m), generator=self.generator, dtype=self.dtype)
        u[:, 0] = self.box.unsquash(self.plan_)
        u.requires_grad_(True)
        optimizer = torch.optim.Adam([u], lr=cfg.learning_rate)
        with torch.no_grad():
            first = self.scorer(s0, self.box.squash(u))
        self.initial_returns = first.max(1).values
        best_u, best_ret = u.detach().clone(), first
        for _ in range(cfg.iterations):
            with torch.enable_grad():
                returns = self.scorer(s0, self.box.squash(u))
                optimizer.zero_grad(set_to_none=True)
                (-returns.sum()).backward()
            with torch.no_grad():
                better = returns > best_ret
                best_ret = torch.where(better, returns, best_ret)
                best_u[better] = u.detach()[better]
            optimizer.step()
        with torch.no_grad():
            returns = self.scorer(s0, self.box.squash(u))
            better = returns > best_ret
            best_ret = torch.where(better, returns, best_ret)
            best_u[better] = u.detach()[better]
            k = best_ret.argmax(1)
            plan = self.box.squash(best_u[torch.arange(S), k])
        self.last_returns = best_ret.max(1).values
        self.last_plan = plan
        self.plan_ = plan
        return plan

    def act(self, states) -> torch.Tensor:
        """First action (S, m) of the plan for each state; keeps the rest as the warm start."""
        plan = self.plan(states)
        self.plan_ = shift_plan(plan, self.box.mid)
        return plan[:, 0]


# ---------------------------------------------------------------- the exact pendulum


class PendulumDynamics:
    """Pendulum's exact equation, ``theta'' = 15 sin(theta) + 3 u``, integrated like MuJoCo.

    The constants are those of ``envs/pendulum.py`` (uniform 1 kg, 1 m rod, g = 10): RK4 with
    step 0.01 s, 5 steps per control period, torque clipped to +-2, theta wrapped to [-pi, pi).
    ``predict_torch`` is batched and differentiable.
    """

    def __init__(self):
        from ..envs import pendulum

        self.accel_gravity = 1.5 * pendulum.GRAVITY  # 3 g / (2 l), l = 1 m
        self.accel_torque = 3.0  # 3 / (m l^2), m = 1 kg, l = 1 m
        self.h = pendulum.TIMESTEP
        self.substeps = pendulum.N_SUBSTEPS
        self.max_torque = pendulum.MAX_TORQUE

    def predict_torch(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        th, w = states[:, 0], states[:, 1]
        bu = self.accel_torque * actions[:, 0].to(states.dtype).clamp(
            -self.max_torque, self.max_torque
        )
        g, h = self.accel_gravity, self.h
        for _ in range(self.substeps):
            k1t, k1w = w, g * torch.sin(th) + bu
            k2t, k2w = w + 0.5 * h * k1w, g * torch.sin(th + 0.5 * h * k1t) + bu
            k3t, k3w = w + 0.5 * h * k2w, g * torch.sin(th + 0.5 * h * k2t) + bu
            k4t, k4w = w + h * k3w, g * torch.sin(th + h * k3t) + bu
            th = th + h / 6 * (k1t + 2 * k2t + 2 * k3t + k4t)
            w = w + h / 6 * (k1w + 2 * k2w + 2 * k3w + k4w)
        th = torch.remainder(th + math.pi, 2 * math.pi) - math.pi
        return torch.stack([th, w], dim=-1)

    def predict(self, states, actions) -> np.ndarray:
        """Numpy version of :meth:`predict_torch`."""
        s = torch.as_tensor(np.atleast_2d(states), dtype=torch.float64)
        a = torch.as_tensor(np.atleast_2d(actions), dtype=torch.float64)
        return self.predict_torch(s, a).numpy()
