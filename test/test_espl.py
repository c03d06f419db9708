"""ESPL symbolic policies: path selector, pruning, export, training, policy.json, FormulaPolicy."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from sym_mbrl_ros.agents.espl import (
    ESPLActor,
    ESPLConfig,
    FormulaPolicy,
    SymbolicNetwork,
    export_policy,
    register_espl,
)
from sym_mbrl_ros.agents.sac import SAC, SACConfig
from sym_mbrl_ros.data.replay import ReplayBuffer
from sym_mbrl_ros.errors import UserError

torch.set_num_threads(1)
NAMES = ["cos_theta", "sin_theta", "theta_dot"]


def espl_agent(config: ESPLConfig | None = None, seed: int = 0, **sac) -> SAC:
    register_espl(config or ESPLConfig(), name="espl-test")
    return SAC(3, [-2.0], [2.0], SACConfig(policy="espl-test", hidden_sizes=(32, 32), **sac), seed)


def random_buffer(n: int = 512, seed: int = 0) -> ReplayBuffer:
    g = torch.Generator().manual_seed(seed)
    buf = ReplayBuffer(3, 1, n, seed=seed)
    buf.add_batch(
        torch.randn(n, 3, generator=g), 2 * torch.rand(n, 1, generator=g) - 1,
        torch.randn(n, generator=g), torch.randn(n, 3, generator=g), torch.zeros(n),
    )
    return buf


def total_probability(actor: ESPLActor) -> float:
    return float(actor.net.expected_l0().detach())


def test_bernoulli_masks_follow_the_probabilities_and_gumbel_masks_are_hard_with_gradients():
    net = SymbolicNetwork(3, 2, [("mul", "sin", "id")], init_prob=1.0)
    probs = [torch.full_like(p, 0.3) for p in net.probs]
    net.set_probs_(probs)
    masks = net.masks("bernoulli", batch=4000, generator=torch.Generator().manual_seed(0))
    assert abs(float(masks[0].mean()) - 0.3) < 0.01
    assert masks[0].shape == (4000, *net.weights[0].shape)

    masks = net.masks("gumbel", batch=64, temperature=0.5)
    values = torch.cat([m.detach().flatten() for m in masks]).unique()
    assert set(values.tolist()) <= {0.0, 1.0}  # hard in the forward pass
    out = net(torch.randn(64, 3), masks).sum()
    out.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.prob_params)


def test_l0_penalty_lowers_the_probability_mass_down_to_the_budget():
    cfg = ESPLConfig(l0_target=5.0, anneal_updates=1, l0_coef=1.0)
    actor = espl_agent(cfg).actor
    actor.num_updates.fill_(1)  # annealing done: the budget is l0_target paths per output
    start = total_probability(actor)
    assert start == pytest.approx(actor.net.n_paths)  # every path starts on
    # plain gradient descent, so the step stops when the gradient does (Adam's momentum would not)
    optimizer = torch.optim.SGD(actor.net.prob_params.parameters(), lr=1e-5)
    masses = []
    for _ in range(300):
        optimizer.zero_grad()
        actor.l0_penalty().backward()
        optimizer.step()
        actor.finish()
        masses.append(total_probability(actor))
    assert all(b <= a + 1e-6 for a, b in zip(masses, masses[1:]))  # monotone
    assert masses[-1] == pytest.approx(5.0, abs=1.0)  # it stops at the budget
    assert float(actor.l0_penalty().detach()) < 0.05 * cfg.l0_coef
    for p in actor.net.probs:
        assert float(p.detach().min()) >= 0.0 and float(p.detach().max()) <= 1.0  # clipped


def test_l0_penalty_reaches_the_gradient_through_the_unchanged_sac_update():
    buf = random_buffer()
    masses = {}
    for coef in (0.0, 1.0):
        agent = espl_agent(ESPLConfig(l0_coef=coef, l0_target=3.0, anneal_updates=1), batch_size=64)
        for _ in range(40):
            agent.update(buf.sample(64))
        masses[coef] = total_probability(agent.actor)
        assert agent.actor.num_updates == 40  # one schedule step per actor update
        assert agent.actor.temperature() == pytest.approx(agent.actor.config.temperature_end)
    n = agent.actor.net.n_paths
    assert masses[1.0] < masses[0.0] - 0.2 * n


def test_pruning_removes_the_low_probability_paths():
    actor = espl_agent(ESPLConfig(layers=(("mul", "sin", "square"),))).actor.double()
    net = actor.net
    rng = np.random.default_rng(0)
    probs = [torch.tensor(rng.uniform(0, 1, p.shape)) for p in net.probs]
    probs[0][..., 2] = 0.2  # every path from theta_dot (input 2) into layer 1 ...
    probs[-1][..., 2] = 0.1  # ... and straight to the output is unlikely
    net.set_probs_(probs)
    kept = net.kept_paths(0.5)
    assert kept == sum(int((p >= 0.5).sum()) for p in probs)
    x = torch.randn(256, 3, dtype=torch.float64)
    with torch.no_grad(), actor.pruned():
        pruned_mean, _ = actor(x)
        moved = x.clone()
        moved[:, 2] += 5.0  # theta_dot no longer matters
        assert torch.allclose(actor(moved)[0], pruned_mean)
        with actor.masked("full"):
            assert not torch.allclose(actor(moved)[0], actor(x)[0])
    exprs = net.sympy_outputs([__import__("sympy").Symbol(n) for n in NAMES], 0.5)
    assert "theta_dot" not in str(exprs[0])


def test_exported_formula_matches_the_pruned_network():
    agent = espl_agent(seed=3)
    actor = agent.actor.double()
    rng = np.random.default_rng(1)
    actor.net.set_probs_([torch.tensor(rng.uniform(0, 1, p.shape)) for p in actor.net.probs])
    x = rng.normal(0, 1.5, (2000, 3))
    with torch.no_grad(), actor.pruned():
        mean, _ = actor(torch.tensor(x))
    network = (2.0 * torch.tanh(mean)).numpy()

    exact = export_policy(agent, NAMES, ["torque"], tolerance=0)
    np.testing.assert_allclose(FormulaPolicy(exact).predict(x), network, atol=1e-9)

    compact = export_policy(agent, NAMES, ["torque"], observations=x[:1000], tolerance=0.01)
    got = FormulaPolicy(compact).predict(x)
    assert np.abs(got - network)[:1000].max() <= 0.01 * 2.0 + 1e-9  # where it was checked
    assert np.abs(got - network)[1000:].max() <= 0.05 * 2.0  # and on fresh inputs
    ops_exact, consts_exact = exact.size()
    ops, consts = compact.size()
    assert ops + consts < ops_exact + consts_exact
    assert compact.metrics["kept_paths"] == actor.net.kept_paths(0.5)


class LinearBandit(gym.Env):
    """One-step episodes: observe x ~ U(-1, 1), reward -(a + 0.5 x)^2; best policy a = -0.5 x."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,))
    action_space = gym.spaces.Box(-1.0, 1.0, (1,))

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1, 1)
        return self.x.copy(), {}

    def step(self, action):
        reward = -float((action[0] + 0.5 * self.x[0]) ** 2)
        return self.x.copy(), reward, True, False, {}


