"""The world-model suite's parts: true laws, the exact-structure checker, the noise model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import sympy

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import classic_systems  # noqa: E402
import structure  # noqa: E402
import world_model_suite as suite  # noqa: E402


def _law_rhs(system):
    names = system.state_names + system.action_names
    symbols = [sympy.Symbol(n, real=True) for n in names]
    fns = [
        sympy.lambdify(symbols, structure.parse_law(law, names), modules="numpy")
        for law in system.laws
    ]

    def rhs(s, a):
        cols = [*s.T, *a.T]
        return np.stack([np.broadcast_to(np.asarray(f(*cols), float), (len(s),)) for f in fns], 1)

    return rhs


@pytest.mark.parametrize("name", sorted(classic_systems.SUITE))
def test_law_strings_match_the_simulator(name):
    system = classic_systems.SUITE[name]
    data = system.episodes(200, seed=3)
    s, a = data["states"], data["actions"]
    law = _law_rhs(system)(s, a)
    sim = system.rhs(s, a)
    # both are the same formula evaluated in float64 (the two-link laws through a symbolic
    # inverse against a numeric 2x2 solve): agreement to ~1e-12 of the scale; 1e-9 is slack
    np.testing.assert_allclose(law, sim, rtol=1e-9, atol=1e-9 * np.abs(sim).max())


@pytest.mark.parametrize("name", sorted(classic_systems.SUITE))
def test_recorded_transitions_are_one_integrated_step_of_the_law(name):
    system = classic_systems.SUITE[name]
    data = system.episodes(100, seed=4)
    s, a, s2 = data["states"], data["actions"], data["next_states"]
    # one step of the law with 4x finer RK4 substeps: RK4's error shrinks 256x, so the
    # difference is the recorded step's own integration error, far below 1e-5 of the increment
    fine = classic_systems.integrate(_law_rhs(system), s, a, system.dt, 4 * system.substeps, "rk4")
    scale = np.abs(s2 - s).max(axis=0)
    assert np.all(np.abs(fine - s2).max(axis=0) <= 1e-5 * scale)


def test_finite_differences_of_a_trajectory_follow_the_law():
    system = classic_systems.SUITE["damped_pendulum"]
    data = system.episodes(50, seed=5)
    s, s2, a = data["states"], data["next_states"], data["actions"]
    mid = 0.5 * (s + s2)
    # the midpoint difference quotient is the derivative at the midpoint to O(dt^2):
    # dt = 0.02 and |f'''| ~ 10^2 give errors ~ 1e-2 of a derivative of scale ~10
    np.testing.assert_allclose((s2 - s) / system.dt, _law_rhs(system)(mid, a), atol=0.05)


def test_legacy_systems_keep_their_recorded_integrators():
    legacy = classic_systems.SYSTEMS
    assert (legacy["cartpole"].integrator, legacy["cartpole"].substeps) == ("euler", 1)
    s = np.array([[0.1, -0.2, 3.1, 3.0]])
    a = np.array([[5.0]])
    nxt = legacy["cartpole"].step(s, a)
    expected = s + 0.02 * classic_systems.cartpole_rhs(s, a)
    expected[0, 2] = classic_systems.wrap(expected[0, 2])
    np.testing.assert_allclose(nxt, expected, rtol=0, atol=1e-15)  # the same float operations
    assert nxt[0, 2] < 0  # 3.1 + 0.02 * 3 rad crossed pi and was wrapped


# --- exact-structure checker -----------------------------------------------------------------


def _data(names, seed=0, n=400):
    return np.random.default_rng(seed).uniform(-2, 2, size=(n, len(names)))


NAMES = ["x", "v", "force"]
LAW = "-0.3*v - 1.0*x - 0.5*x**3 + force"


def _law():
    return structure.parse_law(LAW, NAMES)


def test_true_law_with_perturbed_coefficients_is_exact():
    model = structure.parse_law("-0.2987*v - 1.013*x - 0.4991*x**3 + 1.0004*force", NAMES)
    verdict = structure.compare(model, _law(), NAMES, _data(NAMES))
    assert verdict.exact and verdict.n_terms == verdict.n_law_terms == 4


def test_an_extra_term_and_a_missing_term_are_reported():
    X = _data(NAMES)
    extra = structure.compare(structure.parse_law(LAW + " + 0.2*x*v", NAMES), _law(), NAMES, X)
    assert not extra.exact and extra.extra == ["v*x"] and extra.missing == []
    missing = structure.compare(
        structure.parse_law("-0.3*v - 1.0*x + force", NAMES), _law(), NAMES, X
    )
    assert not missing.exact and missing.missing == ["x**3"] and missing.extra == []


def test_tiny_terms_are_dropped_by_the_documented_relative_threshold():
    X = _data(NAMES)
    scale = float(
        np.sqrt(
            np.mean(sympy.lambdify([sympy.Symbol(n, real=True) for n in NAMES], _law())(*X.T) ** 2)
        )
    )
    rms_xv = float(np.sqrt(np.mean((X[:, 0] * X[:, 1]) ** 2)))
    # a coefficient giving the x*v term a tenth of the threshold's share is dust; ten times
    # the threshold is structure (the factor 10 keeps both far from the boundary)
    small = 0.1 * structure.REL_THRESHOLD * scale / rms_xv
    large = 10 * structure.REL_THRESHOLD * scale / rms_xv
    dusty = structure.parse_law(f"{LAW} + {small!r}*x*v", NAMES)
    assert structure.compare(dusty, _law(), NAMES, X).exact
    assert "v*x" in structure.term_set(dusty, NAMES, X).dropped
    real = structure.parse_law(f"{LAW} + {large!r}*x*v", NAMES)
    assert structure.compare(real, _law(), NAMES, X).extra == ["v*x"]


def test_numbers_inside_functions_and_discrete_increments():
    names = ["theta", "omega", "torque"]
    X = _data(names)
    law = structure.parse_law("-9.81*sin(theta) - 0.2*omega + torque", names)
    fitted = structure.parse_law("-9.8*sin(1.0003*theta + 1e-7) - 0.21*omega + torque", names)
    assert structure.compare(fitted, law, names, X).exact
    # a discrete model's next value: its increment's terms are those of dt * f
    nxt = structure.parse_law("omega + 0.02*(-9.81*sin(theta) - 0.2*omega + torque)", names)
    inc = structure.increment_as_rate(nxt, "omega", is_next=True)
    assert structure.compare(inc, law, names, X).exact


def test_rational_laws_have_terms_over_a_common_denominator():
    names = ["q", "w", "u"]
    X = _data(names)
    law = structure.parse_law("(u - 2*w**2*sin(q))/(3 - cos(q)**2)", names)
    scaled = structure.parse_law("(0.5*u - 0.98*w**2*sin(q))/(1.5 - 0.51*cos(q)**2)", names)
    assert structure.compare(scaled, law, names, X).exact
    polynomial = structure.parse_law("0.4*u - 0.8*w**2*sin(q)", names)
    assert not structure.compare(polynomial, law, names, X).exact


# --- noise model and data --------------------------------------------------------------------


def test_trajectory_noise_has_the_requested_sigma_and_chains_rows():
    data = classic_systems.SUITE["vanderpol"].episodes(5000, seed=1)
    rng = np.random.default_rng(0)
    noisy, sigma = suite.add_trajectory_noise(data, 0.05, rng, [0, 1])
    segs = suite.segments(data)
    traj = np.vstack([np.vstack([data["states"][r], data["next_states"][r[-1]]]) for r in segs])
    np.testing.assert_allclose(sigma, 0.05 * traj.std(axis=0), rtol=1e-12)
    err = noisy["states"] - data["states"]
    # 5000 draws: the sample std is within ~3 % of sigma with 99.9 % probability (4/sqrt(2n))
    np.testing.assert_allclose(err.std(axis=0), sigma, rtol=0.06)
    # trajectory noise: the noisy next state of a row is the noisy state of the next row
    for rows in segs:
        np.testing.assert_array_equal(noisy["next_states"][rows[:-1]], noisy["states"][rows[1:]])
    clean, zero = suite.add_trajectory_noise(data, 0.0, rng, [0, 1])
    assert np.all(zero == 0) and np.array_equal(clean["states"], data["states"])


def test_box_split_keeps_training_rows_inside_and_test_rows_outside():
    system = suite.suite_system("duffing")
    pool = classic_systems.SUITE["duffing"].episodes(3000, seed=2)
    train, test, box = suite.box_split(system, pool, seed=0)
    for key, (lo, hi) in box.items():
        col = (
            pool["states"][:, system.state_names.index(key)]
            if key in system.state_names
            else pool["actions"][:, system.action_names.index(key)]
        )
        assert np.all((col[train] >= lo) & (col[train] <= hi))
    outside = np.zeros(len(test), dtype=bool)
    for key, (lo, hi) in box.items():
        col = (
            pool["states"][:, system.state_names.index(key)]
            if key in system.state_names
            else pool["actions"][:, system.action_names.index(key)]
        )
        outside |= (col[test] < lo) | (col[test] > hi)
    assert outside.all() and len(train) == suite.N_TRAIN


def test_unavailable_mujoco_cartpole_is_said_not_available_or_has_its_law():
    from sym_mbrl_ros.envs import TASKS

    system = suite.suite_system("cartpole_mujoco")
    if "cartpole" in TASKS:
        assert isinstance(system, suite.SuiteSystem)
    else:
        assert isinstance(system, str) and system.startswith("not available")


def test_unwrapping_makes_a_wrapped_angle_continuous():
    theta = np.linspace(2.5, 4.0, 11)
    wrapped = classic_systems.wrap(theta)
    data = {
        "states": wrapped[:-1, None].copy(),
        "next_states": wrapped[1:, None].copy(),
        "actions": np.zeros((10, 1)),
        "episode": np.zeros(10, dtype=int),
    }
    out = suite._unwrap(data, (0,))
    np.testing.assert_allclose(np.diff(out["states"][:, 0]), 0.15, atol=1e-12)
    np.testing.assert_allclose(out["next_states"][:, 0] - out["states"][:, 0], 0.15, atol=1e-12)
