"""Noise: the simulation-error refinement, bagged members and their use in model rollouts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import sympy
import torch

from sym_mbrl_ros.agents.model_env import ModelEnv
from sym_mbrl_ros.data.transitions import load_transitions
from sym_mbrl_ros.dynamics import SymbolicDynamics, wrap_angle
from sym_mbrl_ros.dynamics.continuous import rate_coordinates
from sym_mbrl_ros.dynamics.segments import block_bootstrap, find_segments, make_windows
from sym_mbrl_ros.envs import get_task
from sym_mbrl_ros.errors import UserError


def duffing(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.stack([x[:, 1], -0.3 * x[:, 1] - x[:, 0] - 0.5 * x[:, 0] ** 3 + u[:, 0]], axis=1)


def pendulum(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.stack([x[:, 1], 15.0 * np.sin(x[:, 0]) + 3.0 * u[:, 0]], axis=1)


def trajectories(rhs, n: int, seed: int, box: float, u_max: float, dt: float = 0.05,
                 episode: int = 50):
    """Random-action episodes of an ODE (RK4, 5 substeps): rows in order, episode ids."""
    rng = np.random.default_rng(seed)
    s, a, s2, ep = [], [], [], []
    h = dt / 5
    for k in range(n // episode):
        x = rng.uniform(-box, box, size=(1, 2))
        for _ in range(episode):
            u = rng.uniform(-u_max, u_max, size=(1, 1))
            y = x.copy()
            for _ in range(5):
                k1 = rhs(y, u)
                k2 = rhs(y + 0.5 * h * k1, u)
                k3 = rhs(y + 0.5 * h * k2, u)
                k4 = rhs(y + h * k3, u)
                y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            s.append(x[0]), a.append(u[0]), s2.append(y[0]), ep.append(k)
            x = y
    return np.array(s), np.array(a), np.array(s2), np.array(ep)


def add_noise(s, s2, ep, level: float, seed: int):
    """Measurement noise on the trajectory points (sigma = level * std of each coordinate),
    one draw per time point: row t's next state is row t + 1's state, as a sensor gives them."""
    rng = np.random.default_rng(seed)
    sigma = level * np.std(np.vstack([s, s2]), axis=0)
    s, s2 = s.copy(), s2.copy()
    for k in np.unique(ep):
        rows = np.flatnonzero(ep == k)
        e = rng.normal(size=(len(rows) + 1, s.shape[1])) * sigma
        s[rows] += e[:-1]
        s2[rows] += e[1:]
    return s, s2


def one_percent_noise_fit(rhs, states, actions, seeds, box, u_max, dt=0.05, test_box=None):
    """A continuous-time model fitted on 500 transitions with 1 % measurement noise, and its
    lowest R² on 1,000 clean transitions (``seeds``: training, noise, test)."""
    train, noise, test = seeds
    s, a, s2, ep = trajectories(rhs, 500, train, box, u_max, dt=dt)
    ns, ns2 = add_noise(s, s2, ep, 0.01, noise)
    model = SymbolicDynamics(states, actions, dt=dt, time="continuous").fit(ns, a, ns2)
    ts, ta, ts2, _ = trajectories(rhs, 1000, test, test_box or box, u_max, dt=dt)
    return model, min(model.score(ts, ta, ts2).values())


def test_segments_follow_the_trajectory_and_break_at_episodes():
    s, a, s2, ep = trajectories(duffing, 200, 0, 2.0, 2.0)
    assert [len(x) for x in find_segments(s, s2)] == [50] * 4
    ep2 = ep.copy()
    ep2[120:] = 9  # a new episode id mid-way cuts the segment there
    assert [len(x) for x in find_segments(s, s2, ep2)] == [50, 50, 20, 30, 50]
    keep = np.ones(200, dtype=bool)
    keep[10] = False  # a dropped row breaks the chain
    assert [len(x) for x in find_segments(s[keep], s2[keep])] == [10, 39, 50, 50, 50]
    w = make_windows(find_segments(s, s2), s, a, s2, horizon=8)
    assert len(w) == 200 and w.mask[0].all() and w.mask[49].sum() == 1
    np.testing.assert_array_equal(w.targets[3, 7], s2[10])
    boot = block_bootstrap(find_segments(s, s2), 20, np.random.default_rng(0))
    assert sum(len(b) for b in boot) >= 200 and all(len(b) <= 20 for b in boot)


def test_trajectory_fit_beats_the_one_step_fit_on_noisy_duffing():
    s, a, s2, ep = trajectories(duffing, 500, 1, 2.0, 2.0)
    ns, ns2 = add_noise(s, s2, ep, 0.05, 2)
    ts, ta, ts2, _ = trajectories(duffing, 1000, 3, 2.0, 2.0)
    r2 = {}
    models = {}
    for h in (0, 8):
        model = SymbolicDynamics(["x", "v"], ["force"], dt=0.05, time="continuous",
                                 multistep_horizon=h)
        model.fit(ns, a, ns2)
        r2[h] = min(model.score(ts, ta, ts2).values())
        models[h] = model
    # One-step: the increments are mostly noise at 5 % (validation R² ~0.55), the damping
    # term's gain is inside one standard error and is dropped (R² ~0.97 on clean data).
    # Rolled 8 steps, damping accumulates and the noise does not: the law is recovered.
    assert r2[0] < 0.99, r2
    assert r2[8] > 0.999, r2
    assert r2[8] > r2[0]
    assert "trajectory_selection" in models[8].metrics
    law = models[8].laws(3)[-1]
    assert "v" in law.split("=")[1] and "x**3" in law, law


def bagged_pendulum(level: float = 0.02, members: int = 5) -> tuple[SymbolicDynamics, tuple]:
    s, a, s2, ep = trajectories(pendulum, 400, 4, 1.0, 1.0)
    ns, ns2 = add_noise(s, s2, ep, level, 5)
    model = SymbolicDynamics(["theta", "theta_dot"], ["torque"], angle_coords=[0], dt=0.05,
                             time="continuous", bagging_members=members)
    return model.fit(ns, a, ns2, episodes=ep), (ns, a, ns2)


@pytest.fixture(scope="module")
def bagged():
    return bagged_pendulum()


def test_bagged_members_disagree_more_off_the_data_than_on_it(bagged):
    model, (s, a, _s2) = bagged
    assert model.n_members == 5
    on = model.disagreement(s, a)
    far = s.copy()
    far[:, 1] = far[:, 1] * 4.0 + np.sign(far[:, 1]) * 10.0  # theta_dot far beyond the data
    off = model.disagreement(far, a * 4.0)
    assert np.all(np.isfinite(on)) and np.median(on) > 0
    # constants that are uncertain by a little move predictions in proportion to the inputs
    assert np.median(off) > 3 * np.median(on), (np.median(on), np.median(off))
    pred, std = model.predict(s[:7], a[:7], return_std=True)
    np.testing.assert_allclose(pred, model.predict(s[:7], a[:7]), rtol=0, atol=0)
    ts, ta = torch.as_tensor(s[:7]), torch.as_tensor(a[:7])
    pred_t, std_t = model.predict_torch(ts, ta, return_std=True)
    # the same arithmetic in float64 in both libraries: agreement to round-off
    np.testing.assert_allclose(std_t.numpy(), std, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pred_t.numpy(), pred, rtol=1e-9, atol=1e-12)
    assert model.predict_members(s[:7], a[:7]).shape == (5, 7, 2)


def test_members_survive_a_save_load_round_trip(bagged, tmp_path):
    model, (s, a, _s2) = bagged
    loaded = SymbolicDynamics.load(model.save(tmp_path / "m.json"))
    assert loaded.n_members == model.n_members
    # expressions are written at full precision: predictions agree to round-off
    np.testing.assert_allclose(loaded.predict_members(s[:20], a[:20]),
                               model.predict_members(s[:20], a[:20]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(loaded.disagreement(s[:20], a[:20]),
                               model.disagreement(s[:20], a[:20]), rtol=1e-9, atol=1e-12)
    doc = json.loads((tmp_path / "m.json").read_text())
    doc["members"]["expressions"][0] = ["theta_dot"]
    with pytest.raises(UserError, match="member 0 needs one expression per state coordinate"):
        SymbolicDynamics.from_dict(doc)


def test_files_without_members_still_load():
    v1 = {"format": "sym-mbrl/dynamics-v1", "state_names": ["x", "v"],
          "action_names": ["u"], "expressions": ["x + 0.1*v", "v + 0.1*u"]}
    v2 = {"format": "sym-mbrl/dynamics-v2", "state_names": ["x", "v"], "action_names": ["u"],
          "derivatives": ["v", "u"], "integrator": {"method": "rk4", "substeps": 1},
          "dt": 0.1}
    for doc in (v1, v2):
        model = SymbolicDynamics.from_dict(doc)
        assert model.n_members == 0
        # v' = u: one step of 0.1 from v = 0 with u = 1 gives v = 0.1 either way (exact)
        np.testing.assert_allclose(model.predict([0.0, 0.0], [1.0])[1], 0.1, rtol=1e-12)
        with pytest.raises(UserError, match="no ensemble members"):
            model.uncertainty([0.0, 0.0], [1.0])
        assert "members" not in model.to_dict()


def test_model_env_cuts_rollouts_where_the_members_disagree(bagged):
    model, (s, _a, _s2) = bagged
    task = get_task("pendulum")
    near = torch.as_tensor(s[:20])
    far = near.clone()
    far[:, 1] = 40.0  # far beyond the data's speeds...
    start = torch.cat([near, far])
    # ...and the task's largest torque, twice the data's (|u| <= 1): the members' torque gains
    # differ a little, and their predictions drift apart in proportion (theta' = theta_dot is
    # exact in every member, so speed alone does not separate them)
    actions = torch.cat([torch.zeros(20, 1),
                         torch.full((20, 1), float(task.action_high[0]))]).double()

    def policy(obs):
        return actions[: len(obs)]

    free = ModelEnv(task, model).rollout(policy, start, 1)
    assert free.observations.shape[0] == 40
    d_near = float(model.disagreement_torch(near, actions[:20]).max())
    d_far = float(model.disagreement_torch(far, actions[20:]).min())
    assert d_far > d_near
    env = ModelEnv(task, model, max_disagreement=0.5 * (d_near + d_far))
    cut = env.rollout(policy, start, 1)
    assert cut.observations.shape[0] == 20 and env.n_uncertain == 20
    np.testing.assert_allclose(cut.observations.numpy(), free.observations[:20].numpy())
    with pytest.raises(UserError, match="ensemble members"):
        ModelEnv(task, SymbolicDynamics.from_dict(model.to_dict() | {"members": None}),
                 max_disagreement=1.0)


def damped_pendulum(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.stack([x[:, 1], -9.81 * np.sin(x[:, 0]) - 0.2 * x[:, 1] + u[:, 0]], axis=1)


def test_an_undeclared_angle_gets_its_sin_through_one_percent_noise():
    # 50 Hz, 1 % measurement noise: a quarter of the variance of theta''s one-step targets is
    # noise, so no family lowered the whole-library error tenfold and the old search printed
    # the Taylor series (-8.2*theta + 0.8*theta**3 ..., R² 0.89 on clean data)
    model, r2 = one_percent_noise_fit(damped_pendulum, ["theta", "omega"], ["torque"],
                                      (6, 7, 8), 2.5, 3.0, dt=0.02, test_box=3.0)
    law = model.laws(3)[-1]
    assert "sin(theta" in law and "theta**3" not in law, law
    # the report says why a library no gate admitted was searched
    assert "trig(theta)" in model.report()[1]["search"], model.report()[1]["search"]
    # the law with constants fitted through noise: 1 - R² near 1e-5 on clean data (the old
    # search: 0.11); 0.999 is the 1 % target
    assert r2 >= 0.999


def test_the_trajectory_selection_keeps_the_one_step_pick_against_a_longer_law_within_noise():
    # 1 % noise on Duffing: the k-step validation error of a 19-term x_dot (the best member of
    # x_dot's one-step front) was one paired standard error below that of x_dot = v, and the old
    # rule (one standard error) traded the identity for it (R² of x 0.99915 on clean data); a
    # longer law now needs two standard errors (multistep.SWITCH_SE) to replace the pick
    model, r2 = one_percent_noise_fit(duffing, ["x", "v"], ["force"], (11, 21, 31), 2.0, 2.0)
    assert model.laws(4)[0] == "x_dot = v", model.laws(4)
    assert model.metrics["trajectory_selection"]["x"]["source"] == "one-step pick"
    # the exact identity, and Duffing's law with constants fitted through 1 % noise: 1 - R²
    # ~1e-5 on clean data (the old pick: 8e-4 on x)
    assert r2 >= 0.9999


def pole_on_cart(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Its inverse mass is rational in cos(theta)**2 (the denominator 1 - 0.6*cos**2)."""
    th, f = x[:, 0], u[:, 0]
    acc = (9.0 * np.sin(th) - 2.0 * f * np.cos(th)) / (1.0 - 0.6 * np.cos(th) ** 2)
    return np.stack([x[:, 1], acc], axis=1)


