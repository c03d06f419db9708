"""ESPL: a control policy that is a formula (Guo et al., NeurIPS 2023, arXiv 2311.02104).

Read top to bottom:

1. **Operators.** The activations of the symbolic network: identity, square, sin, cos, x and a
   guarded division. Each has a torch form (training) and a sympy form (export) that compute
   the same number, so the exported formula reproduces the pruned network exactly.
2. **The symbolic network.** One small network per action coordinate. Every layer is a set of
   operator nodes; each operator argument is a linear combination of *all* earlier features (the
   inputs and the outputs of every earlier layer: dense connections), plus a bias. The output is
   one more linear combination of all features. The weights and biases are the formula's
   constants.
3. **The probabilistic path selector.** Every weight and bias has a probability ``p`` of being
   kept. Training samples a Bernoulli mask per weight with the Gumbel-softmax (binary concrete)
   trick, hard in the forward pass and relaxed in the backward pass (straight-through). After
   a warm-up with the full network, the temperature anneals from ``temperature_start`` to
   ``temperature_end`` and the expected L0 norm ``sum(p)`` is penalised above a budget that
   shrinks to ``l0_target`` paths per action coordinate. The probabilities are clipped to
   ``prob_clip`` after every update (and move faster than the weights: ``prob_lr_scale``).
4. **The actor.** :class:`ESPLActor` is a SAC actor (``forward(obs) -> (mean, log_std)``, see
   ``agents/sac.py``). The mean is the symbolic network; the log std comes from a small MLP
   that is only used for exploration. It is trained with SAC's actor loss; the critics stay
   MLPs. The L0 penalty reaches the gradient through :class:`_AddGradient`, so the unchanged
   ``SAC.update`` optimises ``actor loss + L0 penalty``. Registered as ``SACConfig(policy="espl")``.
5. **Pruning and export.** Paths with ``p < prune_threshold`` are removed; what is left becomes one
   sympy expression per action coordinate, ``a = scale * tanh(f(obs)) + offset``, made compact
   (negligible terms dropped, constants rounded to the fewest significant digits that keep the
   action within 1 % of the network's; :func:`compact_formula`). ``policy.json`` stores the
   expressions in the grammar of DESIGN.md; :class:`FormulaPolicy` evaluates them in numpy;
   :func:`export_and_evaluate` reports the returns of the network and of the formula.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import sympy
import torch
from torch import nn

from ..dynamics.expression import CompiledExpression, parse_expression, to_sympy
from ..errors import UserError
from .sac import SAC, SACConfig, base_actor, mlp, register_actor

POLICY_FORMAT = "sym-mbrl/policy-v1"

# ---------------------------------------------------------------- operators

DIV_GUARD = 1e-3
"""Guard of the division node: ``a / b`` is computed as ``a * b / (b**2 + DIV_GUARD)``.