def test_short_training_on_a_one_dimensional_task_gives_a_good_compact_formula():
    register_espl(ESPLConfig(anneal_updates=900, l0_target=3.0), name="espl-bandit")
    cfg = SACConfig(
        policy="espl-bandit", hidden_sizes=(64, 64), batch_size=128, learning_starts=200,
        learning_rate=1e-3, init_alpha=0.05,  # rewards are O(1): start with little entropy bonus
    )
    agent = SAC(1, [-1.0], [1.0], cfg, seed=0)
    agent.learn(1200, LinearBandit())
    xs = np.linspace(-1, 1, 201)[:, None]
    policy = FormulaPolicy(export_policy(agent, ["x"], ["a"], observations=xs))
    error = np.abs(policy.predict(xs)[:, 0] + 0.5 * xs[:, 0])
    print(policy.policy.pretty(), error.mean())
    assert error.mean() < 0.06, policy.policy.pretty()  # random actions: about 0.5
    ops, consts = policy.policy.size()
    assert ops <= 8 and consts <= 4, policy.policy.pretty()


def test_policy_json_round_trips_through_the_whitelisted_parser(tmp_path):
    agent = espl_agent(seed=5)
    rng = np.random.default_rng(2)
    net = agent.actor.net
    net.set_probs_([torch.tensor(rng.uniform(0, 1, p.shape)) for p in net.probs])
    policy = export_policy(agent, NAMES, ["torque"])
    path = tmp_path / "policy.json"
    policy.save(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "sym-mbrl/policy-v1"
    assert doc["observation_names"] == NAMES and doc["action_names"] == ["torque"]
    loaded = FormulaPolicy.load(path)
    assert loaded.expressions == policy.expressions
    x = rng.normal(0, 2, (100, 3))
    np.testing.assert_array_equal(loaded.predict(x), FormulaPolicy(policy).predict(x))

    # one observation in, one action out; actions clipped to the bounds
    doc["expressions"] = ["100*theta_dot"]
    clipped = FormulaPolicy.from_dict(doc)
    assert clipped.predict(np.array([0.0, 1.0, 3.0])).tolist() == [2.0]
    assert clipped.predict(np.array([[0.0, 1.0, -3.0], [1.0, 0.0, 0.001]]))[:, 0].tolist() == [
        -2.0, pytest.approx(0.1),
    ]
    assert clipped.predict(np.array([[0.0, 1.0, 1.0]]), deterministic=True).shape == (1, 1)

    for bad in ["__import__('os').system('true')", "theta_dot.real", "omega * 2", "sin(x"]:
        doc["expressions"] = [bad]
        path.write_text(json.dumps(doc))
        with pytest.raises(UserError):
            FormulaPolicy.load(path)
    path.write_text(json.dumps({**doc, "format": "something-else"}))
    with pytest.raises(UserError, match="not a symbolic policy"):
        FormulaPolicy.load(path)
    with pytest.raises(UserError, match="observation has shape"):
        loaded.predict(np.zeros(2))


def test_espl_agent_save_and_load_keeps_the_formula(tmp_path):
    agent = espl_agent(seed=7)
    rng = np.random.default_rng(3)
    net = agent.actor.net
    net.set_probs_([torch.tensor(rng.uniform(0, 0.6, p.shape)) for p in net.probs])
    buf = random_buffer()
    for _ in range(5):
        agent.update(buf.sample(32))
    agent.save(tmp_path / "policy.pt")
    loaded = SAC.load(tmp_path / "policy.pt")
    assert isinstance(loaded.actor, ESPLActor)
    assert int(loaded.actor.num_updates) == 5
    a = export_policy(agent, NAMES, ["torque"], tolerance=0).expressions
    b = export_policy(loaded, NAMES, ["torque"], tolerance=0).expressions
    assert a == b


def test_export_and_evaluate_runs_the_formula_and_reports_both_returns(tmp_path):
    from sym_mbrl_ros.agents.espl import export_and_evaluate, observation_names
    from sym_mbrl_ros.envs import get_task

    task = get_task("pendulum")
    assert observation_names(task) == NAMES
    agent = espl_agent(seed=11)
    rng = np.random.default_rng(4)
    net = agent.actor.net
    net.set_probs_([torch.tensor(rng.uniform(0, 0.8, p.shape)) for p in net.probs])
    result = export_and_evaluate(agent, task, episodes=2, seed=123, out=tmp_path)
    # the formula is the pruned network up to 1% of the torque range, so the returns agree
    assert result["formula"]["mean"] == pytest.approx(result["network"]["mean"], rel=0.05)
    doc = json.loads((tmp_path / "policy.json").read_text())
    assert doc["metrics"]["formula_return"]["mean"] == result["formula"]["mean"]
    assert doc["metrics"]["network_return"]["returns"] == result["network"]["returns"]
    assert doc["observation_names"] == NAMES


def test_schedules_hold_during_the_warm_up_then_anneal():
    cfg = ESPLConfig(anneal_updates=1000, warmup_fraction=0.2, l0_target=4.0)
    actor = espl_agent(cfg).actor
    n = actor.net.n_paths
    seen = {}
    for updates in (0, 200, 600, 1000, 5000):
        actor.num_updates.fill_(updates)
        seen[updates] = (actor.temperature(), actor.l0_budget())
    assert seen[0] == seen[200] == (cfg.temperature_start, n)  # warm-up: nothing anneals
    assert cfg.temperature_end < seen[600][0] < cfg.temperature_start
    assert 4.0 < seen[600][1] < n
    assert seen[1000] == seen[5000] == pytest.approx((cfg.temperature_end, 4.0))


def test_training_is_reproducible_from_the_agent_seed_alone():
    def train() -> list[torch.Tensor]:
        torch.rand(7)  # whatever the global random state is, the masks do not depend on it
        agent = espl_agent(seed=3, batch_size=64)
        buf = random_buffer()
        for _ in range(5):
            agent.update(buf.sample(64))
        return [p.detach().clone() for p in agent.actor.parameters()]

    first = train()
    torch.manual_seed(12345)
    assert all(torch.equal(a, b) for a, b in zip(first, train()))


def test_espl_with_policy_inputs_exports_formulas_over_those_inputs_that_read_full_observations(
    tmp_path,
):
    from sym_mbrl_ros.agents.sac import SelectInputs

    register_espl(ESPLConfig(), name="espl-test")
    names = ["x", "y", "v", "dx_body", "dy_body"]
    agent = SAC(5, [-1.0], [1.0], SACConfig(policy="espl-test", hidden_sizes=(32, 32),
                                             observation_indices=(2, 3, 4)), seed=2)
    assert isinstance(agent.actor, SelectInputs) and agent.actor.inner.net.n_inputs == 3
    rng = np.random.default_rng(5)
    net = agent.actor.inner.net
    net.set_probs_([torch.tensor(rng.uniform(0, 1, p.shape)) for p in net.probs])
    x = rng.normal(0, 1, (200, 5))
    policy = export_policy(agent, names, ["drive"], observations=x, tolerance=0)
    assert policy.observation_names == ["v", "dx_body", "dy_body"]
    assert policy.input_indices == [2, 3, 4] and policy.observation_size == 5
    import sympy

    used = set().union(*(sympy.sympify(e).free_symbols for e in policy.expressions))
    assert {str(v) for v in used} <= {"v", "dx_body", "dy_body"}
    formula = FormulaPolicy(policy)
    with agent.actor.inner.pruned():
        network = agent.predict(x, deterministic=True)
    np.testing.assert_allclose(formula.predict(x), network, atol=1e-5)
    # the entries the formula does not read change nothing; the file round-trips
    moved = x.copy()
    moved[:, :2] += 50.0
    np.testing.assert_array_equal(formula.predict(moved), formula.predict(x))
    policy.save(tmp_path / "policy.json")
    loaded = FormulaPolicy.load(tmp_path / "policy.json")
    assert loaded.input_size == 5
    np.testing.assert_array_equal(loaded.predict(x), formula.predict(x))
    with pytest.raises(UserError, match="at \\[2, 3, 4\\] of an observation of 5"):
        loaded.predict(x[:, 2:])
    doc = json.loads((tmp_path / "policy.json").read_text())
    doc["input_indices"] = [2, 3, 9]
    with pytest.raises(UserError, match="input_indices"):
        FormulaPolicy.from_dict(doc)
