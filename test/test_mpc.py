"""Planning and MPC: the exact pendulum model, CEM, warm starts, the gradient planner, sym-mpc."""

import json
import math
import threading

import numpy as np
import pytest
import torch

from sym_mbrl_ros.agents.cem import CEMConfig, CEMPlanner
from sym_mbrl_ros.agents.mpc import (
    MPCConfig,
    MPCController,
    SymMPC,
    evaluate_controller,
    make_planner,
)
from sym_mbrl_ros.agents.planning import (
    FusedSymbolicModel,
    GradientPlanner,
    GradientPlannerConfig,
    PendulumDynamics,
    SequenceScorer,
    planning_model,
)
from sym_mbrl_ros.dynamics.symbolic import SymbolicDynamics
from sym_mbrl_ros.envs import get_task

torch.set_num_threads(1)
PENDULUM = get_task("pendulum")


def pendulum_transitions(n: int, seed: int = 0):
    env = PENDULUM.make_env()
    rng = np.random.default_rng(seed)
    _, info = env.reset(seed=seed)
    s, a, s2 = [], [], []
    for _ in range(n):
        u = rng.uniform(-2, 2, 1)
        _, _, term, trunc, nxt = env.step(u)
        s.append(info["state"])
        a.append(u)
        s2.append(nxt["state"])
        info = nxt
        if term or trunc:
            _, info = env.reset()
    env.close()
    return np.array(s), np.array(a), np.array(s2)


def run_episode(controller, state0, steps: int) -> tuple[float, np.ndarray]:
    """Run the real pendulum from ``state0`` with ``controller(state) -> action``."""
    env = PENDULUM.make_env()
    env.reset(seed=0)
    raw = env.unwrapped
    raw.data.qpos[raw._qpos] = state0[0]
    raw.data.qvel[raw._qvel] = state0[1]
    import mujoco

    mujoco.mj_forward(raw.model, raw.data)
    state, total = np.array(state0, dtype=float), 0.0
    for _ in range(steps):
        _, r, _, _, info = env.step(controller(state))
        total += r
        state = info["state"]
    env.close()
    return total, state


def test_exact_pendulum_model_matches_the_simulator():
    s, a, s2 = pendulum_transitions(300)
    pred = PendulumDynamics().predict(s, a)
    err = np.abs(pred - s2)
    err[:, 0] = np.abs((pred[:, 0] - s2[:, 0] + np.pi) % (2 * np.pi) - np.pi)
    assert err.max() < 1e-9


def test_cem_with_the_exact_model_swings_up_and_balances():
    cfg = CEMConfig(population=300, iterations=3, seed=1)
    planner = CEMPlanner(PendulumDynamics(), PENDULUM, cfg)

    def act(s):
        return planner.act(s[None])[0].double().numpy()

    # hanging straight down at rest: needs several swings (|torque| <= 2 < 15 sin(theta) peak)
    total, final = run_episode(act, [math.pi, 0], 100)
    assert abs(final[0]) < 0.2 and abs(final[1]) < 1.0, final
    # staying down costs about -pi^2 per step (-987 in 100 steps); a swing-up costs far less
    assert total > -450, total

    planner.reset()
    total, final = run_episode(act, [0.2, 0.0], 40)
    assert abs(final[0]) < 0.05 and total > -3.0, (total, final)


def test_cem_warm_start_is_the_plan_shifted_by_one_step():
    cfg = CEMConfig(horizon=8, population=64, elites=8, iterations=2)
    planner = CEMPlanner(PendulumDynamics(), PENDULUM, cfg)
    states = np.array([[2.0, 0.0], [-1.0, 1.0]])
    action = planner.act(states)
    plan = planner.last_plan
    assert plan.shape == (2, 8, 1) and action.shape == (2, 1)
    assert torch.equal(action, plan[:, 0])  # execute the first action ...
    assert torch.equal(planner.mean[:, :-1], plan[:, 1:])  # ... keep the rest, shifted
    assert torch.all(planner.mean[:, -1] == 0.0)  # and append the middle of the box

    # the warm start is one of the next call's candidates, so the next plan scores at least
    # as well as the shifted plan from the state the first action leads to
    scorer = SequenceScorer(PendulumDynamics(), PENDULUM)
    next_states = PendulumDynamics().predict_torch(torch.tensor(states), action.double())
    warm = scorer(next_states, planner.mean.double()[:, None])[:, 0]
    planner.plan(next_states)
    assert torch.all(planner.last_returns.double() >= warm - 1e-4)

    planner.reset()
    assert planner.mean is None


