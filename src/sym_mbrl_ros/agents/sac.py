"""Soft Actor-Critic with automatic entropy tuning (Haarnoja et al. 2018, arXiv 1812.05905).

Read top to bottom: the config, the networks (a squashed-Gaussian actor and twin Q critics
evaluated as one batched network), the update (critic, actor, temperature, target networks),
and the model-free training loop. MBPO reuses :meth:`SAC.update` on model-generated batches.

Policies are pluggable: an *actor* is any ``nn.Module`` whose ``forward(obs)`` returns the
pre-squash ``(mean, log_std)`` of a diagonal Gaussian; :func:`register_actor` adds one under a
name (``SACConfig.policy``). ``"mlp"`` ships here; the symbolic ESPL policy plugs in the same way.
"""

from __future__ import annotations

import copy
import importlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ..data.replay import ReplayBatch, ReplayBuffer
from ..errors import UserError

FORMAT = "sym-mbrl/sac-v1"


@dataclass
class SACConfig:
    """Hyper-parameters of SAC; the defaults are the paper's, with smaller networks."""

    policy: str = "mlp"
    """Name of the actor architecture (see :func:`register_actor`)."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Units per hidden layer of the actor and of each critic."""
    learning_rate: float = 3e-4
    """Adam step size of the actor, the critics and the temperature."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak factor of the target critics (1 copies them)."""
    batch_size: int = 256
    """Transitions per gradient step."""
    buffer_size: int = 1_000_000
    """Capacity of the replay buffer of model-free training."""
    learning_starts: int = 1000
    """Model-free training: steps with uniformly random actions before the first update."""
    gradient_steps: int = 1
    """Model-free training: gradient steps per environment step."""
    action_repeat: int = 1
    """Model-free training: the policy decides every ``action_repeat`` real steps and the
    action is held in between; one stored transition spans the block (its discounted reward
    sum) and is bootstrapped with ``gamma ** action_repeat``. The same trick MBPO's rollouts
    get (``MBPOConfig.action_repeat``), for a like-for-like baseline. MBPO keeps this at 1."""
    init_alpha: float = 1.0
    """Initial entropy temperature."""
    autotune: bool = True
    """Tune the temperature so the policy entropy tracks ``target_entropy``."""
    target_entropy: float | None = None
    """Entropy target; None means ``-action_dim``."""
    log_std_min: float = -5.0
    """Lower bound of the actor's log standard deviation."""
    log_std_max: float = 2.0
    """Upper bound of the actor's log standard deviation."""
    num_threads: int | None = 1
    """``torch.set_num_threads`` value applied when the agent is built; None leaves it alone."""
    observation_indices: tuple[int, ...] | None = None
    """The actor and the critics read only these entries of the observation (None: all).
    A task declares the entries its reward and dynamics cannot depend on (Car2d: where on
    the floor the car and the target are, only their relative position matters), and the
    networks need not learn to ignore them (``TaskSpec.policy_inputs``)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SACConfig:
        """Build a config from a dict (as written by ``asdict``), ignoring unknown keys."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "hidden_sizes" in kw:
            kw["hidden_sizes"] = tuple(int(h) for h in kw["hidden_sizes"])
        if kw.get("observation_indices") is not None:
            kw["observation_indices"] = tuple(int(i) for i in kw["observation_indices"])
        return cls(**kw)


class SACLosses(NamedTuple):
    """What one SAC update measured (floats)."""

    critic_loss: float
    actor_loss: float
    alpha: float
    entropy: float
    """Monte-Carlo estimate of the policy entropy on the batch (−mean log-prob)."""
    q_mean: float


# ---------------------------------------------------------------- networks


def mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """A plain MLP with ``activation`` between the layers and none after the last."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class GaussianMLPActor(nn.Module):
    """The default actor: an MLP giving the mean and the (bounded) log std of a Gaussian."""

    def __init__(self, obs_dim: int, action_dim: int, config: SACConfig):
        super().__init__()
        self.trunk = mlp([obs_dim, *config.hidden_sizes], nn.ReLU)
        self.trunk.append(nn.ReLU())
        self.mean = nn.Linear(config.hidden_sizes[-1], action_dim)
        self.log_std = nn.Linear(config.hidden_sizes[-1], action_dim)
        self.log_std_min, self.log_std_max = config.log_std_min, config.log_std_max

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        log_std = torch.tanh(self.log_std(h))  # CleanRL's soft bound, smoother than a clamp
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1)
        return self.mean(h), log_std


ActorFactory = Callable[[int, int, SACConfig], nn.Module]
ACTORS: dict[str, ActorFactory] = {"mlp": GaussianMLPActor}
"""Actor architectures by name: ``factory(obs_dim, action_dim, config) -> nn.Module``."""


def register_actor(name: str, factory: ActorFactory) -> None:
    """Make an actor architecture available as ``SACConfig(policy=name)``."""
    ACTORS[name] = factory


def actor_factory(name: str) -> ActorFactory:
    """The factory registered as ``name``; a policy module ``agents/<name>.py`` that is not
    imported yet is imported first (it registers itself, as ``agents/espl.py`` does)."""
    if name not in ACTORS and name.isidentifier():
        module = f"{__package__}.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    if name not in ACTORS:
        raise UserError(f"unknown policy {name!r}; choose one of: {', '.join(sorted(ACTORS))}")
    return ACTORS[name]


class VectorizedLinear(nn.Module):
    """``n`` independent linear layers applied in one batched matmul: (n, B, i) -> (n, B, o)."""

    def __init__(self, n: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default initialisation
        weight = torch.empty(n, in_features, out_features).uniform_(-bound, bound)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.empty(n, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class SelectInputs(nn.Module):
    """Wraps a network so that it reads only the given entries of its first input."""

    def __init__(self, inner: nn.Module, indices: tuple[int, ...]):
        super().__init__()
        self.inner = inner
        self.register_buffer("indices", torch.as_tensor(indices, dtype=torch.long))

    def forward(self, obs: torch.Tensor, *rest: torch.Tensor):
        return self.inner(obs.index_select(-1, self.indices), *rest)


def base_actor(actor: nn.Module) -> nn.Module:
    """The actor architecture itself, without the :class:`SelectInputs` around it."""
    return actor.inner if isinstance(actor, SelectInputs) else actor


class TwinQ(nn.Module):
    """Two Q networks Q(s, a) evaluated together; ``forward`` returns (2, B)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_sizes: tuple[int, ...], n: int = 2):
        super().__init__()
        sizes = [obs_dim + action_dim, *hidden_sizes, 1]
        self.n = n
        self.layers = nn.ModuleList(
            VectorizedLinear(n, sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)
        )

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1).expand(self.n, -1, -1)
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x).squeeze(-1)


# ---------------------------------------------------------------- the agent


