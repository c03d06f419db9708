"""The symbolic world model: recovery of known systems, the grammar, persistence, warm starts."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import sympy
import torch

from sym_mbrl_ros.data.transitions import DataWarning, load_transitions, save_transitions
from sym_mbrl_ros.dynamics import (
    ExpressionError,
    SymbolicDynamics,
    expression_names,
    increment_r2,
    parse_expression,
    wrap_angle,
)
from sym_mbrl_ros.dynamics.expression import CompiledExpression, to_string
from sym_mbrl_ros.dynamics.refine import refine_constants
from sym_mbrl_ros.dynamics.selection import evaluable, make_fit_data, margin_points
from sym_mbrl_ros.errors import UserError

torch.set_num_threads(1)

DT = 0.05
NAMES = (["theta", "theta_dot"], ["u"])


def pendulum_data(n: int, seed: int, a: float = 15.0, b: float = 3.0, vmax: float = 8.0):
    """Semi-implicit Euler pendulum: w' = w + dt (a sin th + b u), th' = wrap(th + dt w')."""
    rng = np.random.default_rng(seed)
    th = rng.uniform(-np.pi, np.pi, n)
    w = rng.uniform(-vmax, vmax, n)
    u = rng.uniform(-2.0, 2.0, n)
    w2 = w + DT * (a * np.sin(th) + b * u)
    th2 = wrap_angle(th + DT * w2)
    return np.c_[th, w], u[:, None], np.c_[th2, w2]


@pytest.fixture(scope="module")
def pendulum_model():
    s, a, s2 = pendulum_data(400, seed=0)
    return SymbolicDynamics(*NAMES, angle_coords=[0]).fit(s, a, s2)


def additive_terms(expr) -> dict:
    """{term: coefficient} of an expanded sympy expression."""
    return {k: float(v) for k, v in sympy.expand(expr).as_coefficients_dict().items()}


# --- recovery --------------------------------------------------------------------------------


def test_recovers_exact_structure_and_constants_of_semi_implicit_pendulum(pendulum_model):
    theta, theta_dot, u = sympy.symbols("theta theta_dot u", real=True)
    next_theta, next_theta_dot = pendulum_model.expressions()
    # theta_dot' = theta_dot + dt*b*u + dt*a*sin(theta)
    terms = additive_terms(next_theta_dot)
    assert set(terms) == {theta_dot, u, sympy.sin(theta)}
    assert terms[theta_dot] == pytest.approx(1.0, abs=1e-9)
    assert terms[u] == pytest.approx(DT * 3.0, rel=1e-7)
    assert terms[sympy.sin(theta)] == pytest.approx(DT * 15.0, rel=1e-7)
    # theta' = theta + dt*theta_dot + dt^2*b*u + dt^2*a*sin(theta)
    terms = additive_terms(next_theta)
    assert set(terms) == {theta, theta_dot, u, sympy.sin(theta)}
    assert terms[theta_dot] == pytest.approx(DT, rel=1e-7)
    assert terms[u] == pytest.approx(DT**2 * 3.0, rel=1e-6)
    assert terms[sympy.sin(theta)] == pytest.approx(DT**2 * 15.0, rel=1e-6)

    # held-out data, including states beyond the training velocities
    s, a, s2 = pendulum_data(1000, seed=99, vmax=12.0)
    pred = pendulum_model.predict(s, a)
    assert np.max(np.abs(wrap_angle(pred[:, 0] - s2[:, 0]))) < 1e-9
    assert np.max(np.abs(pred[:, 1] - s2[:, 1])) < 1e-9
    scores = pendulum_model.score(s, a, s2)
    assert min(scores.values()) > 1 - 1e-12


def test_report_says_what_was_chosen_and_why(pendulum_model):
    report = pendulum_model.report()
    assert [r["coordinate"] for r in report] == ["theta", "theta_dot"]
    for rep in report:
        assert rep["chosen"]["validation_r2"] > 1 - 1e-12
        assert rep["chosen"]["complexity"] > 0
        assert rep["runner_ups"], "runner-ups are listed"
        # runner-ups are the rest of the Pareto front: each is either less accurate or bigger
        chosen = rep["chosen"]
        for ru in rep["runner_ups"]:
            assert (ru["validation_r2"] < chosen["validation_r2"]) != (
                ru["complexity"] > chosen["complexity"]
            )
        assert "standard error" in rep["reason"] or "exact" in rep["reason"]
    text = pendulum_model.format_report()
    assert "runner-up 1" in text and "validation R²" in text
    lines = pendulum_model.equations()
    assert lines[0].startswith("theta' = theta + 0.05*theta_dot")
    assert "sin(theta)" in lines[1]
    assert all("theta" in line for line in pendulum_model.latex())


def test_any_number_of_named_coordinates_and_static_ones():
    rng = np.random.default_rng(3)
    n = 300
    s = rng.normal(size=(n, 4))
    a = rng.uniform(-1, 1, size=(n, 2))
    A = np.array([[0.9, 0.1, 0.0], [0.0, 0.95, 0.05], [-0.1, 0.0, 1.0]])
    B = np.array([[0.0, 0.1], [0.2, 0.0], [0.05, -0.05]])
    s2 = s.copy()
    s2[:, :3] = s[:, :3] @ A.T + a @ B.T + 0.01 * s[:, :1] * a[:, :1]
    model = SymbolicDynamics(["p", "q", "r", "goal"], ["f1", "f2"], static_coords=[3]).fit(s, a, s2)
    assert model.expression_strings()[3] == "goal"
    s_test = rng.normal(size=(200, 4))
    a_test = rng.uniform(-1, 1, size=(200, 2))
    truth = s_test.copy()
    truth[:, :3] = s_test[:, :3] @ A.T + a_test @ B.T + 0.01 * s_test[:, :1] * a_test[:, :1]
    np.testing.assert_allclose(model.predict(s_test, a_test), truth, atol=1e-9)
    assert model.report()[3]["kind"] == "static"


def _unicycle(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    """x, y, yaw, v; a = (drive, turn): position integrates the heading, nowhere special."""
    x, y, yaw, v = s.T
    out = np.stack(
        [x + 0.05 * v * np.cos(yaw), y + 0.05 * v * np.sin(yaw),
         wrap_angle(yaw + 0.05 * v * a[:, 1]), v + 0.2 * (a[:, 0] - v)], axis=1
    )
    return out


def test_invariant_coordinates_appear_in_no_expression_and_translation_changes_nothing():
    rng = np.random.default_rng(7)
    n = 400
    # the data lies near the origin; the model must hold 20 m away
    s = np.column_stack([rng.uniform(-0.5, 0.5, (n, 2)), rng.uniform(-np.pi, np.pi, n),
                         rng.uniform(-1, 1, n)])
    a = rng.uniform(-1, 1, size=(n, 2))
    s2 = _unicycle(s, a)
    names = (["x", "y", "yaw", "v"], ["drive", "turn"])
    model = SymbolicDynamics(*names, angle_coords=[2], invariant_coords=[0, 1]).fit(s, a, s2)
    for i, expr in enumerate(model.expressions()):
        used = {str(sym) for sym in expr.free_symbols} - {names[0][i]}
        assert not used & {"x", "y"}, (names[0][i], expr)
    # 20 m away the predicted motion is the same, and still right
    far = s + np.array([20.0, -20.0, 0.0, 0.0])
    d_near = model.predict(s, a) - s
    d_far = model.predict(far, a) - far
    np.testing.assert_allclose(d_far, d_near, atol=1e-9)
    np.testing.assert_allclose(model.predict(far, a), _unicycle(far, a), atol=1e-6)
    again = SymbolicDynamics.from_dict(json.loads(model.to_json()))
    assert again.invariant_coords == (0, 1)
    with pytest.raises(UserError, match="invariant_coords must hold indices"):
        SymbolicDynamics(*names, invariant_coords=[4])
    with pytest.raises(UserError, match="both static and invariant"):
        SymbolicDynamics(*names, static_coords=[0], invariant_coords=[0])


def test_angle_coordinate_trained_on_wrapped_increment_and_predicted_wrapped():
    # rotation at constant speed crosses +-pi often; the raw difference would jump by 2 pi
    rng = np.random.default_rng(4)
    th = rng.uniform(-np.pi, np.pi, 300)
    u = rng.uniform(-3, 3, 300)
    s2 = wrap_angle(th + 0.5 + 0.1 * u)
    model = SymbolicDynamics(["phi"], ["u"], angle_coords=[0]).fit(
        th[:, None], u[:, None], s2[:, None]
    )
    th_t = np.linspace(-np.pi, np.pi - 1e-6, 101)
    u_t = np.full(101, 2.9)
    pred = model.predict(th_t[:, None], u_t[:, None])[:, 0]
    assert np.all(pred >= -np.pi) and np.all(pred < np.pi)
    np.testing.assert_allclose(wrap_angle(pred - (th_t + 0.5 + 0.29)), 0.0, atol=1e-9)


def test_increment_r2_rules():
    cur = np.zeros(5)
    nxt = np.arange(5.0)
    assert increment_r2(cur, nxt, nxt, angle=False) == 1.0
    assert increment_r2(cur, nxt, np.full(5, 2.0), angle=False) == pytest.approx(0.0)
    # R² is on the increment, not on the next value
    cur = np.arange(5.0) * 100
    assert increment_r2(cur, cur + np.arange(5.0), cur + 2.0, angle=False) == pytest.approx(0.0)
    # zero-variance increment: 1 if exact else 0
    assert increment_r2(cur, cur + 1.0, cur + 1.0, angle=False) == 1.0
    assert increment_r2(cur, cur + 1.0, cur + 1.1, angle=False) == 0.0
    # angles: a prediction of -pi + 0.01 for a true next value of pi - 0.01 is 0.02 off, not 2 pi
    cur = np.array([3.0, 3.0, 0.0, 0.0])
    true = np.array([np.pi - 0.01, -np.pi + 0.05, 0.2, -0.2])
    pred = np.array([-np.pi + 0.01, -np.pi + 0.05, 0.2, -0.2])
    assert increment_r2(cur, true, pred, angle=True) > 0.99


# --- grammar and safety ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "theta.real",
        "theta[0]",
        "lambda: 1",
        "(lambda x: x)(theta)",
        "foo(theta)",
        "eval('1')",
        "os",
        "theta; u",
        "theta if u else 1",
        "'theta'",
        "theta @ u",
        "theta % 2",
        "sin",
        "sin(theta, u)",
        "theta **",
        "()",
        "1e999",
        "",
        "theta == u",
        "[theta]",
        "theta_dot2",
        "(" * 300 + "theta" + ")" * 300,
        "-" * 300 + "theta",
        " + ".join(["theta"] * 1000),
    ],
)
def test_parser_rejects_anything_outside_the_grammar(text):
    with pytest.raises(ExpressionError):
        parse_expression(text, ["theta", "theta_dot", "u"])