That equals ``a / b`` wherever ``|b| >> sqrt(DIV_GUARD)``, is bounded and smooth at ``b = 0``,
and is itself plain grammar, so the exported formula is exactly what the network computed.
When the denominator is pruned to a constant, sympy folds the guard into one number.
"""


@dataclass(frozen=True)
class Operator:
    """An activation of the symbolic network, in torch and in sympy."""

    arity: int
    torch_fn: Callable[..., torch.Tensor]
    sympy_fn: Callable[..., sympy.Expr]


OPERATORS: dict[str, Operator] = {
    "id": Operator(1, lambda a: a, lambda a: a),
    "square": Operator(1, lambda a: a * a, lambda a: a**2),
    "sin": Operator(1, torch.sin, sympy.sin),
    "cos": Operator(1, torch.cos, sympy.cos),
    "mul": Operator(2, lambda a, b: a * b, lambda a, b: a * b),
    "div": Operator(
        2,
        lambda a, b: a * b / (b * b + DIV_GUARD),
        lambda a, b: a * b / (b**2 + sympy.Float(DIV_GUARD)),
    ),
}
"""The operators a layer may use, by name. Addition is the linear combination in front of each."""


# ---------------------------------------------------------------- configuration


@dataclass
class ESPLConfig:
    """Hyper-parameters of the symbolic policy (architecture, path selector, export)."""

    layers: tuple[tuple[str, ...], ...] = (
        ("mul", "mul", "div", "sin", "cos", "square", "id"),
        ("mul", "mul", "div", "sin", "cos", "square", "id"),
    )
    """Operator nodes of each hidden layer (names from ``OPERATORS``), per action coordinate."""
    weight_scale: float = 0.3
    """Hidden-layer weights and biases start uniform in [-weight_scale, weight_scale]."""
    output_weight_scale: float = 0.03
    """The output layer's start uniform in [-output_weight_scale, output_weight_scale]: the
    policy starts near zero action, not saturated at the bounds (where tanh has no gradient)."""
    init_prob: float = 1.0
    """Initial probability of every path (the paper starts with all paths on)."""
    prob_lr_scale: float = 20.0
    """Adam moves the path probabilities this many times faster than the weights."""
    prob_clip: tuple[float, float] = (0.0, 1.0)
    """Path probabilities are clipped to this interval after every update."""
    temperature_start: float = 1.0
    """Gumbel-softmax temperature at the start of training."""
    temperature_end: float = 0.2
    """Temperature reached after ``anneal_updates`` actor updates."""
    l0_coef: float = 0.2
    """Weight of the expected-L0 penalty in the actor loss."""
    l0_target: float = 10.0
    """Expected number of paths per action coordinate that the budget shrinks to."""
    anneal_updates: int = 15_000
    """Actor updates by which the temperature and the L0 budget reach their final values."""
    warmup_fraction: float = 0.2
    """Share of ``anneal_updates`` at the start with every path kept on budget (the policy
    learns with the full network first, then paths are pruned)."""
    prune_threshold: float = 0.5
    """After training, paths with probability below this are removed."""
    std_hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layers of the MLP that gives the exploration log std (not part of the formula)."""
    digits: int = 3
    """Significant digits of the exported constants."""

    def __post_init__(self):
        for layer in self.layers:
            for op in layer:
                if op not in OPERATORS:
                    raise UserError(
                        f"unknown ESPL operator {op!r}; choose from {', '.join(OPERATORS)}"
                    )
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise UserError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        lo, hi = self.prob_clip
        if not 0.0 <= lo < hi <= 1.0:
            raise UserError(f"prob_clip must satisfy 0 <= low < high <= 1, got {self.prob_clip}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ESPLConfig:
        """Build a config from a dict (as written by ``asdict``), ignoring unknown keys."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "layers" in kw:
            kw["layers"] = tuple(tuple(layer) for layer in kw["layers"])
        for key in ("prob_clip", "std_hidden_sizes"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)


# ---------------------------------------------------------------- the symbolic network


@dataclass(frozen=True)
class _Layer:
    """Operator nodes of one layer, grouped by operator so each group is one torch call."""

    groups: tuple[tuple[str, int], ...]  # (operator, number of nodes)

    @property
    def n_nodes(self) -> int:
        return sum(n for _, n in self.groups)

    @property
    def n_args(self) -> int:
        return sum(OPERATORS[op].arity * n for op, n in self.groups)

    @classmethod
    def from_ops(cls, ops: Sequence[str]) -> _Layer:
        order: dict[str, int] = {}
        for op in ops:
            order[op] = order.get(op, 0) + 1
        return cls(tuple(order.items()))


class SymbolicNetwork(nn.Module):
    """A densely connected network of operators with a Bernoulli keep-probability per weight.

    Block ``k`` (each hidden layer, then the output) has a weight tensor of shape
    ``(n_outputs, n_args_k, n_features_k + 1)``; the last column is the bias (a weight on the
    constant feature 1). ``prob_k`` has the same shape.
    """

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        layers: Sequence[Sequence[str]],
        weight_scale: float = 0.3,
        init_prob: float = 1.0,
        prob_lr_scale: float = 1.0,
        output_weight_scale: float | None = None,
    ):
        super().__init__()
        self.n_inputs, self.n_outputs = int(n_inputs), int(n_outputs)
        self.layers = [_Layer.from_ops(ops) for ops in layers]
        self.prob_lr_scale = float(prob_lr_scale)
        self.weights = nn.ParameterList()
        self.prob_params = nn.ParameterList()
        n_features = self.n_inputs
        shapes = []
        for layer in self.layers:
            shapes.append((self.n_outputs, layer.n_args, n_features + 1))
            n_features += layer.n_nodes
        shapes.append((self.n_outputs, 1, n_features + 1))
        self.n_features = n_features
        for k, shape in enumerate(shapes):
            scale = weight_scale
            if k == len(shapes) - 1 and output_weight_scale is not None:
                scale = output_weight_scale
            w = torch.empty(shape).uniform_(-scale, scale)
            self.weights.append(nn.Parameter(w))
            init = torch.full(shape, float(init_prob) / self.prob_lr_scale)
            self.prob_params.append(nn.Parameter(init))

    @property
    def probs(self) -> list[torch.Tensor]:
        """Keep-probability of every path, one tensor per block (same shapes as the weights).

        They are stored divided by ``prob_lr_scale`` so that Adam, whose step size does not
        depend on the gradient's scale, moves a probability that many times faster than a weight.
        """
        return [self.prob_lr_scale * p for p in self.prob_params]

    def set_probs_(self, probs: Sequence[torch.Tensor]) -> None:
        """Overwrite the path probabilities (one tensor per block)."""
        with torch.no_grad():
            for param, p in zip(self.prob_params, probs):
                param.copy_(torch.as_tensor(p, dtype=param.dtype) / self.prob_lr_scale)

    @property
    def n_paths(self) -> int:
        """Number of weights (paths) per output coordinate."""
        return sum(p[0].numel() for p in self.prob_params)

    # -- masks

    def masks(
        self,
        mode: str,
        batch: int = 1,
        temperature: float = 1.0,
        threshold: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> list[torch.Tensor]:
        """One mask per block, shaped ``(batch or 1, *weight.shape)``.

        Modes: ``"gumbel"`` (hard Bernoulli sample in the forward pass, binary-concrete gradient
        in the backward pass, one sample per batch row), ``"bernoulli"`` (hard sample per row, no
        gradient), ``"pruned"`` (``p >= threshold``), ``"full"`` (every path).
        """
        out = []
        for prob in self.probs:
            if mode == "full":
                out.append(torch.ones_like(prob).unsqueeze(0))
            elif mode == "pruned":
                out.append((prob.detach() >= threshold).to(prob.dtype).unsqueeze(0))
            elif mode in ("gumbel", "bernoulli"):
                u = torch.rand((batch, *prob.shape), generator=generator, dtype=prob.dtype)
                u = u.clamp(1e-6, 1 - 1e-6)
                logistic = torch.log(u) - torch.log1p(-u)  # difference of two Gumbel draws
                p = prob.clamp(1e-6, 1 - 1e-6)
                logits = torch.log(p) - torch.log1p(-p)
                if mode == "bernoulli":
                    out.append((logits.detach() + logistic > 0).to(prob.dtype))
                else:
                    soft = torch.sigmoid((logits + logistic) / temperature)
                    hard = (soft > 0.5).to(prob.dtype)
                    out.append(hard + (soft - soft.detach()))  # exactly 0/1, soft gradient
            else:
                raise ValueError(f"unknown mask mode {mode!r}")
        return out

    # -- evaluation

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
        """Outputs (B, n_outputs) for inputs (B, n_inputs) under the given masks."""
        b = x.shape[0]
        ones = x.new_ones(b, self.n_outputs, 1)
        features = x.unsqueeze(1).expand(b, self.n_outputs, self.n_inputs)
        for k, layer in enumerate(self.layers):
            w = self.weights[k] * masks[k]  # (B|1, m, args, f+1)
            z = (w @ torch.cat([features, ones], -1).unsqueeze(-1)).squeeze(-1)  # (B, m, args)
            outs, col = [], 0
            for op_name, n in layer.groups:
                op = OPERATORS[op_name]
                args = [z[..., col + i * n : col + (i + 1) * n] for i in range(op.arity)]
                outs.append(op.torch_fn(*args))
                col += op.arity * n
            features = torch.cat([features, *outs], -1)
        w = self.weights[-1] * masks[-1]
        return (w @ torch.cat([features, ones], -1).unsqueeze(-1)).squeeze(-1).squeeze(-1)

    # -- path selector statistics

    def clip_probabilities_(self, low: float = 0.0, high: float = 1.0) -> None:
        """Project every path probability into [low, high] in place."""
        with torch.no_grad():
            for p in self.prob_params:
                p.clamp_(low / self.prob_lr_scale, high / self.prob_lr_scale)

    def expected_l0(self) -> torch.Tensor:
        """Expected number of kept paths, summed over the output coordinates."""
        return sum(p.clamp(0.0, 1.0).sum() for p in self.probs)

    def kept_paths(self, threshold: float = 0.5) -> int:
        """Number of paths (over all outputs) with probability >= threshold."""
        return int(sum(int((p.detach() >= threshold).sum()) for p in self.probs))

    # -- export

    def sympy_outputs(
        self, symbols: Sequence[sympy.Symbol], threshold: float = 0.5, digits: int | None = None
    ) -> list[sympy.Expr]:
        """The pruned network as one sympy expression per output (before any squashing).

        Only paths with ``p >= threshold`` appear; ``digits`` rounds each weight to that many
        significant digits first (None keeps them exact).
        """
        weights = [
            (w.detach().double() * (p.detach() >= threshold).double()).cpu().numpy()
            for w, p in zip(self.weights, self.probs)
        ]
        exprs = []
        for j in range(self.n_outputs):
            features: list[sympy.Expr] = list(symbols)
            for k, layer in enumerate(self.layers):
                z = [_linear(features, weights[k][j, a], digits) for a in range(layer.n_args)]
                col = 0
                for op_name, n in layer.groups:
                    op = OPERATORS[op_name]
                    for node in range(n):
                        args = [z[col + i * n + node] for i in range(op.arity)]
                        features.append(op.sympy_fn(*args))
                    col += op.arity * n
            exprs.append(_linear(features, weights[-1][j, 0], digits))
        return exprs


def _round_sig(value: float, digits: int | None) -> float:
    if digits is None or value == 0 or not math.isfinite(value):
        return float(value)
    return float(f"{value:.{digits}g}")


def _linear(features: Sequence[sympy.Expr], row: np.ndarray, digits: int | None) -> sympy.Expr:
    """sum_i row[i] * features[i] + row[-1], skipping the pruned (zero) terms."""
    terms = [
        sympy.Float(_round_sig(w, digits)) * f for w, f in zip(row[:-1], features) if w != 0.0
    ]
    if row[-1] != 0.0:
        terms.append(sympy.Float(_round_sig(row[-1], digits)))
    return sympy.Add(*terms) if terms else sympy.Integer(0)


# ---------------------------------------------------------------- the actor


class _AddGradient(torch.autograd.Function):
    """Identity on ``output``; in the backward pass adds fixed gradients to ``params``.

    This is how a regulariser of the actor's parameters joins the SAC actor loss without SAC
    knowing about it: the backward pass through the actor's mean (once per actor loss) adds
    ``d penalty / d params`` to the parameters' gradients, i.e. it optimises loss + penalty.
    """

    @staticmethod
    def forward(ctx, output, grads, *params):  # params only route the gradient to them
        ctx.grads = grads
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad_output):
        return (grad_output, None, *ctx.grads)


class ESPLActor(nn.Module):
    """SAC actor whose mean is a :class:`SymbolicNetwork` (see the module docstring)."""

    def __init__(
        self, obs_dim: int, action_dim: int, sac_config: SACConfig, config: ESPLConfig | None = None
    ):
        super().__init__()
        self.config = config = config or ESPLConfig()
        self.net = SymbolicNetwork(
            obs_dim, action_dim, config.layers, config.weight_scale, config.init_prob,
            config.prob_lr_scale, config.output_weight_scale,
        )
        self.std_net = mlp([obs_dim, *config.std_hidden_sizes, action_dim], nn.ReLU)
        self.log_std_min, self.log_std_max = sac_config.log_std_min, sac_config.log_std_max
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.mask_mode: str | None = None
        """Force a mask mode (``"pruned"``, ``"full"``, …); None picks it automatically."""
        # The masks get their own generator, seeded from the RNG the actor is built under
        # (SAC seeds it with the agent's seed), so a run does not depend on the global RNG.
        seed = int(torch.randint(0, 2**62, (1,)))
        self.generator: torch.Generator | None = torch.Generator().manual_seed(seed)

    # -- schedules

    def progress(self) -> float:
        """Fraction of the annealing schedule done, in [0, 1] (0 during the warm-up)."""
        total = max(1, self.config.anneal_updates)
        warmup = int(self.config.warmup_fraction * total)
        return min(1.0, max(0.0, float(self.num_updates) - warmup) / max(1, total - warmup))

    def temperature(self) -> float:
        """Current Gumbel-softmax temperature (linear from start to end)."""
        c, t = self.config, self.progress()
        return c.temperature_start + (c.temperature_end - c.temperature_start) * t

    def l0_budget(self) -> float:
        """Current budget of expected paths per action coordinate (quadratic decay)."""
        n, target = self.net.n_paths, min(self.config.l0_target, self.net.n_paths)
        return target + (n - target) * (1.0 - self.progress()) ** 2

    def l0_penalty(self) -> torch.Tensor:
        """``l0_coef * max(0, E[L0] - budget)`` per action coordinate, averaged."""
        m = self.net.n_outputs
        excess = self.net.expected_l0() / m - self.l0_budget()
        return self.config.l0_coef * torch.relu(excess)

    # -- forward

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, log_std)`` of the pre-squash Gaussian, (B, m) each.

        With gradients on (the SAC actor loss) the masks are Gumbel-softmax samples, the
        probabilities are clipped, the schedules advance by one update and the L0 penalty is
        attached to the backward pass. With gradients off (acting, critic targets) the masks are
        hard Bernoulli samples. ``mask_mode`` overrides the choice (see :meth:`pruned`).
        """
        obs = obs.to(self.net.weights[0].dtype)
        training_step = torch.is_grad_enabled() and self.mask_mode is None
        mode = self.mask_mode or ("gumbel" if training_step else "bernoulli")
        if training_step:
            self.net.clip_probabilities_(*self.config.prob_clip)
        masks = self.net.masks(
            mode, obs.shape[0], self.temperature(), self.config.prune_threshold, self.generator
        )
        mean = self.net(obs, masks)
        if training_step:
            probs = list(self.net.prob_params)
            with torch.enable_grad():
                grads = torch.autograd.grad(self.l0_penalty(), probs, allow_unused=True)
            grads = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(probs, grads))
            mean = _AddGradient.apply(mean, grads, *probs)
            self.num_updates += 1
        log_std = torch.tanh(self.std_net(obs))
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1)
        return mean, log_std

    @contextmanager
    def masked(self, mode: str) -> Iterator[ESPLActor]:
        """Use one mask mode inside the block (``"pruned"``, ``"full"``, ``"bernoulli"``)."""
        old, self.mask_mode = self.mask_mode, mode
        try:
            yield self
        finally:
            self.mask_mode = old

    def pruned(self):
        """Context manager: act with the pruned network (``p >= prune_threshold``)."""
        return self.masked("pruned")

    def finish(self) -> None:
        """Clip the probabilities (the projection after the last update)."""
        self.net.clip_probabilities_(*self.config.prob_clip)


