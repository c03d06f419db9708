"""Continuous-time world models: the law recovered from MuJoCo data, the integrators, per-sample
dt, model files v1/v2, and refits that shrink a bloated model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sym_mbrl_ros.commands.collect import collect_random
from sym_mbrl_ros.dynamics import SymbolicDynamics, wrap_angle
from sym_mbrl_ros.dynamics.expression import Name, count_terms, parse_expression
from sym_mbrl_ros.dynamics.integrate import Integrator, euler, rk4
from sym_mbrl_ros.envs import get_task
from sym_mbrl_ros.errors import UserError

torch.set_num_threads(1)

NAMES = (["theta", "theta_dot"], ["torque"])


def pendulum_law(x, u):
    """theta'' = 15 sin(theta) + 3 u (urdf/pendulum.urdf), numpy or torch."""
    sin = torch.sin if isinstance(x, torch.Tensor) else np.sin
    dtheta = x[:, 1:2]
    ddtheta = 15.0 * sin(x[:, 0:1]) + 3.0 * u[:, 0:1]
    cat = torch.cat if isinstance(x, torch.Tensor) else np.concatenate
    return cat([dtheta, ddtheta], 1)


def ode_pendulum(n: int, seed: int, dt, substeps: int = 50):
    """Pendulum transitions integrated finely (RK4, 50 substeps: error ~1e-13) over ``dt``."""
    rng = np.random.default_rng(seed)
    s = np.c_[rng.uniform(-np.pi, np.pi, n), rng.uniform(-6, 6, n)]
    a = rng.uniform(-2, 2, (n, 1))
    s2 = rk4(pendulum_law, s, a, dt, substeps)
    s2[:, 0] = wrap_angle(s2[:, 0])
    return s, a, s2


@pytest.fixture(scope="module")
def mujoco_pendulum():
    """500 random-action transitions of the MuJoCo pendulum, as `sym-mbrl collect` records."""
    data = collect_random(get_task("pendulum"), 500, seed=1)
    return data["states"], data["actions"], data["next_states"]


@pytest.fixture(scope="module")
def pendulum_law_model(mujoco_pendulum):
    s, a, s2 = mujoco_pendulum
    model = SymbolicDynamics.for_task(get_task("pendulum"))
    return model.fit(s[:400], a[:400], s2[:400])


# --- the law ---------------------------------------------------------------------------------


def test_mujoco_pendulum_law_is_recovered_with_two_terms(pendulum_law_model, mujoco_pendulum):
    model = pendulum_law_model
    assert model.is_continuous and model.dt == pytest.approx(0.05)
    theta_dot, theta_ddot = model.derivative_trees()
    assert theta_dot == Name("theta_dot")  # kinematics come out exactly
    assert count_terms(theta_ddot) <= 2
    coefs = {str(k): float(v) for k, v in model.expressions()[1].as_coefficients_dict().items()}
    # MuJoCo integrates this law by RK4 in 5 substeps, our model in fewer: the constants absorb
    # that integrator difference, ~1e-5 relative
    assert coefs["sin(theta)"] == pytest.approx(15.0, rel=1e-4)
    assert coefs["torque"] == pytest.approx(3.0, rel=1e-4)
    laws = model.laws()
    assert len(laws) == 1 and laws[0].startswith("theta_ddot = ")
    assert model.equations() == laws
    # the newest 100 transitions, never seen by the fit: R² of the increment. Our RK4 takes
    # fewer substeps than MuJoCo's, a relative error of ~1e-6 per step, far below 1e-4.
    s, a, s2 = mujoco_pendulum
    r2 = model.score(s[400:], a[400:], s2[400:])
    assert min(r2.values()) > 0.9999


def test_discrete_fit_on_the_same_data_needs_more_terms(mujoco_pendulum):
    """The reason continuous time is the default for the tasks: the one-step map needs terms."""
    s, a, s2 = mujoco_pendulum
    model = SymbolicDynamics.for_task(get_task("pendulum"), time="discrete")
    model.fit(s[:400], a[:400], s2[:400])
    from sym_mbrl_ros.dynamics.expression import increment_tree

    assert count_terms(increment_tree("theta_dot", model.trees()[1])) > 2
    assert not model.is_continuous


# --- integrators -----------------------------------------------------------------------------


def test_rk4_matches_the_exact_solution_of_a_linear_system_to_fifth_order():
    from scipy.linalg import expm

    A = np.array([[0.0, 1.0], [-4.0, -0.5]])
    x0 = np.random.default_rng(0).normal(size=(20, 2))
    u = np.zeros((20, 0))
    exact = x0 @ expm(A * 0.1).T
    err1 = np.abs(rk4(lambda x, _u: x @ A.T, x0, u, 0.1, 1) - exact).max()
    err2 = np.abs(rk4(lambda x, _u: x @ A.T, x0, u, 0.1, 2) - exact).max()
    # local error ~ (|lambda| h)^5 / 120 with |lambda| ~ 2, h = 0.1: ~3e-5 of |x| (|x| <~ 3);
    # halving the step divides it by ~2^4 over the two substeps
    assert err1 < 1e-4 and 10 < err1 / err2 < 40
    assert np.abs(euler(lambda x, _u: x @ A.T, x0, u, 0.1, 1) - exact).max() > 100 * err1


def test_rk4_numpy_and_torch_agree_with_per_sample_dt():
    rng = np.random.default_rng(1)
    x = np.c_[rng.uniform(-3, 3, 64), rng.uniform(-6, 6, 64)]
    u = rng.uniform(-2, 2, (64, 1))
    dt = rng.uniform(0.02, 0.08, 64)
    integ = Integrator("rk4", 3)
    out_np = integ.step(pendulum_law, x, u, dt)
    out_t = integ.step(pendulum_law, torch.tensor(x), torch.tensor(u), torch.tensor(dt))
    # the same arithmetic in float64 on both sides: only summation order may differ
    np.testing.assert_allclose(out_t.numpy(), out_np, rtol=1e-12, atol=1e-12)
    scalar = integ.step(pendulum_law, x, u, 0.05)
    assert np.abs(scalar - out_np).max() > 1e-3  # the per-row dt is really used


def test_model_predict_and_predict_torch_agree(pendulum_law_model, mujoco_pendulum):
    s, a, _ = mujoco_pendulum
    dt = np.random.default_rng(2).uniform(0.03, 0.07, len(s))
    for step in (None, dt):
        got = pendulum_law_model.predict_torch(
            torch.tensor(s), torch.tensor(a), None if step is None else torch.tensor(step)
        )
        # float64 on both paths; the angle wrap can move a value by 2*pi*eps
        np.testing.assert_allclose(
            got.numpy(), pendulum_law_model.predict(s, a, dt=step), rtol=1e-12, atol=1e-12
        )
    # float32 works and keeps its dtype (model rollouts run in float32)
    out32 = pendulum_law_model.predict_torch(torch.tensor(s[:5], dtype=torch.float32),
                                             torch.tensor(a[:5], dtype=torch.float32))
    assert out32.dtype == torch.float32


def test_per_sample_dt_is_fitted_and_predicted():
    rng = np.random.default_rng(3)
    dt = rng.uniform(0.03, 0.07, 500)  # a robot's stamps jitter
    s, a, s2 = ode_pendulum(500, seed=4, dt=dt)
    model = SymbolicDynamics(*NAMES, angle_coords=[0], time="continuous")
    model.fit(s[:400], a[:400], s2[:400], dt=dt[:400])
    assert model.dt == pytest.approx(np.median(dt[:400]))
    assert count_terms(model.derivative_trees()[1]) == 2
    r2 = model.score(s[400:], a[400:], s2[400:], dt=dt[400:])
    # exact data (1e-13) through an integrator of a few substeps: R² is 1 to ~1e-10
    assert min(r2.values()) > 1 - 1e-8
    # the nominal dt alone cannot predict the jittered steps
    assert model.score(s[400:], a[400:], s2[400:])["theta_dot"] < 0.99


def test_continuous_fit_needs_a_step_length_and_discrete_predicts_only_its_own():
    s, a, s2 = ode_pendulum(100, seed=5, dt=0.05)
    with pytest.raises(UserError, match="needs the step length"):
        SymbolicDynamics(*NAMES, angle_coords=[0], time="continuous").fit(s, a, s2)
    with pytest.raises(UserError, match="one number or one per transition"):
        SymbolicDynamics(*NAMES, angle_coords=[0], time="continuous").fit(
            s, a, s2, dt=np.full(7, 0.05)
        )
    discrete = SymbolicDynamics(*NAMES, angle_coords=[0], dt=0.05).fit(s, a, s2)
    discrete.predict(s, a, dt=0.05)
    with pytest.raises(UserError, match="own length"):
        discrete.predict(s, a, dt=0.1)
    with pytest.raises(UserError, match="time must be one of"):
        SymbolicDynamics(*NAMES, time="hybrid")


# --- model files -----------------------------------------------------------------------------


def test_v2_round_trip_gives_identical_predictions(tmp_path, pendulum_law_model, mujoco_pendulum):
    path = pendulum_law_model.save(tmp_path / "law.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "sym-mbrl/dynamics-v2"
    assert doc["derivatives"][0] == "theta_dot" and "expressions" not in doc
    assert doc["integrator"]["method"] == "rk4" and doc["integrator"]["substeps"] >= 1
    assert doc["dt"] == pytest.approx(0.05)
    loaded = SymbolicDynamics.load(path)
    assert loaded.is_continuous and loaded.integrator == pendulum_law_model.integrator
    s, a, _ = mujoco_pendulum
    np.testing.assert_array_equal(loaded.predict(s, a), pendulum_law_model.predict(s, a))
    assert loaded.laws() == pendulum_law_model.laws()


def test_v1_files_still_load_and_round_trip(tmp_path):
    doc = {
        "format": "sym-mbrl/dynamics-v1",
        "state_names": ["theta", "theta_dot"],
        "action_names": ["torque"],
        "expressions": ["theta + 0.05*theta_dot", "theta_dot + 0.75*sin(theta) + 0.15*torque"],
        "angle_coords": [0],
        "config": {"complexity_penalty": 0.01},  # a setting of older versions is ignored
    }
    (tmp_path / "v1.json").write_text(json.dumps(doc))
    model = SymbolicDynamics.load(tmp_path / "v1.json")
    assert not model.is_continuous
    again = SymbolicDynamics.load(model.save(tmp_path / "again.json"))
    assert json.loads((tmp_path / "again.json").read_text())["format"] == "sym-mbrl/dynamics-v1"
    s = np.array([[0.3, -1.0]])
    a = np.array([[0.5]])
    expected = [0.3 - 0.05, -1.0 + 0.75 * np.sin(0.3) + 0.075]
    np.testing.assert_allclose(again.predict(s, a)[0], expected, rtol=1e-12)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"derivatives": ["theta_dot", "__import__('os').system('true')"]}, "invalid"),
        ({"dt": None}, "needs its dt"),
        ({"dt": -0.05}, "positive"),
        ({"integrator": {"method": "magic", "substeps": 1}}, "unknown integrator"),
        ({"integrator": {"method": "rk4", "substeps": 0}}, "substeps"),
    ],
)
def test_bad_v2_files_are_refused(tmp_path, pendulum_law_model, change, message):
    doc = {**pendulum_law_model.to_dict(), **change}
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=message):
        SymbolicDynamics.load(tmp_path / "bad.json")


# --- parsimony across refits -----------------------------------------------------------------


def _bloated(model: SymbolicDynamics, derivative: str) -> SymbolicDynamics:
    doc = model.to_dict()
    doc["derivatives"][1] = derivative
    return SymbolicDynamics.from_dict(doc)


def test_a_warm_start_can_shrink_a_bloated_continuous_model(pendulum_law_model, mujoco_pendulum):
    bloated = _bloated(
        pendulum_law_model,
        "15.02*sin(theta) + 2.99*torque + 3e-04*theta_dot**3 - 2e-03*theta_dot"
        " + 1e-02*sin(theta)*cos(theta) + 4e-03*theta_dot*torque",
    )
    assert count_terms(bloated.derivative_trees()[1]) == 6
    s, a, s2 = mujoco_pendulum
    noisy = s2 + np.random.default_rng(7).normal(0.0, [1e-4, 1e-3], s2.shape)  # sensor noise
    refit = SymbolicDynamics.for_task(get_task("pendulum"), seed=1)
    refit.fit(s[100:500], a[100:500], noisy[100:500], init=bloated)
    assert count_terms(refit.derivative_trees()[1]) <= 2
    assert refit.report()[1]["search"].startswith("skipped")  # the structure came from init
    assert min(refit.score(s[:100], a[:100], s2[:100]).values()) > 0.9999


def test_a_warm_start_can_shrink_a_bloated_discrete_model():
    from sym_mbrl_ros.dynamics.expression import increment_tree

    rng = np.random.default_rng(6)
    s = np.c_[rng.uniform(-np.pi, np.pi, 400), rng.uniform(-8, 8, 400)]
    a = rng.uniform(-2, 2, (400, 1))
    w2 = s[:, 1] + 0.05 * (15 * np.sin(s[:, 0]) + 3 * a[:, 0])
    s2 = np.c_[wrap_angle(s[:, 0] + 0.05 * w2), w2]  # semi-implicit Euler: exact 3-term maps
    doc = SymbolicDynamics(*NAMES, angle_coords=[0]).fit(s, a, s2).to_dict()
    doc["expressions"][1] += " + 1e-04*theta_dot**3 + 3e-03*cos(theta)"
    bloated = SymbolicDynamics.from_dict(doc)
    # a velocity sensor's noise: refitted, the extra terms fit it and keep nonzero constants,
    # so only a rule that weighs their gain against the noise can drop them
    noisy = s2.copy()
    noisy[:, 1] += rng.normal(0.0, 1e-3, 400)
    refit = SymbolicDynamics(*NAMES, angle_coords=[0], seed=2).fit(s, a, noisy, init=bloated)
    assert refit.report()[1]["search"].startswith("skipped")
    assert count_terms(increment_tree("theta_dot", refit.trees()[1])) == 2


def test_like_terms_are_folded():
    from sym_mbrl_ros.dynamics.expression import fold_like_terms, to_string

    tree = parse_expression("2*x*sin(q) + 3*sin(q)*x - x + 0.5*x + 1", ["x", "q"])
    assert to_string(fold_like_terms(tree)) == "5*x*sin(q) - 0.5*x + 1"