def test_scorer_steps_the_model_once_per_time_step_for_the_whole_population():
    calls = []
    model = PendulumDynamics()

    def counting(s, a):
        calls.append(s.shape[0])
        return model.predict_torch(s, a)

    scorer = SequenceScorer(counting, PENDULUM)
    actions = torch.zeros(3, 200, 7, 1, dtype=torch.float64)
    returns = scorer(torch.zeros(3, 2, dtype=torch.float64), actions)
    assert returns.shape == (3, 200)
    assert calls == [600] * 7  # one batched call per step: 3 states x 200 sequences
    # upright at rest with zero torque stays there: reward 0 at every step
    assert torch.allclose(returns, torch.zeros_like(returns), atol=1e-12)


def test_scorer_stops_counting_after_a_terminal_step_and_skips_tasks_that_never_end():
    cartpole = get_task("cartpole")
    assert cartpole.terminates and not PENDULUM.terminates

    def drift(s, a):  # the cart moves 1 m per step along the rail, nothing else changes
        nxt = s.clone()
        nxt[:, 0] = s[:, 0] + 1.0
        return nxt

    start = torch.zeros(1, cartpole.state_dim, dtype=torch.float64)
    actions = torch.zeros(1, 1, 6, cartpole.action_dim, dtype=torch.float64)
    states = [start + torch.tensor([[float(k), 0.0, 0.0, 0.0]], dtype=torch.float64)
              for k in range(7)]
    steps = [float(cartpole.reward(states[k], actions[0, :, k], states[k + 1])[0])
             for k in range(6)]
    ended = [bool(cartpole.terminated(states[k], actions[0, :, k], states[k + 1])[0])
             for k in range(6)]
    first = ended.index(True)  # the step that leaves the rail still counts, later ones not
    expected = sum(steps[: first + 1])
    got = float(SequenceScorer(drift, cartpole)(start, actions)[0, 0])
    assert math.isclose(got, expected, rel_tol=1e-12), (got, expected, ended)

    # a task that never terminates scores the same whether terminated() is asked or not
    scorer = SequenceScorer(PendulumDynamics().predict_torch, PENDULUM)
    gen = torch.Generator().manual_seed(0)
    s0 = torch.rand(2, 2, dtype=torch.float64, generator=gen) * 6 - 3
    acts = torch.rand(2, 50, 10, 1, dtype=torch.float64, generator=gen) * 4 - 2
    skipped = scorer(s0, acts)
    scorer._terminates = True
    # same arithmetic up to the multiplications by an all-ones mask
    assert torch.allclose(skipped, scorer(s0, acts), rtol=1e-12, atol=1e-9)


def test_gradient_planner_improves_on_its_initial_plan():
    cfg = GradientPlannerConfig(horizon=15, restarts=4, iterations=25, learning_rate=0.1, seed=0)
    planner = GradientPlanner(PendulumDynamics(), PENDULUM, cfg)
    states = torch.tensor([[2.5, 0.0], [-0.6, 1.0]], dtype=torch.float64)
    plan = planner.plan(states)
    assert plan.shape == (2, 15, 1)
    assert torch.all(plan.abs() <= 2.0)
    assert torch.all(planner.last_returns > planner.initial_returns + 1.0)
    rescored = SequenceScorer(PendulumDynamics(), PENDULUM)(states, plan[:, None])[:, 0]
    torch.testing.assert_close(rescored, planner.last_returns)
    # warm start: after act, the plan shifted by one step seeds the next call
    planner.act(states)
    torch.testing.assert_close(planner.plan_[:, :-1], planner.last_plan[:, 1:])