def test_parser_reads_the_whole_grammar_and_prints_it_back():
    names = ["x", "y"]
    text = (
        "-x**2 + 1e-3*y - (x - y)/2.5 + sin(x)*cos(y) + tan(0.1*x) + exp(-y) + log(2 + x**2)"
        " + sqrt(abs(y)) + tanh(+x) + 2**-x"
    )
    tree = parse_expression(text, names)
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(50, 2))
    x, y = X[:, 0], X[:, 1]
    expected = (
        -(x**2)
        + 1e-3 * y
        - (x - y) / 2.5
        + np.sin(x) * np.cos(y)
        + np.tan(0.1 * x)
        + np.exp(-y)
        + np.log(2 + x**2)
        + np.sqrt(np.abs(y))
        + np.tanh(x)
        + 2.0 ** (-x)
    )
    compiled = CompiledExpression(tree, names)
    np.testing.assert_allclose(compiled.numpy(X), expected, rtol=1e-14)
    # printing at full precision parses back to the same tree
    assert parse_expression(to_string(tree), names) == tree
    assert compiled.n_params > 0


def test_loading_a_model_file_with_a_malicious_expression_is_refused(tmp_path, pendulum_model):
    doc = pendulum_model.to_dict()
    doc["expressions"][1] = "__import__('os').system('echo hacked')"
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="theta_dot"):
        SymbolicDynamics.load(path)
    doc["expressions"][1] = "theta_dot + secret"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="unknown name 'secret'"):
        SymbolicDynamics.load(path)


