"""Agents: SAC, MBPO with the symbolic and the ensemble world model, ModelEnv, train/eval CLI."""

from __future__ import annotations

import csv
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from sym_mbrl_ros.agents.mbpo import MBPO, MBPOConfig
from sym_mbrl_ros.agents.model_env import ModelEnv
from sym_mbrl_ros.agents.sac import SAC, SACConfig
from sym_mbrl_ros.cli import main
from sym_mbrl_ros.data.replay import ReplayBuffer
from sym_mbrl_ros.dynamics.ensemble import EnsembleDynamics
from sym_mbrl_ros.envs import get_task
from sym_mbrl_ros.errors import UserError
from sym_mbrl_ros.protocol import eval_episode_seeds, eval_grid


class MatchTheTarget(gym.Env):
    """One-step task: observe a target x in [-1, 1], get reward -(a - x)^2 for action a."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
        self.x = np.zeros(1)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1.0, 1.0, size=1)
        return self.x.copy(), {}

    def step(self, action):
        reward = -float((np.asarray(action)[0] - self.x[0]) ** 2)
        return self.x.copy(), reward, True, False, {}


def test_sac_solves_a_one_dimensional_task_in_a_few_hundred_steps():
    env = MatchTheTarget()
    config = SACConfig(hidden_sizes=(64, 64), learning_rate=3e-3, learning_starts=100)
    agent = SAC(1, env.action_space.low, env.action_space.high, config, seed=0)
    xs = np.linspace(-0.9, 0.9, 19)[:, None]
    error_before = np.abs(agent.predict(xs)[:, 0] - xs[:, 0]).mean()
    agent.learn(600, env)
    error_after = np.abs(agent.predict(xs)[:, 0] - xs[:, 0]).mean()
    assert agent.num_updates == 501
    assert error_before > 0.3
    # 8 seeds checked: 0.05-0.08 after 600 steps
    assert error_after < 0.1, f"mean |a - x| = {error_after:.3f} after 600 steps"


def test_sac_save_load_round_trip_gives_identical_actions(tmp_path):
    agent = SAC(3, [-2.0], [2.0], SACConfig(hidden_sizes=(32, 32)), seed=3)
    buf = ReplayBuffer(3, 1, 1000, seed=0)
    n = 300
    buf.add_batch(torch.randn(n, 3), torch.rand(n, 1) * 4 - 2, torch.randn(n), torch.randn(n, 3),
                  torch.zeros(n))
    for _ in range(20):  # move the weights off their initial values
        agent.update(buf.sample(64))
    agent.save(tmp_path / "policy.pt")
    loaded = SAC.load(tmp_path / "policy.pt")
    obs = np.random.default_rng(0).normal(size=(50, 3))
    np.testing.assert_array_equal(agent.predict(obs), loaded.predict(obs))
    assert loaded.config == agent.config
    assert loaded.alpha == pytest.approx(agent.alpha)
    # the file is a plain state dict: it loads with weights_only=True
    state = torch.load(tmp_path / "policy.pt", weights_only=True)
    assert set(state) >= {"actor", "critic", "log_alpha", "config"}
    # acting stays inside the box
    a = loaded.predict(obs * 100, deterministic=False)
    assert np.all(np.abs(a) <= 2.0)


def test_sac_observation_indices_networks_read_only_those_entries_and_round_trip(tmp_path):
    config = SACConfig(hidden_sizes=(32, 32), observation_indices=(0, 2))
    agent = SAC(4, [-1.0], [1.0], config, seed=1)
    assert agent.actor.inner.trunk[0].in_features == 2
    buf = ReplayBuffer(4, 1, 1000, seed=0)
    n = 300
    buf.add_batch(torch.randn(n, 4), torch.rand(n, 1) * 2 - 1, torch.randn(n), torch.randn(n, 4),
                  torch.zeros(n))
    for _ in range(20):
        agent.update(buf.sample(64))
    obs = np.random.default_rng(0).normal(size=(50, 4))
    other = obs.copy()
    other[:, [1, 3]] = 100.0  # the entries the networks do not read
    np.testing.assert_array_equal(agent.predict(obs), agent.predict(other))
    q = agent.critic(torch.as_tensor(obs, dtype=torch.float32), torch.zeros(50, 1))
    q_other = agent.critic(torch.as_tensor(other, dtype=torch.float32), torch.zeros(50, 1))
    torch.testing.assert_close(q, q_other)
    agent.save(tmp_path / "policy.pt")
    loaded = SAC.load(tmp_path / "policy.pt")
    assert loaded.config.observation_indices == (0, 2)
    np.testing.assert_array_equal(agent.predict(obs), loaded.predict(obs))
    # the controller's numpy actor (what travels in a policy message) reads the same entries
    from sym_mbrl_ros.nodes.policy_payload import MLPActor, decode, encode_agent

    actor = decode(encode_agent(loaded))
    assert isinstance(actor, MLPActor)
    # float32 weights on the wire, float32 torch on this side: 1e-6 is their rounding
    np.testing.assert_allclose(actor.predict(obs), loaded.predict(obs), atol=1e-6)
    with pytest.raises(UserError, match="entries 0..3"):
        SAC(4, [-1.0], [1.0], SACConfig(observation_indices=(0, 4)))


def test_car2d_learners_read_the_task_policy_inputs():
    from sym_mbrl_ros.agents.presets import make_config

    task = get_task("car2d")
    names = [task.observation_names[i] for i in task.policy_inputs]
    assert names == ["v", "steer", "steer_rate", "target_dx_body", "target_dy_body"]
    for algo in ("sac", "sym-mbpo", "mbpo"):
        config = make_config(algo, "car2d")
        assert getattr(config, "sac", config).observation_indices == task.policy_inputs
    # ESPL formulas read them too; an explicit setting wins
    assert make_config("sym-mbpo", "car2d", "espl").sac.observation_indices == task.policy_inputs
    assert make_config("sac", "car2d", overrides={"observation_indices": None}) \
        .observation_indices is None
    assert make_config("sac", "reacher").observation_indices is None
    # a car that moves with its target changes no policy input
    obs = task.observation(np.array([[0.3, -0.2, 0.7, 0.4, 0.1, 0.0, 1.0, 1.2]]))
    moved = task.observation(np.array([[5.3, 4.8, 0.7, 0.4, 0.1, 0.0, 6.0, 6.2]]))
    np.testing.assert_allclose(obs[:, list(task.policy_inputs)],
                               moved[:, list(task.policy_inputs)], atol=1e-12)


def test_mbpo_fills_the_model_buffer_from_symbolic_rollouts_and_trains_on_it(tmp_path):
    task = get_task("pendulum")
    config = MBPOConfig(
        world_model="symbolic", init_random_steps=100, model_train_freq=100,
        rollout_batch_size=40, rollout_horizon=3, updates_per_step=2, model_retain_steps=1000,
        sac=SACConfig(hidden_sizes=(32, 32), batch_size=32),
    )
    mbpo = MBPO(task, config, seed=0)
    mbpo.learn(300)

    # fits at steps 100, 200 and 300, the later two warm-started from the previous fit
    assert mbpo.num_model_fits == 3
    assert mbpo.model.metrics["warm_start"] is True
    assert mbpo.model_r2 > 0.999
    # one batch of 40 rollouts x 3 steps at every real step from step 100 on (201 steps)
    assert len(mbpo.model_buffer) == 201 * 40 * 3
    assert len(mbpo.real_buffer) == 300
    # every SAC update sampled its whole batch from the model buffer and none from the real one
    assert mbpo.agent.num_updates == 201 * 2
    assert mbpo.model_buffer.samples_drawn == mbpo.agent.num_updates * 32
    assert mbpo.real_buffer.samples_drawn == 0

    # the synthetic transitions are the symbolic model's predictions, scored by the task reward
    buf = mbpo.model_buffer
    idx = torch.arange(0, len(buf), 97)
    obs, act = buf.observations[idx].double(), buf.actions[idx].double()
    states = task.observe(obs)
    predicted = torch.as_tensor(mbpo.model.predict(states.numpy(), act.numpy()))
    np.testing.assert_allclose(
        buf.next_observations[idx].numpy(), task.observation(predicted).numpy(), atol=1e-4
    )
    np.testing.assert_allclose(
        buf.rewards[idx].numpy(), task.reward(states, act, predicted).numpy(), rtol=1e-4, atol=1e-4
    )

    # rollouts start from recent real states
    starts = mbpo.real_buffer.sample_recent_states(500, 50)
    recent = mbpo.real_buffer.states[mbpo.real_buffer.recent_indices(50)]
    # each start is a stored row copied as it is: compare the copied values, not a distance
    # (cdist's matmul path leaves ~1e-7 of rounding that depends on the BLAS kernel)
    assert (starts[:, None, :] == recent[None, :, :]).all(-1).any(1).all()

    mbpo.save(tmp_path / "run")
    again = MBPO.load(tmp_path / "run", task)
    obs = np.random.default_rng(1).normal(size=(20, 3))
    np.testing.assert_array_equal(again.predict(obs), mbpo.predict(obs))
    assert again.model.equations() == mbpo.model.equations()


def test_mbpo_first_fit_updates_train_in_the_model_before_the_next_real_step():
    task = get_task("pendulum")
    config = MBPOConfig(
        world_model="symbolic", init_random_steps=100, model_train_freq=1000,
        rollout_batch_size=40, rollout_horizon=3, updates_per_step=2, first_fit_updates=25,
        model_retain_steps=1000, sac=SACConfig(hidden_sizes=(32, 32), batch_size=32),
    )
    mbpo = MBPO(task, config, seed=0)
    seen = {}
    mbpo.learn(102, callback=lambda step, m: seen.setdefault(step, m.agent.num_updates))
    # step 100: the fit, 25 updates in the model (13 rollout batches: one per 2 updates), then
    # the step's own rollout batch and 2 updates; steps 101 and 102 add 2 each
    assert seen[99] == 0 and seen[100] == 25 + 2 and seen[102] == 25 + 6
    assert len(mbpo.model_buffer) == (13 + 3) * 40 * 3
    assert len(mbpo.real_buffer) == 102 and mbpo.real_buffer.samples_drawn == 0


def test_mbpo_mixes_real_data_when_asked():
    task = get_task("pendulum")
    config = MBPOConfig(
        world_model="symbolic", init_random_steps=60, rollout_batch_size=10, rollout_horizon=1,
        updates_per_step=1, real_ratio=0.25, sac=SACConfig(hidden_sizes=(16, 16), batch_size=16),
    )
    mbpo = MBPO(task, config, seed=1)
    mbpo.learn(80)
    assert mbpo.agent.num_updates == 21
    assert mbpo.real_buffer.samples_drawn == 21 * 4
    assert mbpo.model_buffer.samples_drawn == 21 * 12


def _pendulum_data(n: int, seed: int = 0):
    task = get_task("pendulum")
    env = task.make_env()
    rng = np.random.default_rng(seed)
    s, a, s2 = [], [], []
    _, info = env.reset(seed=seed)
    for t in range(n):
        u = rng.uniform(-2, 2, size=1)
        state = info["state"]
        _, _, term, trunc, info = env.step(u)
        s.append(state), a.append(u), s2.append(info["state"])
        if term or trunc or t % 50 == 49:
            _, info = env.reset()
    return task, np.array(s), np.array(a), np.array(s2)


def test_mbpo_rollout_mix_static_draws_targets_from_the_whole_real_buffer():
    task = get_task("reacher")

    class Still:
        def predict_torch(self, states, actions):
            return states.clone()

    def targets_in_rollouts(share: float) -> set[tuple[float, float]]:
        cfg = MBPOConfig(rollout_batch_size=400, rollout_horizon=1, rollout_start_window=20,
                         rollout_mix_static=share, rollout_state_margin=None)
        mbpo = MBPO(task, cfg, seed=0)
        for k in range(100):  # 5 "episodes" of 20 steps, each with its own target
            state = np.array([0.1, 0.2, 0.0, 0.0, 0.1 + 0.01 * (k // 20), 0.05])
            obs = task.observation(state[None])[0]
            mbpo.real_buffer.add(obs, np.zeros(2), 0.0, obs, False, state, state)
        mbpo.model_env = ModelEnv(task, Still())
        mbpo.rollout()
        obs = mbpo.model_buffer.observations[: len(mbpo.model_buffer)].numpy()
        return {(round(float(x), 3), round(float(y), 3)) for x, y in obs[:, 4:6]}

    # the window holds only the last episode's target; mixing reaches all five
    assert targets_in_rollouts(0.0) == {(0.14, 0.05)}
    mixed = targets_in_rollouts(0.5)
    assert mixed == {(round(0.1 + 0.01 * e, 3), 0.05) for e in range(5)}
    with pytest.raises(UserError, match="rollout_mix_static must lie in"):
        MBPO(task, MBPOConfig(rollout_mix_static=1.5))


def test_mbpo_rollout_mix_uniform_starts_beyond_the_lived_states_inside_the_envelope():
    class Still:
        def predict_torch(self, states, actions):
            return states.clone()

    def starts(task, lived: np.ndarray, share: float, envelope=None) -> np.ndarray:
        cfg = MBPOConfig(rollout_batch_size=400, rollout_horizon=1, rollout_mix_uniform=share,
                         rollout_uniform_margin=0.5, rollout_state_margin=None)
        mbpo = MBPO(task, cfg, seed=0)
        mbpo.envelope_bounds = envelope
        for state in lived:
            obs = task.observation(state[None])[0]
            mbpo.real_buffer.add(obs, np.zeros(task.action_dim), 0.0, obs, False, state, state)
        mbpo.set_model(Still(), lived)
        mbpo.rollout()
        return task.observe(mbpo.model_buffer.observations[: len(mbpo.model_buffer)].numpy())

    pendulum = get_task("pendulum")  # theta is an angle, theta_dot is not
    k = np.arange(50)
    lived = np.stack([0.01 * k, -1.0 + 2.0 * k / 49], axis=1)  # theta in [0, 0.49]
    s = starts(pendulum, lived, 0.0)
    assert s[:, 0].min() >= -1e-6 and s[:, 0].max() <= 0.49 + 1e-6
    s = starts(pendulum, lived, 1.0)
    # the angle over the whole circle (its range widened would only reach [-0.245, 0.735])
    assert s[:, 0].min() < -2.5 and s[:, 0].max() > 2.5
    # the velocity range [-1, 1] widened by half its width on each side: [-2, 2]
    assert -2.0 - 1e-6 <= s[:, 1].min() < -1.5 and 1.5 < s[:, 1].max() <= 2.0 + 1e-6
    # never beyond the safety envelope
    capped = starts(pendulum, lived, 1.0,
                    envelope=(np.array([-np.inf, -1.2]), np.array([np.inf, 1.2])))
    assert capped[:, 1].min() >= -1.2 - 1e-6 and capped[:, 1].max() <= 1.2 + 1e-6
    # a target (static coordinate) is one the robot has seen, never a drawn one
    reacher = get_task("reacher")
    lived = np.array([[0.01 * i, 0.0, 0.0, 0.0, 0.1, 0.05] for i in range(50)])
    s = starts(reacher, lived, 1.0)
    np.testing.assert_allclose(s[:, 4:6], np.tile([0.1, 0.05], (len(s), 1)), atol=1e-6)
    assert s[:, 0].min() < 0.0 and s[:, 0].max() > 0.49  # the joint angle widened
    with pytest.raises(UserError, match="rollout_mix_uniform must lie in"):
        MBPO(pendulum, MBPOConfig(rollout_mix_uniform=-0.1))


def test_ensemble_dynamics_learns_the_pendulum_and_round_trips(tmp_path):
    task, s, a, s2 = _pendulum_data(1400)
    model = EnsembleDynamics(task.state_names, task.action_names, task.angle_coords,
                             ensemble_size=4, num_elites=3, hidden_sizes=(64, 64), seed=0)
    model.fit(s[:1000], a[:1000], s2[:1000])
    r2 = model.score(s[1000:], a[1000:], s2[1000:])
    assert set(r2) == {"theta", "theta_dot"}
    assert min(r2.values()) > 0.95, r2
    assert len(model.elites) == 3
    # warm start begins from the previous weights: already good before any new epoch
    warm = EnsembleDynamics(task.state_names, task.action_names, task.angle_coords,
                            ensemble_size=4, num_elites=3, hidden_sizes=(64, 64), max_epochs=1,
                            seed=1).fit(s, a, s2, init=model)
    assert min(warm.score(s[1000:], a[1000:], s2[1000:]).values()) > 0.95
    # batched torch prediction: deterministic mode agrees with numpy, sampling adds noise
    st, at = torch.as_tensor(s[:64]), torch.as_tensor(a[:64])
    np.testing.assert_allclose(model.predict_torch(st, at, sample=False).numpy(),
                               model.predict(s[:64], a[:64]))
    sampled = model.predict_torch(st, at).numpy()
    assert not np.allclose(sampled, model.predict(s[:64], a[:64]))
    model.save(tmp_path / "model.pt")
    loaded = EnsembleDynamics.load(tmp_path / "model.pt")
    np.testing.assert_array_equal(loaded.predict(s[:10], a[:10]), model.predict(s[:10], a[:10]))


def test_model_env_steps_a_batch_with_the_task_reward():
    task, s, a, s2 = _pendulum_data(300)

    class Exact:
        """A world model that replays the recorded transitions (rows in order)."""

        def predict_torch(self, states, actions):
            return torch.as_tensor(s2[: len(states)], dtype=states.dtype)

    env = ModelEnv(task, Exact())
    obs = env.reset(torch.as_tensor(s))
    np.testing.assert_allclose(obs.numpy(), task.observation(s), atol=1e-6)
    step = env.step(torch.as_tensor(a))
    assert step.rewards.shape == (300,)
    np.testing.assert_allclose(step.rewards.numpy(), task.reward(s, a, s2), rtol=1e-10)
    assert not step.terminated.any() and step.valid.all()

    class Broken:
        def predict_torch(self, states, actions):
            out = states.clone()
            out[::2] = float("nan")
            return out

    out = ModelEnv(task, Broken()).rollout(
        lambda o: torch.zeros(len(o), 1), torch.as_tensor(s[:10]), 4
    )
    # the 5 rows that turn NaN are dropped and end their rollout; the other 5 run 4 steps
    assert out.observations.shape[0] == 5 * 4

    class Runaway:
        def predict_torch(self, states, actions):
            return states + torch.tensor([0.0, 3.0], dtype=states.dtype)

    start = torch.zeros(6, 2, dtype=torch.float64)
    bounded = ModelEnv(task, Runaway(), state_low=[-10.0, -10.0], state_high=[10.0, 10.0])
    out = bounded.rollout(lambda o: torch.zeros(len(o), 1), start, 8)
    # theta_dot goes 3, 6, 9, then 12 leaves the bounds: 3 kept steps per row
    assert out.observations.shape[0] == 6 * 3
    assert out.next_observations[:, 2].max() == 9.0
    assert torch.isfinite(out.next_observations).all()


def test_model_env_action_repeat_holds_each_action_and_discounts_its_rewards():
    task = get_task("pendulum")

    class Drift:
        """theta_dot grows by the torque each step; theta follows it."""

        def predict_torch(self, states, actions):
            nxt = states.clone()
            nxt[:, 1] = states[:, 1] + actions[:, 0]
            nxt[:, 0] = states[:, 0] + 0.01 * nxt[:, 1]
            return nxt

    start = torch.tensor([[0.1, 0.0], [-0.2, 0.5]], dtype=torch.float64)
    calls = []

    def policy(obs):
        calls.append(len(obs))
        return torch.full((len(obs), 1), 0.5)

    gamma = 0.9
    out = ModelEnv(task, Drift()).rollout(policy, start, 2, repeat=3, gamma=gamma)
    assert calls == [2, 2]  # one decision per 3 model steps
    assert out.observations.shape[0] == 2 * 2
    # the same thing stepped one model step at a time
    env = ModelEnv(task, Drift())
    env.reset(start)
    rewards = []
    for _ in range(6):
        step = env.step(torch.full((2, 1), 0.5))
        rewards.append(step.rewards)
    first = rewards[0] + gamma * rewards[1] + gamma**2 * rewards[2]
    second = rewards[3] + gamma * rewards[4] + gamma**2 * rewards[5]
    np.testing.assert_allclose(out.rewards.numpy(), torch.cat([first, second]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(out.next_observations[2:].numpy(), step.next_observations.numpy(),
                               rtol=1e-6)
    # MBPO bootstraps its SAC with gamma ** k and refuses real data it cannot line up
    mbpo = MBPO(task, MBPOConfig(action_repeat=4))
    assert mbpo.agent.config.gamma == pytest.approx(0.99**4)
    with pytest.raises(UserError, match="real_ratio > 0 needs action_repeat = 1"):
        MBPO(task, MBPOConfig(action_repeat=4, real_ratio=0.1))


def test_train_and_eval_commands_write_a_complete_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "pendulum", "--algo", "sac", "--steps", "120", "--eval-every", "60",
               "--eval-episodes", "2", "--out", str(out), "--no-progress",
               "--set", "sac.hidden_sizes=[16,16]", "--set", "learning_starts=100"])
    assert rc == 0
    for name in ("config.json", "curve.csv", "curve.png", "policy.pt", "summary.json"):
        assert (out / name).exists(), name
    with (out / "curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["env_steps"] for r in rows] == ["60", "120"]
    assert list(rows[0]) == ["env_steps", "eval_return_mean", "eval_return_std", "wall_s"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sac_updates"] == 21
    assert json.loads((out / "config.json").read_text())["config"]["hidden_sizes"] == [16, 16]
    capsys.readouterr()
    assert main(["eval", str(out), "--episodes", "2"]) == 0
    printed = capsys.readouterr().out
    assert "mean return" in printed
    # the same episodes as the last evaluation of training (the protocol's seeds of evaluation 1)
    first = eval_episode_seeds(0, len(rows) - 1, 2)[0]
    assert main(["eval", str(out), "--episodes", "2", "--seed", str(first)]) == 0
    value = float(capsys.readouterr().out.split("mean return ")[1].split()[0])
    assert value == pytest.approx(float(rows[-1]["eval_return_mean"]), abs=0.1)


def test_evaluation_schedule_is_the_protocol_grid_unless_told_otherwise():
    from sym_mbrl_ros.commands.train import evaluation_steps, parse_eval_dense

    assert evaluation_steps(1200) == eval_grid(1200)  # every learner: the same grid
    dense = parse_eval_dense("50:300")
    assert evaluation_steps(1000, 250, dense) == [50, 100, 150, 200, 250, 300, 500, 750, 1000]
    assert evaluation_steps(599, 250) == [250, 500, 599]
    with pytest.raises(UserError, match="EVERY:UNTIL"):
        parse_eval_dense("50")


def test_train_evaluates_fresh_episodes_and_counts_only_a_sustained_threshold(tmp_path):
    """Every evaluation plays new episode seeds, and the summary's steps_to_threshold is the
    step from which the run stays solved, with the provenance of the code that made it."""
    from sym_mbrl_ros.agents import evaluation
    from sym_mbrl_ros.commands.train import train_run
    from sym_mbrl_ros.protocol import code_hash

    seen: list[list[int]] = []
    original = evaluation.Evaluator.__call__

    def spy(self, policy, seeds=None):
        seen.append(list(seeds))
        return original(self, policy, seeds)

    evaluation.Evaluator.__call__ = spy
    try:
        summary = train_run("pendulum", "sac", 150, 3, tmp_path / "r", eval_every=50,
                            eval_episodes=2, overrides={"hidden_sizes": [8, 8],
                                                        "learning_starts": 140},
                            progress=False)
    finally:
        evaluation.Evaluator.__call__ = original
    assert seen == [eval_episode_seeds(3, k, 2) for k in range(3)]
    assert len({s for block in seen for s in block}) == 6  # no episode replayed
    assert summary["provenance"]["code_hash"] == code_hash()
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["provenance"]["code_hash"] == code_hash()


def test_train_sym_mpc_writes_the_model_and_eval_replans_with_it(tmp_path, capsys):
    out = tmp_path / "mpc"
    rc = main(["train", "pendulum", "--algo", "sym-mpc", "--steps", "100", "--eval-every", "50",
               "--eval-episodes", "2", "--out", str(out), "--no-progress",
               "--set", "cem.population=150", "--set", "cem.horizon=20"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "theta_ddot =" in printed  # the law of the world model it planned with
    for name in ("config.json", "curve.csv", "curve.png", "model.json", "mpc.json",
                 "transitions.npz", "summary.json"):
        assert (out / name).exists(), name
    assert not (out / "policy.pt").exists()  # it plans: there is no policy network
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_fits"] == 1  # the preset fits after 50 random steps
    assert summary["model_r2"] > 0.999
    assert summary["plan_ms_median"] > 0
    # planning on a model of 50 random steps swings the pendulum up (random: about -1100)
    assert summary["final_eval"]["eval_return_mean"] > -400
    assert json.loads((out / "config.json").read_text())["config"]["cem"]["population"] == 150
    assert main(["eval", str(out), "--episodes", "2"]) == 0
    line = capsys.readouterr().out
    assert "(sym-mpc planner): mean return" in line
    assert float(line.split("mean return ")[1].split()[0]) > -400


def test_train_espl_exports_the_formula_and_eval_runs_it_in_numpy(tmp_path, capsys):
    out = tmp_path / "espl"
    rc = main(["train", "pendulum", "--algo", "sac", "--policy", "espl", "--steps", "150",
               "--eval-every", "150", "--eval-episodes", "2", "--out", str(out), "--no-progress",
               "--set", "learning_starts=100"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "policy formula (" in printed and "torque = " in printed
    assert "of the formula in numpy" in printed
    policy = json.loads((out / "policy.json").read_text())
    assert policy["format"] == "sym-mbrl/policy-v1"
    assert policy["observation_names"] == ["cos_theta", "sin_theta", "theta_dot"]
    summary = json.loads((out / "summary.json").read_text())
    formula = summary["formula"]
    assert formula["expressions"][0].startswith("torque = ")
    assert formula["operators"] > 0
    assert len(formula["formula_return"]["returns"]) == 2
    # compacted on the replay buffer, scored on fresh episodes (after the grid's evaluation)
    assert policy["metrics"]["compacted_on"] == "training observations"
    assert policy["metrics"]["eval_seed"] == eval_episode_seeds(0, 1, 2)[0]
    # eval replays the formula (numpy) on the very episodes the run evaluated it on
    seed = str(policy["metrics"]["eval_seed"])
    assert main(["eval", str(out), "--episodes", "2", "--seed", seed]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "(formula, numpy)" in lines[0] and "(pruned network)" in lines[1]
    value = float(lines[0].split("mean return ")[1].split()[0])
    assert value == pytest.approx(formula["formula_return"]["mean"], abs=0.1)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "pendulm"], "unknown task 'pendulm'; choose one of: pendulum"),
        (["train", "pendulum", "--algo", "ppo"], "unknown algorithm 'ppo'; choose one of:"),
        (["train", "pendulum", "--policy", "tree"], "unknown policy 'tree'; choose one of:"),
        (["train", "pendulum", "--algo", "sym-mpc", "--policy", "espl"],
         "--policy espl does not apply to sym-mpc"),
        (["eval", "/nonexistent/run"], "is not a training run"),
    ],
)
def test_cli_rejects_user_mistakes_with_one_sentence(argv, message, capsys, tmp_path):
    rc = main(argv + (["--out", str(tmp_path / "x")] if argv[0] == "train" else []))
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


class _Counter(gym.Env):
    """Observation = steps since reset, reward 1 per step, 10-step episodes."""

    observation_space = gym.spaces.Box(-1e3, 1e3, (1,), dtype=np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0]), {}

    def step(self, action):
        self.t += 1
        return np.array([float(self.t)]), 1.0, False, self.t == 10, {}


def test_model_free_sac_with_action_repeat_stores_one_transition_per_held_block():
    """The baseline's action repeat: a decision every k steps, the block's discounted reward,
    and a gamma ** k bootstrap (the trick MBPO's rollouts get)."""
    cfg = SACConfig(hidden_sizes=(8, 8), learning_starts=10_000, action_repeat=4, gamma=0.9)
    agent = SAC(1, np.array([-1.0]), np.array([1.0]), cfg, seed=0)
    agent.learn(20, _Counter())
    buf = agent.replay_buffer
    # two 10-step episodes, each cut into blocks of 4, 4 and 2 (the time limit ends a block)
    assert len(buf) == 6
    np.testing.assert_allclose(buf.observations[:3, 0].numpy(), [0, 4, 8])
    np.testing.assert_allclose(buf.next_observations[:3, 0].numpy(), [4, 8, 10])
    # 1 + 0.9 + 0.81 + 0.729 and 1 + 0.9; float32 storage: 1e-6 relative
    np.testing.assert_allclose(buf.rewards[:3].numpy(), [3.439, 3.439, 1.9], rtol=1e-6)
    with pytest.raises(UserError, match="action_repeat"):
        SAC(1, np.array([-1.0]), np.array([1.0]), SACConfig(action_repeat=0)).learn(1, _Counter())


def test_mbpo_rollouts_never_leave_the_safety_envelope():
    """The envelope bounds model rollouts whether or not the data give bounds, and narrows
    the data's bounds where it is tighter (a spinning model is cut at the envelope)."""
    task = get_task("pendulum")
    _, s, _, _ = _pendulum_data(200)
    for margin in (None, 10.0):
        mbpo = MBPO(task, MBPOConfig(rollout_state_margin=margin))
        mbpo.envelope_bounds = (np.array([-np.inf, -3.0]), np.array([np.inf, 3.0]))
        mbpo.set_model(EnsembleDynamics(["theta", "theta_dot"], ["torque"]), s)
        env = mbpo.model_env
        np.testing.assert_array_equal(env.state_high, [np.inf, 3.0])  # copied, not computed
        np.testing.assert_array_equal(env.state_low, [-np.inf, -3.0])
    mbpo = MBPO(task, MBPOConfig(rollout_state_margin=0.0))
    mbpo.envelope_bounds = (np.array([-np.inf, -100.0]), np.array([np.inf, 100.0]))
    bounds = mbpo.state_bounds(s)
    assert bounds["state_high"][1] == s[:, 1].max()  # the data's bound is the tighter one