class SAC:
    """Soft Actor-Critic for a box action space.

    Args:
        obs_dim: length of an observation.
        action_low, action_high: bounds of the action box; the tanh-squashed policy maps into it.
        config: hyper-parameters.
        seed: seeds the network initialisation and the agent's own random generators
            (the global torch RNG is left untouched).
    """

    def __init__(
        self,
        obs_dim: int,
        action_low,
        action_high,
        config: SACConfig | None = None,
        seed: int = 0,
    ):
        self.config = config = config or SACConfig()
        make_actor = actor_factory(config.policy)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.obs_dim = int(obs_dim)
        self.action_low = np.asarray(action_low, dtype=np.float64).reshape(-1)
        self.action_high = np.asarray(action_high, dtype=np.float64).reshape(-1)
        self.action_dim = self.action_low.size
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        half_range = (self.action_high - self.action_low) / 2
        self.action_scale = torch.as_tensor(half_range, dtype=torch.float32)
        self.action_bias = torch.as_tensor(self.action_low + half_range, dtype=torch.float32)

        indices = config.observation_indices
        if indices is not None:
            if not indices or min(indices) < 0 or max(indices) >= self.obs_dim:
                raise UserError(
                    f"observation_indices {list(indices)} must name entries 0..{self.obs_dim - 1}"
                )
        net_in = self.obs_dim if indices is None else len(indices)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = make_actor(net_in, self.action_dim, config)
            self.critic = TwinQ(net_in, self.action_dim, config.hidden_sizes)
        if indices is not None:
            self.actor = SelectInputs(self.actor, indices)
            self.critic = SelectInputs(self.critic, indices)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(config.init_alpha), requires_grad=True)
        self.target_entropy = (
            -float(self.action_dim) if config.target_entropy is None else config.target_entropy
        )
        lr = config.learning_rate
        # the fused kernels take a third of the update time off on CPU
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=lr, fused=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=lr, fused=True)
        self.num_updates = 0
        self.num_timesteps = 0
        self.replay_buffer: ReplayBuffer | None = None
        """Model-free training's buffer, made by the first :meth:`learn`."""

    @property
    def alpha(self) -> float:
        return self.log_alpha.detach().exp().item()

    # -- acting

    def sample_action(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action in the task's units and its log-probability, (B, m), (B,)."""
        mean, log_std = self.actor(obs)
        std = log_std.exp()
        eps = torch.randn(mean.shape, generator=self.generator)
        x = mean + std * eps
        y = torch.tanh(x)
        # log N(x) - log|d(scale*tanh(x))/dx|, with a stable form of log(1 - tanh(x)^2)
        log_prob = -0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        log_prob = log_prob - 2 * (math.log(2) - x - nn.functional.softplus(-2 * x))
        # densities are those of the normalised action in [-1, 1]^m (as in SB3), so the
        # entropy target does not depend on the task's units
        return y * self.action_scale + self.action_bias, log_prob.sum(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Batched actions (B, m) for observations (B, o), in the task's units, no gradient."""
        obs = obs.to(torch.float32)
        if deterministic:
            mean, _ = self.actor(obs)
            return torch.tanh(mean) * self.action_scale + self.action_bias
        return self.sample_action(obs)[0]

    def predict(self, obs, deterministic: bool = True) -> np.ndarray:
        """Action(s) for one observation (o,) or a batch (B, o), as float64 numpy."""
        o = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
        single = o.ndim == 1
        a = self.act(o.reshape(1, -1) if single else o, deterministic).double().numpy()
        return a[0] if single else a

    def random_action(self) -> np.ndarray:
        """A uniformly random action in the box."""
        return self.rng.uniform(self.action_low, self.action_high)

    # -- learning

    def update(self, batch: ReplayBatch) -> SACLosses:
        """One gradient step on the critics, the actor and the temperature, then Polyak."""
        cfg = self.config
        alpha = self.log_alpha.exp().detach()

        with torch.no_grad():
            next_action, next_log_prob = self.sample_action(batch.next_observations)
            next_q = self.critic_target(batch.next_observations, next_action).min(0).values
            gamma = cfg.gamma ** int(cfg.action_repeat)  # one transition spans the block
            target = batch.rewards + gamma * (1 - batch.terminated) * (
                next_q - alpha * next_log_prob
            )
        q = self.critic(batch.observations, batch.actions)
        critic_loss = (q - target).pow(2).mean(1).sum()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        self.critic.requires_grad_(False)
        action, log_prob = self.sample_action(batch.observations)
        q_pi = self.critic(batch.observations, action).min(0).values
        actor_loss = (alpha * log_prob - q_pi).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()
        self.critic.requires_grad_(True)

        if cfg.autotune:
            alpha_loss = -(self.log_alpha.exp() * (log_prob.detach() + self.target_entropy)).mean()
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()

        with torch.no_grad():
            torch._foreach_lerp_(
                list(self.critic_target.parameters()), list(self.critic.parameters()), cfg.tau
            )
        self.num_updates += 1
        return SACLosses(
            critic_loss.item(), actor_loss.item(), alpha.item(),
            -log_prob.detach().mean().item(), q.detach().mean().item(),
        )

    def learn(
        self,
        total_steps: int,
        env,
        callback: Callable[[int, Any], Any] | None = None,
        progress_bar: bool = False,
    ) -> SAC:
        """Model-free training: act in ``env`` for ``total_steps`` steps, updating as we go.

        ``callback(step, agent)`` runs after every environment step (``step`` counts from 1).
        """
        cfg = self.config
        if self.replay_buffer is None:
            self.replay_buffer = ReplayBuffer(
                self.obs_dim, self.action_dim, cfg.buffer_size, seed=self.seed
            )
        buffer = self.replay_buffer
        repeat = int(cfg.action_repeat)
        if repeat < 1 or repeat != cfg.action_repeat:
            raise UserError(f"action_repeat must be a whole number >= 1, got {cfg.action_repeat}")
        obs, _ = env.reset(seed=self.seed)
        bar = _progress(total_steps, progress_bar)
        held, start, total, discount = 0, obs, 0.0, 1.0
        action = None
        for _ in range(total_steps):
            if held == 0:  # a new decision
                if self.num_timesteps < cfg.learning_starts:
                    action = self.random_action()
                else:
                    action = self.predict(obs, deterministic=False)
                start, total, discount = obs, 0.0, 1.0
            next_obs, reward, terminated, truncated, _ = env.step(action)
            total += discount * float(reward)
            discount *= cfg.gamma
            held += 1
            if held == repeat or terminated or truncated:
                buffer.add(start, action, total, next_obs, terminated)
                held = 0
            obs = next_obs
            if terminated or truncated:
                obs, _ = env.reset()
            self.num_timesteps += 1
            if self.num_timesteps >= cfg.learning_starts:
                for _ in range(cfg.gradient_steps):
                    self.update(buffer.sample(cfg.batch_size))
            if bar is not None:
                bar.update(1)
            if callback is not None:
                callback(self.num_timesteps, self)
        if bar is not None:
            bar.close()
        return self

    # -- persistence

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the agent: plain types and tensors only."""
        return {
            "format": FORMAT,
            "config": asdict(self.config),
            "obs_dim": self.obs_dim,
            "action_low": self.action_low.tolist(),
            "action_high": self.action_high.tolist(),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
        }

    def save(self, path: str | Path) -> None:
        """Write the weights and config (a state dict; no pickled objects)."""
        torch.save(self.state_dict(), Path(path))

    @classmethod
    def load(cls, path: str | Path, num_threads: int | None = 1) -> SAC:
        """Rebuild an agent written by :meth:`save` (read with ``weights_only=True``)."""
        try:
            d = torch.load(Path(path), weights_only=True, map_location="cpu")
        except (OSError, RuntimeError) as exc:
            raise UserError(f"cannot read policy file {path}: {exc}") from exc
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise UserError(f"{path} is not a SAC policy file (expected format {FORMAT})")
        config = SACConfig.from_dict({**d["config"], "num_threads": num_threads})
        agent = cls(d["obs_dim"], d["action_low"], d["action_high"], config)
        agent.actor.load_state_dict(d["actor"])
        agent.critic.load_state_dict(d["critic"])
        agent.critic_target.load_state_dict(d["critic_target"])
        with torch.no_grad():
            agent.log_alpha.copy_(d["log_alpha"])
        return agent


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True)