@pytest.mark.parametrize(
    "content",
    ["", "not json", "[]", '{"format": "other"}', '{"format": "sym-mbrl/dynamics-v1"}'],
)
def test_unreadable_model_files_raise_user_error(tmp_path, content):
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(UserError):
        SymbolicDynamics.load(path)
    with pytest.raises(UserError, match="does not exist"):
        SymbolicDynamics.load(tmp_path / "missing.json")


# --- persistence and the torch path ------------------------------------------------------------


def test_save_load_round_trip_gives_identical_predictions(tmp_path, pendulum_model):
    path = pendulum_model.save(tmp_path / "model.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "sym-mbrl/dynamics-v1"
    assert doc["state_names"] == ["theta", "theta_dot"] and doc["action_names"] == ["u"]
    assert len(doc["expressions"]) == 2 and doc["backend"] == "sparse"
    assert doc["angle_coords"] == [0] and doc["metrics"]["validation_r2"]["theta"] > 0.999
    loaded = SymbolicDynamics.load(path)
    s, a, _ = pendulum_data(2000, seed=5, vmax=20.0)
    np.testing.assert_array_equal(loaded.predict(s, a), pendulum_model.predict(s, a))
    assert loaded.expression_strings() == pendulum_model.expression_strings()
    assert loaded.report() == pendulum_model.report()
    assert loaded.angle_coords == (0,)


def test_numpy_and_torch_paths_agree(pendulum_model):
    s, a, _ = pendulum_data(4096, seed=6)
    want = pendulum_model.predict(s, a)
    got = pendulum_model.predict_torch(torch.from_numpy(s), torch.from_numpy(a))
    assert got.shape == (4096, 2) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    got32 = pendulum_model.predict_torch(torch.from_numpy(s).float(), torch.from_numpy(a).float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), want, atol=1e-4)