def test_a_rational_law_keeps_its_denominator_through_one_percent_noise():
    # the denominator's tenfold gate fails inside the noise as the trig gate does: the old
    # search printed polynomials in sin/cos (R² 0.96-0.98 on clean data, three seeds)
    model, r2 = one_percent_noise_fit(pole_on_cart, ["theta", "omega"], ["force"],
                                      (41, 51, 61), 1.5, 2.0, dt=0.02)
    law = model.laws(3)[-1]
    # (-15*sin(theta) + 3.33*force*cos(theta))/(cos(theta)**2 - 1.67), constants through noise
    assert "/(cos(theta)**2 - 1." in law and law.count("*") <= 6, law
    # 1 - R² ~1e-4 on clean data with these seeds (the denominator's constant carries most of
    # the noise's bias); the bar at 1 % noise is 0.999
    assert r2 >= 0.999


FAKE_ROBOT = Path(__file__).parent / "data" / "fake_robot_pendulum.npz"
TRIG_OF_VELOCITY = re.compile(r"(sin|cos|tan|tanh)\([^()]*theta_dot")


def test_a_velocity_never_goes_inside_a_sine_on_a_fake_robots_recording():
    # the first 180 transitions that `sym-mbrl up pendulum --hardware` recorded from
    # `sym-mbrl fake-hardware pendulum` (bench/hardware.py, mass x1.2, joint friction the
    # simulator lacks, 4096-count encoder, 0.08 rad/s velocity noise; seed 103): the learner's
    # first model printed (27.7*torque + 166*sin(theta) - ...)/(cos(theta_dot)**2 + 10.7)
    data = load_transitions(FAKE_ROBOT)
    names = list(data.state_names)
    Z = (data.next_states - data.states) / data.dt
    Z[:, 0] = wrap_angle(Z[:, 0] * data.dt) / data.dt
    X = np.hstack([0.5 * (data.states + data.next_states), data.actions])
    assert rate_coordinates(names, Z, X, [0, 1]) == ("theta_dot",)
    model = SymbolicDynamics.for_task(get_task("pendulum"), seed=103).fit(
        data.states, data.actions, data.next_states)
    laws = model.to_dict()["derivatives"]
    assert not any(TRIG_OF_VELOCITY.search(law) for law in laws), laws
    # the robot's law is 15*sin(theta) + torque/1.2*3 (2.5) minus friction: 180 noisy rows and
    # the unmodelled Coulomb friction leave a few per cent on each constant
    terms = dict((str(t), float(c)) for c, t in
                 (term.as_coeff_Mul() for term in sympy.sympify(laws[1]).as_ordered_terms()))
    assert abs(terms["sin(theta)"] - 15.0) < 0.5, laws[1]
    assert abs(terms["torque"] - 2.5) < 0.25, laws[1]


def test_rates_are_found_on_exact_and_noisy_data_and_only_where_a_coordinate_is_one():
    s, a, s2, ep = trajectories(duffing, 400, 3, 2.0, 2.0)
    for level in (0.0, 0.01):
        ns, ns2 = add_noise(s, s2, ep, level, 4) if level else (s, s2)
        Z = (ns2 - ns) / 0.05
        X = np.hstack([0.5 * (ns + ns2), a])
        assert rate_coordinates(["x", "v"], Z, X, [0, 1]) == ("v",)
    # Lorenz-like coupling: x' = 10*(y - x) is not y, so nothing is a rate
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    Z = np.stack([10 * (X[:, 1] - X[:, 0]), X[:, 0] * (28 - X[:, 2]) - X[:, 1],
                  X[:, 0] * X[:, 1] - 2.7 * X[:, 2]], axis=1)
    assert rate_coordinates(["x", "y", "z"], Z, X, [0, 1, 2]) == ()