def test_fused_model_equals_predict_torch():
    s, a, s2 = pendulum_transitions(300)
    # the fused compiler takes next-value trees: a discrete-time model
    model = SymbolicDynamics.for_task(PENDULUM, time="discrete").fit(s, a, s2)
    fused = FusedSymbolicModel(model)
    st = torch.tensor(np.random.default_rng(1).uniform([-3, -8], [3, 8], (500, 2)))
    at = torch.tensor(np.random.default_rng(2).uniform(-2, 2, (500, 1)))
    torch.testing.assert_close(fused.predict_torch(st, at), model.predict_torch(st, at))
    assert fused.n_calls < sum(len(c.program) for c in model._compiled) / 2

    # division, powers, nested calls, negation, a static coordinate and an angle
    doc = {
        "format": "sym-mbrl/dynamics-v1",
        "state_names": ["x", "q", "target"],
        "action_names": ["u"],
        "angle_coords": [1],
        "static_coords": [2],
        "expressions": [
            "x + 0.1*sin(q)*q/(1 + x**2) - 2*u*u + sqrt(abs(x))*0.5",
            "q + exp(-0.5*x**3/(2 + cos(u))) - tanh(q - target) + 3",
            "target",
        ],
    }
    odd = SymbolicDynamics.from_dict(doc)
    fused = FusedSymbolicModel(odd)
    st = torch.tensor(np.random.default_rng(3).uniform(-2, 2, (64, 3)))
    at = torch.tensor(np.random.default_rng(4).uniform(-1, 1, (64, 1)))
    torch.testing.assert_close(fused.predict_torch(st, at), odd.predict_torch(st, at))


def test_fused_model_compiles_continuous_time_models():
    # the default fit is continuous: planning used to fall back to the uncompiled model (its
    # trees evaluated one node at a time at each of RK4's four stages), 25 ms a plan on Pendulum
    s, a, s2 = pendulum_transitions(300)
    model = SymbolicDynamics.for_task(PENDULUM).fit(s, a, s2)
    assert model.is_continuous
    fused = planning_model(model)
    assert isinstance(fused, FusedSymbolicModel) and fused.continuous
    st = torch.tensor(np.random.default_rng(1).uniform([-3, -8], [3, 8], (500, 2)))
    at = torch.tensor(np.random.default_rng(2).uniform(-2, 2, (500, 1)))
    torch.testing.assert_close(fused.predict_torch(st, at), model.predict_torch(st, at))

    # several substeps, Euler, an angle, a static coordinate, an action of another dtype
    doc = {
        "format": "sym-mbrl/dynamics-v2",
        "state_names": ["x", "q", "target"],
        "action_names": ["u"],
        "angle_coords": [1],
        "static_coords": [2],
        "derivatives": ["q - 0.5*x*abs(x) + u", "-3*sin(q)/(1 + x**2) + tanh(target - q)", "0"],
        "integrator": {"method": "rk4", "substeps": 3},
        "dt": 0.1,
    }
    for method in ("rk4", "euler"):
        doc["integrator"]["method"] = method
        odd = SymbolicDynamics.from_dict(doc)
        fused = FusedSymbolicModel(odd)
        st = torch.tensor(np.random.default_rng(3).uniform(-3, 3, (64, 3)))
        at = torch.tensor(np.random.default_rng(4).uniform(-1, 1, (64, 1)), dtype=torch.float32)
        expected = odd.predict_torch(st, at)
        torch.testing.assert_close(fused.predict_torch(st, at), expected)
        assert torch.all(expected[:, 1].abs() <= math.pi)  # the angle is wrapped
        torch.testing.assert_close(expected[:, 2], st[:, 2])  # the static one is kept


def test_mpc_with_a_learned_model_balances_and_the_planner_hook_works():
    s, a, s2 = pendulum_transitions(200)
    model = SymbolicDynamics.for_task(PENDULUM).fit(s, a, s2)
    act = make_planner(PENDULUM, model, cem={"horizon": 15, "population": 200, "iterations": 3})
    total, final = run_episode(act, [0.2, 0.0], 40)
    assert abs(final[0]) < 0.05 and total > -3.0, (total, final)
    out = act(np.array([0.1, 0.0]))
    assert out.shape == (1,) and -2.0 <= out[0] <= 2.0

    small = MPCConfig(cem=CEMConfig(horizon=10, population=100))
    controller = MPCController(PENDULUM, model, small)
    batch = controller.predict(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.5]]))
    assert batch.shape == (2, 1) and np.all(np.abs(batch) <= 2.0)
    with pytest.raises(Exception, match="unknown planner"):
        MPCController(PENDULUM, model, MPCConfig(planner="magic"))

    # the gradient planner is the other option, configured like the node's planner options
    config = MPCConfig.from_dict(
        {"planner": "gradient", "gradient": {"horizon": 5, "restarts": 2, "iterations": 3}}
    )
    assert config.gradient.horizon == 5 and config.cem.horizon == 30
    with pytest.raises(Exception, match="unknown CEM setting"):
        MPCConfig.from_dict({"cem": {"populaton": 10}})
    out = MPCController(PENDULUM, model, config).act(np.array([[0.3, 0.0], [2.0, 1.0]]))
    assert out.shape == (2, 1) and np.all(np.abs(out) <= 2.0)