def test_numpy_and_torch_agree_for_every_function():
    doc = {
        "format": "sym-mbrl/dynamics-v1",
        "state_names": ["x", "y"],
        "action_names": ["u"],
        "expressions": [
            "x + 0.1*sin(y)*cos(u) - tan(0.2*x) + exp(-x**2) - 2",
            "log(1 + y**2) + sqrt(abs(u)) - tanh(3*x)/(2 + u) + y**3",
        ],
        "metrics": {},
        "backend": "gp",
    }
    model = SymbolicDynamics.from_dict(doc)
    rng = np.random.default_rng(7)
    s, a = rng.normal(size=(1000, 2)), rng.normal(size=(1000, 1))
    got = model.predict_torch(torch.from_numpy(s), torch.from_numpy(a)).numpy()
    np.testing.assert_allclose(got, model.predict(s, a), rtol=1e-12, atol=1e-12)


def test_a_repeated_subexpression_is_computed_once_and_gives_the_same_values_and_jacobian():
    # a cart-pole-like law: sin(theta) three times, cos(theta) four; a model evaluates it at
    # every RK4 stage of every fit, so each trig is one instruction
    names = ["theta", "w", "u"]
    text = ("(1.5*u*cos(theta) + 0.4*w**2*sin(theta)*cos(theta) + 9.8*sin(theta))"
            " / (1.2 - 0.3*cos(theta)**2) + 0.1*sin(theta)*cos(theta)**2")
    expr = CompiledExpression(parse_expression(text, names), names)
    calls = [payload for kind, _a, _b, payload in expr.program if kind == 8]  # _CALL
    assert sorted(calls) == ["cos", "sin"]
    rng = np.random.default_rng(3)
    X = rng.uniform(-3, 3, size=(400, 3))
    th, w, u = X.T
    p = expr.params
    assert list(p) == [1.5, 0.4, 9.8, 1.2, 0.3, 0.1]
    want = ((p[0] * u * np.cos(th) + p[1] * w**2 * np.sin(th) * np.cos(th) + p[2] * np.sin(th))
            / (p[3] - p[4] * np.cos(th) ** 2) + p[5] * np.sin(th) * np.cos(th) ** 2)
    f, J = expr.value_and_jacobian(X, p)
    # same operations in a different order: a few ulps of values up to ~100
    np.testing.assert_allclose(f, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(expr.numpy(X), want, rtol=1e-12, atol=1e-12)
    got = expr.torch(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    for j in range(len(p)):  # central differences: truncation ~h**2 * f''' ~ 1e-8 relative
        h = 1e-5 * max(1.0, abs(p[j]))
        up, down = p.copy(), p.copy()
        up[j] += h
        down[j] -= h
        fd = (expr.numpy(X, up) - expr.numpy(X, down)) / (2 * h)
        np.testing.assert_allclose(J[:, j], fd, rtol=1e-6, atol=1e-6)


# --- warm start --------------------------------------------------------------------------------


def test_warm_start_refines_constants_on_new_data_and_skips_the_search(pendulum_model):
    # the same structure with a different gravity term: only constants have to move
    s, a, s2 = pendulum_data(400, seed=11, a=16.0)
    cold = SymbolicDynamics(*NAMES, angle_coords=[0]).fit(s, a, s2)
    warm = SymbolicDynamics(*NAMES, angle_coords=[0]).fit(s, a, s2, init=pendulum_model)
    for rep in warm.report():
        assert rep["search"].startswith("skipped"), rep["search"]
        assert rep["n_candidates"] <= 2
    assert sum(r["n_candidates"] for r in warm.report()) < sum(
        r["n_candidates"] for r in cold.report()
    )
    theta_dot = sympy.Symbol("theta_dot", real=True)
    theta = sympy.Symbol("theta", real=True)
    terms = additive_terms(warm.expressions()[1])
    assert terms[sympy.sin(theta)] == pytest.approx(DT * 16.0, rel=1e-7)
    assert terms[theta_dot] == pytest.approx(1.0)
    s_t, a_t, s2_t = pendulum_data(500, seed=12, a=16.0)
    assert min(warm.score(s_t, a_t, s2_t).values()) > 1 - 1e-10


def test_warm_start_searches_again_when_the_old_structure_no_longer_fits(pendulum_model):
    s, a, s2 = pendulum_data(400, seed=13)
    s2[:, 1] += DT * 2.0 * s[:, 1] * a[:, 0] * 0.1  # a new velocity-torque term
    warm = SymbolicDynamics(*NAMES, angle_coords=[0]).fit(s, a, s2, init=pendulum_model)
    rep = warm.report()[1]
    assert rep["search"].startswith("sparse search")
    assert rep["chosen"]["validation_r2"] > 1 - 1e-9


def test_init_must_match_names(pendulum_model):
    s, a, s2 = pendulum_data(100, seed=1)
    other = SymbolicDynamics(["phi", "phi_dot"], ["u"], angle_coords=[0])
    with pytest.raises(UserError, match="same coordinates"):
        other.fit(s, a, s2, init=pendulum_model)


# --- candidates that cannot be evaluated -------------------------------------------------------


def test_a_candidate_that_is_nan_on_the_data_margin_is_dropped():
    rng = np.random.default_rng(0)
    X = np.c_[rng.uniform(0.5, 2.0, 100), rng.uniform(-1, 1, 100)]
    y = np.log(X[:, 0])
    data = make_fit_data(["x", "u"], X, y, X[:0], y[:0], margin_points(X, 0.25, 64, rng), 1e3)
    assert evaluable(parse_expression("x - 1", ["x", "u"]), data)
    # fine on the data (x >= 0.5) but NaN once the box is widened by 25 % (x down to 0.125 ... < 0)
    assert not evaluable(parse_expression("log(x - 0.3)", ["x", "u"]), data)
    assert not evaluable(parse_expression("1/(x - 0.2)**9", ["x", "u"]), data)


def test_unevaluable_warm_start_is_dropped_and_the_search_runs(pendulum_model):
    doc = pendulum_model.to_dict()
    doc["expressions"][1] = "theta_dot + 0.15*u + 0.75*sin(theta) + 0.001*log(theta_dot + 7.9)"
    broken = SymbolicDynamics.from_dict(doc)
    s, a, s2 = pendulum_data(400, seed=14)
    model = SymbolicDynamics(*NAMES, angle_coords=[0]).fit(s, a, s2, init=broken)
    rep = model.report()[1]
    assert rep["n_rejected"] >= 1
    assert "log" not in rep["chosen"]["expression"]
    assert rep["chosen"]["validation_r2"] > 1 - 1e-12


def test_search_generates_again_when_no_candidate_can_be_evaluated(monkeypatch):
    import sym_mbrl_ros.dynamics.sparse as sparse

    real = sparse.sparse_candidates
    calls = []

    def first_round_broken(data, library, settings):
        calls.append(settings.spec.degree)
        if settings.spec.degree == 3:  # the first round (full degree): only a NaN expression
            return [(parse_expression("log(theta_dot - 100)", data.variables), "broken")], {}
        return real(data, library, settings)

    monkeypatch.setattr(sparse, "sparse_candidates", first_round_broken)
    s, a, s2 = pendulum_data(300, seed=15)
    model = SymbolicDynamics(*NAMES, angle_coords=[0]).fit(s, a, s2)
    for rep in model.report():
        assert rep["n_rejected"] == 1
        assert "regenerated 1 time(s)" in rep["search"]
        assert "log" not in rep["chosen"]["expression"]
    assert min(model.metrics["validation_r2"].values()) > 1 - 1e-9
    assert calls == [3, 2, 3, 2]  # each coordinate's second round lowers the degree


def test_bfgs_refines_constants_inside_nonlinear_terms():
    rng = np.random.default_rng(2)
    X = rng.uniform(-3, 3, size=(300, 1))
    y = 0.7 * np.sin(1.3 * X[:, 0] + 0.4)
    start = parse_expression("1*sin(1*x + 0)", ["x"])
    res = refine_constants(start, ["x"], X, y, maxiter=200)
    assert res.loss_after < 1e-16
    c = CompiledExpression(res.tree, ["x"]).params
    # c*sin(w*x + p) is also matched by (-c, w, p + pi); compare the function instead
    X_t = np.linspace(-5, 5, 50)[:, None]
    np.testing.assert_allclose(
        CompiledExpression(res.tree, ["x"]).numpy(X_t),
        0.7 * np.sin(1.3 * X_t[:, 0] + 0.4),
        atol=1e-7,
    )
    assert len(c) == 3


# --- bad input ---------------------------------------------------------------------------------


def test_nan_and_inf_rows_are_dropped_counted_and_reported():
    s, a, s2 = pendulum_data(300, seed=8)
    s[3, 0] = np.nan
    a[10, 0] = np.inf
    s2[20, 1] = -np.inf
    model = SymbolicDynamics(*NAMES, angle_coords=[0])
    with pytest.warns(DataWarning, match="dropped 3 of 300"):
        model.fit(s, a, s2)
    assert model.metrics["n_dropped_nonfinite"] == 3 and model.metrics["n_used"] == 297
    assert model.metrics["validation_r2"]["theta_dot"] > 1 - 1e-12


def test_transitions_file_round_trip_and_nan_rows(tmp_path):
    s, a, s2 = pendulum_data(50, seed=9)
    s2[7, 0] = np.nan
    path = save_transitions(
        tmp_path / "d.npz",
        s,
        a,
        s2,
        state_names=NAMES[0],
        action_names=NAMES[1],
        dt=DT,
        episode=np.repeat([0, 1], 25),
        angle_coords=[0],
    )
    with pytest.warns(DataWarning, match="dropped 1 of 50"):
        data = load_transitions(path)
    assert len(data) == 49 and data.n_dropped == 1
    assert data.state_names == ("theta", "theta_dot") and data.action_names == ("u",)
    assert data.dt == DT and data.angle_coords == (0,) and data.static_coords == ()
    assert data.episode.shape == (49,)
    np.testing.assert_array_equal(data.states, np.delete(s, 7, axis=0))


def test_bad_transitions_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_transitions(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip file")
    with pytest.raises(UserError, match="cannot read"):
        load_transitions(tmp_path / "junk.npz")
    np.savez(tmp_path / "partial.npz", states=np.zeros((5, 2)), actions=np.zeros((5, 1)))
    with pytest.raises(UserError, match="next_states"):
        load_transitions(tmp_path / "partial.npz")
    np.savez(
        tmp_path / "rows.npz",
        states=np.zeros((5, 2)),
        actions=np.zeros((4, 1)),
        next_states=np.zeros((5, 2)),
    )
    with pytest.raises(UserError, match="5, 4 and 5 rows"):
        load_transitions(tmp_path / "rows.npz")


def test_fit_rejects_bad_arrays_with_one_clear_sentence():
    s, a, s2 = pendulum_data(100, seed=10)
    model = SymbolicDynamics(*NAMES, angle_coords=[0])
    cases = [
        ((None, a, s2), "missing states"),
        ((s, a[:50], s2), "100, 50 and 100 rows"),
        ((s, a, s2[:, :1]), "same state coordinates"),
        ((s[:, :1], a, s2[:, :1]), "expected 2"),
        ((s, np.c_[a, a], s2), "expected 1"),
        ((s[:10], a[:10], s2[:10]), "at least 20 transitions"),
    ]
    for args, message in cases:
        with pytest.raises(UserError, match=message) as info:
            model.fit(*args)
        assert "\n" not in str(info.value)
    s_nan = s.copy()
    s_nan[:90] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(UserError, match=r"got 10 \(90 dropped\)"):
            model.fit(s_nan, a, s2)
    with pytest.raises(UserError, match="not fitted"):
        model.predict(s, a)


def test_constructor_rejects_bad_names_and_settings():
    with pytest.raises(UserError, match="list of names"):
        SymbolicDynamics("theta", ["u"])
    # names that cannot appear in an expression are replaced, and the change is recorded
    model = SymbolicDynamics(["x.pos", "steer"], ["drive", "steer"])
    assert model.state_names == ("x_pos", "steer") and model.action_names == ("drive", "steer_cmd")
    assert model.renamed == {"x.pos": "x_pos", "steer": "steer_cmd"}
    with pytest.raises(UserError, match="angle_coords"):
        SymbolicDynamics(["x"], ["u"], angle_coords=[3])
    with pytest.raises(UserError, match="unknown SymbolicDynamics setting"):
        SymbolicDynamics(["x"], ["u"], degre=2)
    with pytest.raises(UserError, match="unknown backend"):
        SymbolicDynamics(["x"], ["u"], backend="mlp")
    states, actions, renamed = expression_names(["x", "steer", "2nd", "sin"], ["steer", "a-b"])
    assert states == ("x", "steer", "x_2nd", "sin_") and actions == ("steer_cmd", "a_b")
    assert renamed == {"2nd": "x_2nd", "sin": "sin_", "steer": "steer_cmd", "a-b": "a_b"}


# --- gp backend --------------------------------------------------------------------------------


def test_gp_backend_recovers_a_simple_expression_on_a_small_budget():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, 300)
    u = rng.uniform(-1, 1, 300)
    x2 = x + 0.1 * np.sin(x) + 0.2 * u
    model = SymbolicDynamics(["x"], ["u"], backend="gp", seed=1, gp_time=1.0, gp_population=200)
    model.fit(x[:, None], u[:, None], x2[:, None])
    rep = model.report()[0]
    assert rep["chosen"]["source"].startswith("gp: pyoperon")
    x_t = rng.uniform(-2.5, 2.5, 200)
    u_t = rng.uniform(-1, 1, 200)
    truth = x_t + 0.1 * np.sin(x_t) + 0.2 * u_t
    r2 = model.score(x_t[:, None], u_t[:, None], truth[:, None])["x"]
    assert r2 > 0.99999
    assert rep["chosen"]["complexity"] <= 25
    assert math.isfinite(model.predict(np.array([3.0]), np.array([0.5]))[0])


def test_candidates_are_ranked_on_the_newest_rows():
    """The fit's validation rows are the newest 20 %: garbage there shows in the validation
    score; the same garbage in the oldest rows does not (a random split sees it either way)."""
    s, a, s2 = pendulum_data(500, seed=3)
    noise = np.random.default_rng(0).normal(0, 5.0, 100)
    scores = {}
    for where, rows in (("newest", slice(400, 500)), ("oldest", slice(0, 100))):
        bad = s2.copy()
        bad[rows, 1] += noise
        model = SymbolicDynamics(*NAMES, angle_coords=[0]).fit(s, a, bad)
        scores[where] = model.metrics["validation_r2"]["theta_dot"]
    assert scores["newest"] < 0.0  # noise of sd 5 against increments of sd ~0.6
    assert scores["oldest"] > 0.5, scores


def test_the_one_standard_error_rule_is_paired_over_folds():
    """A candidate is as good as the best only if its excess error, fold by fold, is within
    one standard error of that excess: a constant excess is never noise, however small."""
    from sym_mbrl_ros.dynamics.expression import parse_expression
    from sym_mbrl_ros.dynamics.selection import Candidate, within_noise

    tree = parse_expression("x", ["x"])
    best = Candidate(tree, "best", 0.0, 0.011, 5, (0.010, 0.020, 0.005, 0.012, 0.008))
    steady = Candidate(tree, "steady", 0.0, 0.012, 3, (0.011, 0.021, 0.006, 0.013, 0.009))
    noisy = Candidate(tree, "noisy", 0.0, 0.012, 3, (0.016, 0.015, 0.010, 0.007, 0.012))
    assert not within_noise(steady, best)  # worse on every fold by the same 0.001
    assert within_noise(noisy, best)  # better on some folds, worse on others
    assert within_noise(steady, best, floor=0.05)  # both exact: the simpler one may win