def register_espl(config: ESPLConfig | None = None, name: str = "espl") -> None:
    """Make the symbolic actor available as ``SACConfig(policy=name)`` with this config."""
    espl_config = config or ESPLConfig()

    def factory(obs_dim: int, action_dim: int, sac_config: SACConfig) -> ESPLActor:
        return ESPLActor(obs_dim, action_dim, sac_config, espl_config)

    register_actor(name, factory)


register_espl()


# ---------------------------------------------------------------- export


class _GrammarPrinter(sympy.printing.str.StrPrinter):
    """sympy's str printer, with the grammar's spelling of abs and short floats."""

    def _print_Abs(self, expr):
        return f"abs({self._print(expr.args[0])})"

    def _print_Float(self, expr):
        return repr(float(expr))


def expression_to_string(expr: sympy.Expr) -> str:
    """Spell a sympy expression in the grammar of DESIGN.md (names, numbers, + - * / **, …)."""
    expr = sympy.sympify(expr)
    if expr.atoms(sympy.NumberSymbol):
        expr = expr.evalf()  # pi and E become numbers
    allowed = {
        sympy.sin, sympy.cos, sympy.tan, sympy.exp, sympy.log, sympy.tanh, sympy.Abs,
    }
    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.Function) and node.func not in allowed:
            raise UserError(f"the formula uses {node.func}, which the expression grammar lacks")
        if node in (sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
            raise UserError("the formula is not finite everywhere; retrain or prune differently")
    return _GrammarPrinter({"full_prec": False}).doprint(expr)


def round_constants(expr: sympy.Expr, digits: int | None) -> sympy.Expr:
    """Round every float in ``expr`` to ``digits`` significant digits (None: unchanged)."""
    if digits is None:
        return expr
    return expr.xreplace(
        {n: sympy.Float(_round_sig(float(n), digits)) for n in expr.atoms(sympy.Float)}
    )


def formula_size(expr: sympy.Expr) -> tuple[int, int]:
    """(operators, constants) of an expression; constants are float/fraction occurrences."""
    n_ops = int(sympy.count_ops(expr))
    n_const = sum(
        1
        for node in sympy.preorder_traversal(expr)
        if isinstance(node, sympy.Float)
        or (isinstance(node, sympy.Rational) and not node.is_Integer)
    )
    return n_ops, n_const


@dataclass
class SymbolicPolicy:
    """An exported policy: one formula per action coordinate, in the grammar of DESIGN.md."""

    observation_names: list[str]
    """The formulas' variables, one per entry of the policy's input."""
    action_names: list[str]
    expressions: list[str]
    action_low: list[float]
    action_high: list[float]
    metrics: dict[str, Any] = field(default_factory=dict)
    source: str = "espl"
    input_indices: list[int] | None = None
    """Where the variables sit in the whole observation, which then has ``observation_size``
    entries (a task's policy inputs, e.g. Car2d's speed, steering and target in the car's
    frame); None: the variables are the whole observation, in order."""
    observation_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": POLICY_FORMAT, **asdict(self)}

    def save(self, path: str | Path) -> None:
        """Write ``policy.json``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def size(self) -> tuple[int, int]:
        """Total (operators, constants) over all action formulas."""
        sizes = [formula_size(_parse_sympy(e, self.observation_names)) for e in self.expressions]
        return sum(s[0] for s in sizes), sum(s[1] for s in sizes)

    def pretty(self) -> str:
        """The formulas as ``name = expression`` lines."""
        return "\n".join(f"{a} = {e}" for a, e in zip(self.action_names, self.expressions))


class _FormulaCheck:
    """Evaluates candidate formulas for one action coordinate against the pruned network."""

    def __init__(self, names, X: np.ndarray, scale: float, offset: float, reference: np.ndarray):
        self.names, self.X = list(names), X
        self.scale, self.offset, self.reference = scale, offset, reference

    def action(self, f: sympy.Expr) -> sympy.Expr:
        a = _number(self.scale) * sympy.tanh(f)
        return a + _number(self.offset) if self.offset != 0.0 else a

    def error(self, f: sympy.Expr) -> float:
        """Largest deviation from the network's action on ``X``, as a fraction of the half range."""
        try:
            text = expression_to_string(self.action(f))
            tree = parse_expression(text, self.names)
            values = CompiledExpression(tree, self.names).numpy(self.X)
        except UserError:
            return math.inf
        err = np.abs(values - self.reference) / abs(self.scale)
        return float(np.max(np.nan_to_num(err, nan=np.inf)))


def _number(value: float) -> sympy.Expr:
    """An integer-valued float as a sympy Integer (prints ``2``, and ``1*x`` vanishes)."""
    return sympy.Integer(int(value)) if float(value).is_integer() else sympy.Float(value)


def _size_key(f: sympy.Expr) -> tuple[int, int]:
    ops, consts = formula_size(f)
    return ops + consts, ops


def compact_formula(
    f: sympy.Expr,
    check: _FormulaCheck,
    tolerance: float,
    max_digits: int = 6,
    max_expand_ops: int = 60,
) -> sympy.Expr:
    """The most compact variant of ``f`` whose action stays within ``tolerance`` of the network.

    sympy already folds constants, merges like terms and drops pruned (zero) terms when the
    formula is built. On top of that, each step below is kept only if the action error on the
    check points stays within ``tolerance`` (a fraction of the half action range): dropping
    constants, smallest first (replacing one by 0 removes its term); rounding every constant to
    the fewest significant digits; then the smallest of the formula, its common factors pulled
    out (``factor_terms``) and, for small formulas, its expansion. ``sympy.simplify`` is not
    used: on float coefficients it can run for minutes. ``tolerance = 0`` keeps the pruned
    network exact (only rewrites that agree to 1e-9 are taken).
    """
    exact = tolerance <= 0
    accept = 1e-9 if exact else tolerance
    best, digits = f, None
    if not exact:
        for atom in sorted(best.atoms(sympy.Float), key=lambda n: abs(float(n)))[:80]:
            if atom not in best.atoms(sympy.Float):
                continue
            candidate = best.xreplace({atom: sympy.Integer(0)})
            if check.error(candidate) <= tolerance / 2:
                best = candidate
        for n in range(1, max_digits + 1):
            candidate = round_constants(best, n)
            if check.error(candidate) <= accept:
                best, digits = candidate, n
                break
    candidates = [sympy.factor_terms(best)]
    if sympy.count_ops(best) <= max_expand_ops:
        candidates.append(sympy.expand(best))
    for candidate in candidates:
        # rewriting multiplies rounded constants together: round the products again
        for rounded in (round_constants(candidate, digits), candidate):
            if _size_key(rounded) < _size_key(best) and check.error(rounded) <= accept:
                best = rounded
                break
    return best


def export_policy(
    agent: SAC,
    observation_names: Sequence[str],
    action_names: Sequence[str],
    observations: np.ndarray | None = None,
    tolerance: float = 0.01,
    threshold: float | None = None,
    seed: int = 0,
) -> SymbolicPolicy:
    """Prune an ESPL agent's actor and export one compact formula per action coordinate.

    Each formula is ``scale * tanh(f(obs)) + offset``, the deterministic action of the squashed
    Gaussian with the pruned network as ``f``. :func:`compact_formula` simplifies it, drops
    negligible terms and rounds constants, checking on ``observations`` (N, o) (e.g. the replay
    buffer's; default 2000 standard-normal draws) that the action moves by at most
    ``tolerance`` x half the action range. ``tolerance=0`` exports the pruned network exactly.
    """
    actor = base_actor(agent.actor)
    if not isinstance(actor, ESPLActor):
        raise UserError("this agent's policy is not symbolic; train it with --policy espl")
    threshold = actor.config.prune_threshold if threshold is None else threshold
    names = list(observation_names)
    indices = agent.config.observation_indices  # the network reads only these entries
    if indices is not None:
        if len(names) != agent.obs_dim:
            raise UserError(
                f"{len(names)} observation names for an observation of {agent.obs_dim} entries"
            )
        names = [names[i] for i in indices]
        if observations is not None:
            observations = np.asarray(observations, dtype=np.float64).reshape(
                -1, agent.obs_dim)[:, list(indices)]
    if len(names) != actor.net.n_inputs:
        raise UserError(
            f"{len(names)} observation names for a policy with {actor.net.n_inputs} inputs"
        )
    if len(action_names) != actor.net.n_outputs:
        raise UserError(
            f"{len(action_names)} action names for a policy with {actor.net.n_outputs} outputs"
        )
    if observations is None:
        observations = np.random.default_rng(seed).standard_normal((2000, len(names)))
    X = np.asarray(observations, dtype=np.float64).reshape(-1, len(names))
    X = X[np.all(np.isfinite(X), axis=1)]
    symbols = [sympy.Symbol(n) for n in names]
    raw = actor.net.sympy_outputs(symbols, threshold)
    # from the float64 bounds (the agent's float32 tensors would print 2.8 as 2.799999952)
    scale = (agent.action_high - agent.action_low) / 2
    offset = (agent.action_high + agent.action_low) / 2
    exprs = []
    for j, f in enumerate(raw):
        exact = _FormulaCheck(names, X, float(scale[j]), float(offset[j]), np.zeros(len(X)))
        exact.reference = CompiledExpression(
            parse_expression(expression_to_string(exact.action(f)), names), names
        ).numpy(X)
        f = compact_formula(f, exact, tolerance)
        text = expression_to_string(exact.action(f))
        parse_expression(text, names)  # the file must read back through the whitelisted parser
        exprs.append(text)
    policy = SymbolicPolicy(
        names, list(action_names), exprs, agent.action_low.tolist(), agent.action_high.tolist(),
        input_indices=None if indices is None else [int(i) for i in indices],
        observation_size=None if indices is None else agent.obs_dim,
    )
    ops, consts = policy.size()
    policy.metrics.update(
        operators=ops,
        constants=consts,
        kept_paths=actor.net.kept_paths(threshold),
        total_paths=actor.net.n_paths * actor.net.n_outputs,
        prune_threshold=threshold,
        tolerance=tolerance,
    )
    return policy


def _parse_sympy(text: str, names: Sequence[str]) -> sympy.Expr:
    """Parse a grammar string to sympy through the whitelisted parser."""
    return to_sympy(parse_expression(text, names))


def observation_names(task: Any, obs_dim: int | None = None) -> list[str]:
    """Names of the observation entries, used as the inputs of a policy formula.

    The task's ``observation_names`` (``TaskSpec``) when they fit ``obs_dim``; else
    ``obs_0, obs_1, ...``.
    """
    names = getattr(task, "observation_names", None) or None
    if obs_dim is None:
        obs_dim = int(np.asarray(task.observation(np.zeros((1, task.state_dim)))).shape[-1])
    if names is None or len(names) != obs_dim:
        return [f"obs_{i}" for i in range(obs_dim)]
    return list(names)


def export_and_evaluate(
    agent: SAC,
    task: Any,
    episodes: int = 5,
    seed: int = 10_000,
    out: str | Path | None = None,
    tolerance: float = 0.01,
    observations: np.ndarray | None = None,
) -> dict[str, Any]:
    """Evaluate the pruned network, export its formula, evaluate the formula in numpy.

    The formula is compacted against the network on ``observations`` (the states the policy
    was trained on, e.g. its replay buffer's observations), not on the evaluation episodes:
    a formula fitted on the episodes it is scored on would be scored on its own check points.
    Without ``observations`` (older callers) the network's evaluation observations are used.
    The pruned network and then the exported formula (:class:`FormulaPolicy`, numpy, no
    network) run the same ``episodes`` evaluation episodes (seeds ``seed + i``). With ``out``,
    ``policy.json`` is written there, both returns in its metrics. Returns a dict with
    ``network`` and ``formula`` (mean, std, returns, success_rate), ``policy`` (the
    :class:`SymbolicPolicy`), ``operators`` and ``constants``.
    """
    from .evaluation import Evaluator

    actor = base_actor(agent.actor)
    if not isinstance(actor, ESPLActor):
        raise UserError("this agent's policy is not symbolic; train it with --policy espl")
    seen: list[np.ndarray] = []

    def network(obs: np.ndarray) -> np.ndarray:
        seen.append(np.asarray(obs, dtype=np.float64).reshape(-1, agent.obs_dim))
        with actor.pruned():
            return agent.predict(obs, deterministic=True)

    evaluator = Evaluator(task, episodes, seed=seed)
    try:
        net_result = evaluator(network)
        policy = export_policy(
            agent, observation_names(task, agent.obs_dim), list(task.action_names),
            observations=np.concatenate(seen) if observations is None else np.asarray(
                observations, dtype=np.float64).reshape(-1, agent.obs_dim),
            tolerance=tolerance,
        )
        formula_result = evaluator(FormulaPolicy(policy))
    finally:
        evaluator.close()

    def summary(r) -> dict[str, Any]:
        return {"mean": r.mean, "std": r.std, "returns": r.returns, "success_rate": r.success_rate}

    ops, consts = policy.size()
    policy.metrics.update(
        network_return=summary(net_result), formula_return=summary(formula_result),
        eval_episodes=episodes, eval_seed=seed, task=getattr(task, "name", None),
        compacted_on="training observations" if observations is not None else "evaluation",
    )
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        policy.save(Path(out) / "policy.json")
    return {
        "network": summary(net_result), "formula": summary(formula_result), "policy": policy,
        "operators": ops, "constants": consts,
    }


# ---------------------------------------------------------------- the formula policy


class FormulaPolicy:
    """A policy read from ``policy.json``: evaluates the formulas in numpy, no network.

    ``predict(obs)`` takes one observation (o,) or a batch (B, o) and returns actions clipped
    to the action bounds. This is what the ROS controller runs.
    """

    def __init__(self, policy: SymbolicPolicy):
        self.policy = policy
        self.observation_names = list(policy.observation_names)
        self.action_names = list(policy.action_names)
        self.action_low = np.asarray(policy.action_low, dtype=np.float64)
        self.action_high = np.asarray(policy.action_high, dtype=np.float64)
        if not (len(self.action_names) == len(policy.expressions) == self.action_low.size):
            raise UserError(
                "policy file is inconsistent: it needs one expression and one bound per action"
            )
        self.input_indices = (
            None if policy.input_indices is None else [int(i) for i in policy.input_indices]
        )
        if self.input_indices is not None:
            size = policy.observation_size
            if (
                size is None or len(self.input_indices) != len(self.observation_names)
                or min(self.input_indices) < 0 or max(self.input_indices) >= int(size)
            ):
                raise UserError(
                    "policy file is inconsistent: input_indices needs one index per observation "
                    "name, each below observation_size"
                )
        self._compiled = [
            CompiledExpression(parse_expression(e, self.observation_names), self.observation_names)
            for e in policy.expressions
        ]

    @classmethod
    def load(cls, path: str | Path) -> FormulaPolicy:
        """Read ``policy.json`` (format ``sym-mbrl/policy-v1``)."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read policy file {path}: {exc}") from exc
        return cls.from_dict(d, str(path))

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "policy") -> FormulaPolicy:
        """Build from the JSON object of ``policy.json``."""
        if not isinstance(d, dict) or d.get("format") != POLICY_FORMAT:
            raise UserError(f"{where} is not a symbolic policy (expected format {POLICY_FORMAT})")
        try:
            policy = SymbolicPolicy(
                [str(n) for n in d["observation_names"]],
                [str(n) for n in d["action_names"]],
                [str(e) for e in d["expressions"]],
                [float(v) for v in d["action_low"]],
                [float(v) for v in d["action_high"]],
                dict(d.get("metrics", {})),
                str(d.get("source", "espl")),
                None if d.get("input_indices") is None else [int(i) for i in d["input_indices"]],
                None if d.get("observation_size") is None else int(d["observation_size"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{where} lacks a field or has a bad value ({exc})") from exc
        return cls(policy)

    @property
    def expressions(self) -> list[str]:
        return list(self.policy.expressions)

    @property
    def input_size(self) -> int:
        """Entries of the observation ``predict`` takes."""
        if self.input_indices is None:
            return len(self.observation_names)
        return int(self.policy.observation_size)  # checked in __init__

    def predict(self, obs, deterministic: bool = True) -> np.ndarray:
        """Action(s) for one observation (o,) or a batch (B, o), float64, clipped to bounds.

        A coordinate whose formula is not finite there (NaN, +-inf) is returned as it is, not
        clipped: no bound is a safe stand-in for it, so the caller (the controller's guard)
        must decide.
        ``deterministic`` is accepted for the policy interface; a formula always is.
        """
        x = np.asarray(obs, dtype=np.float64)
        single = x.ndim == 1
        x = x.reshape(1, -1) if single else x
        if x.ndim != 2 or x.shape[1] != self.input_size:
            where = "" if self.input_indices is None else (
                f" at {self.input_indices} of an observation of {self.input_size}"
            )
            raise UserError(
                f"observation has shape {np.shape(obs)}, but this policy reads "
                f"{len(self.observation_names)} values ({', '.join(self.observation_names)})"
                f"{where}"
            )
        if self.input_indices is not None:
            x = x[:, self.input_indices]
        a = np.stack([c.numpy(x) for c in self._compiled], axis=-1)
        a = np.where(np.isfinite(a), np.clip(a, self.action_low, self.action_high), a)
        return a[0] if single else a

    __call__ = predict