def test_make_planner_warms_up_and_plans_single_threaded_in_the_calling_thread():
    """The controller builds the planner in a loader thread and calls it from its executor
    thread: the hook plans once at build time, forgets that plan, and each planning thread
    runs torch on ``num_threads`` threads (with two, a small matrix product on a busy
    machine waits milliseconds for the second core)."""
    s, a, s2 = pendulum_transitions(200)
    model = SymbolicDynamics.for_task(PENDULUM, time="discrete").fit(s, a, s2)  # fused
    built: dict = {}
    loader = threading.Thread(
        target=lambda: built.update(act=make_planner(PENDULUM, model, cem={"population": 100}))
    )
    loader.start()
    loader.join()
    act = built["act"]
    controller = act.__self__
    assert controller.config.cem.horizon == 30 and controller.config.num_threads == 1
    assert controller.planner.mean is None  # the warm-up plan is not a warm start
    assert len(controller.plan_seconds) == 0  # nor counted as a control step
    fused = controller.planner.scorer.dynamics.__self__
    assert isinstance(fused, FusedSymbolicModel)  # compiled for planning ...
    assert (torch.float32, torch.device("cpu")) in fused._cache  # ... and already run once

    result: dict = {}

    def executor():
        torch.set_num_threads(2)  # a thread whose torch would run small ops on two threads
        states = np.random.default_rng(0).uniform([-np.pi, -8.0], [np.pi, 8.0], (5, 2))
        result["actions"] = np.array([act(x) for x in states])
        result["threads"] = torch.get_num_threads()

    try:
        worker = threading.Thread(target=executor)
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(1)
    actions = result["actions"]
    assert actions.shape == (5, 1) and np.all(np.isfinite(actions))
    assert np.all(actions >= -2.0) and np.all(actions <= 2.0)
    assert result["threads"] == 1
    assert len(controller.plan_seconds) == 5
    assert controller.planner.mean.shape == (1, 30, 1)  # warm start kept between calls

    # None leaves torch's thread setting alone
    keep = MPCController(PENDULUM, model, MPCConfig.from_dict(
        {"num_threads": None, "cem": {"horizon": 5, "population": 20, "elites": 5}}))
    torch.set_num_threads(2)
    try:
        keep.act(np.array([0.5, 0.0]))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_sym_mpc_learns_online_and_writes_a_curve(tmp_path):
    cfg = MPCConfig(
        init_random_steps=150, refit_every=50,
        cem=CEMConfig(horizon=15, population=100, elites=10, iterations=2),
    )
    learner = SymMPC(PENDULUM, cfg, seed=0)
    learner.learn(220)
    assert learner.num_model_fits == 2  # at 150 and at 200 (warm-started)
    assert len(learner.states) == 220
    r2 = learner.model_metrics["r2"]
    assert min(r2.values()) > 0.99
    assert "r2_holdout" in learner.model_metrics

    learner.save(tmp_path)
    data = np.load(tmp_path / "transitions.npz")
    assert data["states"].shape == (220, 2) and data["actions"].shape == (220, 1)
    again = SymbolicDynamics.load(tmp_path / "model.json")
    assert again.equations() == learner.model.equations()
    meta = json.loads((tmp_path / "mpc.json").read_text())
    assert meta["config"]["cem"]["population"] == 100
    # the learned model plans far better than random actions (about -1100 on these episodes)
    assert evaluate_controller(PENDULUM, learner, episodes=2).mean > -600
