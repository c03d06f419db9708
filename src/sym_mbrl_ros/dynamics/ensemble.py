"""A probabilistic MLP ensemble world model: MBPO's own model (Janner et al. 2019), our baseline.

Each member maps (state features, action) to a diagonal Gaussian over the *normalised
increment* of the state, ``(s' - s - mean) / std``, and is trained with the Gaussian negative
log-likelihood, with MBPO's learned soft bounds on the log-variance. Members see the data in
independent orders; after training the ``num_elites`` members with the lowest held-out error
are the *elites*: predictions average them, rollouts sample one at random per row.

Angle coordinates enter as (sin, cos) and their increments are wrapped; static coordinates are
copied through. The interface matches :class:`~sym_mbrl_ros.dynamics.symbolic.SymbolicDynamics`:
``fit / predict / predict_torch / score / save / load``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UserError

FORMAT = "sym-mbrl/ensemble-v1"


def _wrap(x):
    return (x + math.pi) % (2 * math.pi) - math.pi


class EnsembleLinear(nn.Module):
    """``n`` independent linear layers in one batched matmul: (n, B, i) -> (n, B, o)."""

    def __init__(self, n: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        weight = torch.empty(n, in_features, out_features).uniform_(-bound, bound)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(n, 1, out_features))

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        if members is None:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.baddbmm(self.bias[members], x, self.weight[members])


class GaussianEnsemble(nn.Module):
    """``n`` MLPs, each giving the mean and log-variance of a diagonal Gaussian."""

    def __init__(self, n: int, in_dim: int, out_dim: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        sizes = [in_dim, *hidden_sizes]
        self.hidden = nn.ModuleList(
            EnsembleLinear(n, sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)
        )
        self.head = EnsembleLinear(n, sizes[-1], 2 * out_dim)
        self.max_logvar = nn.Parameter(torch.full((out_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((out_dim,), -10.0))
        self.out_dim = out_dim

    def forward(
        self, x: torch.Tensor, members: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, B, in) -> mean, log-variance (k, B, out) of all members, or of ``members``."""
        for layer in self.hidden:
            x = nn.functional.silu(layer(x, members))
        return self._bound(self.head(x, members))

    def forward_member(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, in) -> mean, log-variance (B, out) of member ``k`` alone."""
        for layer in self.hidden:
            x = nn.functional.silu(torch.addmm(layer.bias[k, 0], x, layer.weight[k]))
        return self._bound(torch.addmm(self.head.bias[k, 0], x, self.head.weight[k]))

    def _bound(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = out.split(self.out_dim, dim=-1)
        logvar = self.max_logvar - nn.functional.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + nn.functional.softplus(logvar - self.min_logvar)
        return mean, logvar


class EnsembleDynamics:
    """Probabilistic MLP ensemble with elites, fitted on normalised state increments.

    Args:
        state_names, action_names: coordinate names (their number fixes the dimensions).
        angle_coords: indices of periodic coordinates (fed as sin/cos, increments wrapped).
        static_coords: indices copied through unchanged.
        ensemble_size: members trained.
        num_elites: members used for prediction (lowest held-out error).
        hidden_sizes: hidden layers of each member.
        learning_rate, weight_decay: Adam settings.
        batch_size: transitions per member per gradient step.
        max_epochs: epochs per fit, at most.
        patience: stop after this many epochs without a 1% held-out improvement.
        holdout_ratio: share of the data held out for early stopping and elite selection.
        seed: seeds initialisation, data order and rollout sampling.
    """

    def __init__(
        self,
        state_names,
        action_names,
        angle_coords=(),
        static_coords=(),
        ensemble_size: int = 7,
        num_elites: int = 5,
        hidden_sizes: tuple[int, ...] = (200, 200, 200),
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-5,
        batch_size: int = 256,
        max_epochs: int = 200,
        patience: int = 5,
        holdout_ratio: float = 0.2,
        seed: int = 0,
    ):
        if num_elites > ensemble_size:
            raise UserError(
                f"num_elites ({num_elites}) cannot exceed ensemble_size ({ensemble_size})"
            )
        self.state_names = tuple(state_names)
        self.action_names = tuple(action_names)
        self.angle_coords = tuple(int(i) for i in angle_coords)
        self.static_coords = tuple(int(i) for i in static_coords)
        n = len(self.state_names)
        self.dynamic_coords = tuple(i for i in range(n) if i not in self.static_coords)
        self.plain_coords = tuple(i for i in range(n) if i not in self.angle_coords)
        self.hparams = dict(
            ensemble_size=ensemble_size, num_elites=num_elites, hidden_sizes=tuple(hidden_sizes),
            learning_rate=learning_rate, weight_decay=weight_decay, batch_size=batch_size,
            max_epochs=max_epochs, patience=patience, holdout_ratio=holdout_ratio, seed=seed,
        )
        self.in_dim = len(self.plain_coords) + 2 * len(self.angle_coords) + len(self.action_names)
        self.out_dim = len(self.dynamic_coords)
        self.generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = GaussianEnsemble(
                ensemble_size, self.in_dim, self.out_dim, tuple(hidden_sizes)
            )
        self.elites = torch.arange(num_elites)
        for name in ("in_mean", "in_std", "out_mean", "out_std"):
            dim = self.in_dim if name.startswith("in") else self.out_dim
            setattr(self, name, torch.zeros(dim) if "mean" in name else torch.ones(dim))
        self.metrics: dict[str, Any] = {}
        self.fitted = False

    # -- features

    def _features(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        parts = [s[:, list(self.plain_coords)]]
        if self.angle_coords:
            ang = s[:, list(self.angle_coords)]
            parts += [torch.sin(ang), torch.cos(ang)]
        parts.append(a)
        return torch.cat(parts, dim=-1).to(torch.float32)

    def _increment(self, s: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
        d = s_next - s
        if self.angle_coords:
            d[:, list(self.angle_coords)] = _wrap(d[:, list(self.angle_coords)])
        return d[:, list(self.dynamic_coords)]

    def _apply(self, s: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        nxt = s.clone()
        nxt[:, list(self.dynamic_coords)] = s[:, list(self.dynamic_coords)] + delta.to(s.dtype)
        if self.angle_coords:
            nxt[:, list(self.angle_coords)] = _wrap(nxt[:, list(self.angle_coords)])
        return nxt

    # -- fitting

    def fit(self, states, actions, next_states, init: EnsembleDynamics | None = None):
        """Train on transitions; ``init`` (a previous fit) warm-starts the weights."""
        s = torch.as_tensor(np.asarray(states, dtype=np.float64))
        a = torch.as_tensor(np.asarray(actions, dtype=np.float64))
        s2 = torch.as_tensor(np.asarray(next_states, dtype=np.float64))
        if s.ndim != 2 or s.shape[1] != len(self.state_names) or a.shape[0] != s.shape[0]:
            raise UserError(
                f"expected states (N, {len(self.state_names)}), actions (N, "
                f"{len(self.action_names)}) and next_states like states; got {tuple(s.shape)}, "
                f"{tuple(a.shape)}, {tuple(s2.shape)}"
            )
        if not (torch.isfinite(s).all() and torch.isfinite(a).all() and torch.isfinite(s2).all()):
            raise UserError("transitions contain NaN or inf; drop those rows before fitting")
        hp = self.hparams
        if init is not None and init.fitted and init is not self:
            self.net.load_state_dict(init.net.state_dict())

        x = self._features(s, a)
        y = self._increment(s, s2).to(torch.float32)
        self.in_mean, self.in_std = x.mean(0), x.std(0).clamp_min(1e-6)
        self.out_mean, self.out_std = y.mean(0), y.std(0).clamp_min(1e-6)
        x = (x - self.in_mean) / self.in_std
        y = (y - self.out_mean) / self.out_std

        n = x.shape[0]
        perm = torch.randperm(n, generator=self.generator)
        n_hold = min(int(n * hp["holdout_ratio"]), 5000) if n >= 10 else 0
        hold, train = perm[:n_hold], perm[n_hold:]
        x_tr, y_tr, x_ho, y_ho = x[train], y[train], x[hold], y[hold]
        E, bs = hp["ensemble_size"], hp["batch_size"]
        decay = [{"params": layer.parameters(), "weight_decay": hp["weight_decay"]}
                 for layer in [*self.net.hidden, self.net.head]]
        opt = torch.optim.AdamW(
            decay + [{"params": [self.net.max_logvar, self.net.min_logvar], "weight_decay": 0.0}],
            lr=hp["learning_rate"],
        )

        def holdout_mse() -> torch.Tensor:
            if n_hold == 0:
                return torch.zeros(E)
            with torch.no_grad():
                mean, _ = self.net(x_ho.expand(E, -1, -1))
                return (mean - y_ho).pow(2).mean((1, 2))

        best = holdout_mse()
        best_state = copy.deepcopy(self.net.state_dict())
        stale, epochs = 0, 0
        n_tr = x_tr.shape[0]
        while epochs < hp["max_epochs"]:
            epochs += 1
            order = torch.argsort(torch.rand(E, n_tr, generator=self.generator), dim=1)
            for start in range(0, n_tr, bs):
                idx = order[:, start : start + bs]
                mean, logvar = self.net(x_tr[idx])
                inv_var = torch.exp(-logvar)
                nll = ((mean - y_tr[idx]).pow(2) * inv_var + logvar).mean((1, 2)).sum()
                loss = nll + 0.01 * (self.net.max_logvar.sum() - self.net.min_logvar.sum())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            mse = holdout_mse()
            improved = (best - mse) / best.clamp_min(1e-12) > 0.01
            if improved.any():
                state = self.net.state_dict()
                for key, val in state.items():
                    if val.ndim == 3:  # per-member weights and biases
                        best_state[key][improved] = val[improved]
                    else:
                        best_state[key] = val.clone()
                best = torch.where(improved, mse, best)
                stale = 0
            else:
                stale += 1
                if stale >= hp["patience"]:
                    break
        if n_hold:
            self.net.load_state_dict(best_state)
        final = holdout_mse()
        self.elites = torch.argsort(final)[: hp["num_elites"]]
        self.fitted = True
        self.metrics = {
            "epochs": epochs,
            "holdout_mse_normalised": final.tolist(),
            "elites": self.elites.tolist(),
            "train_samples": int(n_tr),
        }
        return self

    # -- prediction

    def _predict_increment(self, s: torch.Tensor, a: torch.Tensor, sample: bool) -> torch.Tensor:
        x = (self._features(s, a) - self.in_mean) / self.in_std
        elites = self.elites
        if sample:
            # each row goes through one random elite: rows are grouped by member, so the
            # cost is one forward pass of the batch, not one per member
            pick = torch.randint(0, len(elites), (x.shape[0],), generator=self.generator)
            order = torch.argsort(pick)
            counts = torch.bincount(pick, minlength=len(elites)).tolist()
            parts = []
            for k, rows in zip(elites.tolist(), torch.split(order, counts)):
                if len(rows):
                    mu, logvar = self.net.forward_member(x[rows], k)
                    noise = torch.randn(mu.shape, generator=self.generator)
                    parts.append(mu + noise * torch.exp(0.5 * logvar))
            out = torch.empty(x.shape[0], self.out_dim)
            out[order] = torch.cat(parts)
        else:
            mean, _ = self.net(x.expand(len(elites), -1, -1), elites)
            out = mean.mean(0)
        return out * self.out_std + self.out_mean

    @torch.no_grad()
    def predict_torch(self, s: torch.Tensor, a: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """Next states (B, n) for torch states and actions, as a batch.

        With ``sample`` (the default, as in MBPO rollouts) each row comes from one random
        elite plus its Gaussian noise; without, it is the elites' mean prediction.
        """
        return self._apply(s, self._predict_increment(s, a.to(s.dtype), sample))

    def predict(self, states, actions) -> np.ndarray:
        """Deterministic next states (mean of the elites), numpy in, numpy out."""
        s = torch.as_tensor(np.asarray(states, dtype=np.float64))
        a = torch.as_tensor(np.asarray(actions, dtype=np.float64))
        single = s.ndim == 1
        if single:
            s, a = s[None], a[None]
        out = self.predict_torch(s, a, sample=False).numpy()
        return out[0] if single else out

    def score(self, states, actions, next_states) -> dict[str, float]:
        """R² per coordinate on the increment (next - current; wrapped for angles), computed
        exactly as :meth:`SymbolicDynamics.score` does."""
        from .symbolic import increment_r2

        s = np.asarray(states, dtype=np.float64)
        s2 = np.asarray(next_states, dtype=np.float64)
        pred = self.predict(s, actions)
        return {
            name: increment_r2(s[:, i], s2[:, i], pred[:, i], i in self.angle_coords)
            for i, name in enumerate(self.state_names)
        }

    # -- persistence

    def save(self, path: str | Path) -> None:
        """Write weights, normalisers and settings (a state dict; read with weights_only)."""
        torch.save(
            {
                "format": FORMAT,
                "state_names": list(self.state_names),
                "action_names": list(self.action_names),
                "angle_coords": list(self.angle_coords),
                "static_coords": list(self.static_coords),
                "hparams": {
                    k: list(v) if isinstance(v, tuple) else v for k, v in self.hparams.items()
                },
                "net": self.net.state_dict(),
                "elites": self.elites,
                "normalisers": [self.in_mean, self.in_std, self.out_mean, self.out_std],
                "metrics": self.metrics,
            },
            Path(path),
        )

    @classmethod
    def load(cls, path: str | Path) -> EnsembleDynamics:
        """Read a model written by :meth:`save`."""
        try:
            d = torch.load(Path(path), weights_only=True, map_location="cpu")
        except (OSError, RuntimeError) as exc:
            raise UserError(f"cannot read ensemble model {path}: {exc}") from exc
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise UserError(f"{path} is not an ensemble dynamics file (expected {FORMAT})")
        hp = dict(d["hparams"])
        hp["hidden_sizes"] = tuple(hp["hidden_sizes"])
        model = cls(
            d["state_names"], d["action_names"], d["angle_coords"], d["static_coords"], **hp
        )
        model.net.load_state_dict(d["net"])
        model.elites = d["elites"]
        model.in_mean, model.in_std, model.out_mean, model.out_std = d["normalisers"]
        model.metrics = d["metrics"]
        model.fitted = True
        return model
