"""The transformer SR backend: tokens, generators, the shipped weights and what they recover."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sym_mbrl_ros.dynamics import parse_expression, wrap_angle
from sym_mbrl_ros.dynamics.expression import (
    CompiledExpression,
    increment_tree,
    names_in,
    to_string,
)
from sym_mbrl_ros.dynamics.transformer.backend import (
    DEFAULT_WEIGHTS,
    TransformerSettings,
    decode_candidates,
    load_model,
    symbolic_dynamics,
    transformer_candidates,
)
from sym_mbrl_ros.dynamics.transformer.generators import make_generator
from sym_mbrl_ros.dynamics.transformer.model import ModelConfig, SymbolicTransformer
from sym_mbrl_ros.dynamics.transformer.tokenizer import TokenError, Tokenizer
from sym_mbrl_ros.dynamics.transformer.train import TrainConfig, config_path, train
from sym_mbrl_ros.errors import UserError

torch.set_num_threads(1)

TOK = Tokenizer()
NAMES = ["theta", "theta_dot", "u"]


def values(text_or_tree, names, X):
    tree = parse_expression(text_or_tree, names) if isinstance(text_or_tree, str) else text_or_tree
    return CompiledExpression(tree, names).numpy(X)


# --- tokenizer -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "0.05*theta_dot + 0.01875*sin(theta) + 0.00375*u",
        "-0.75*sin(theta) - 3*u/(1.5 + cos(theta))",
        "theta_dot**2*cos(theta) - theta_dot**3 + 1/(theta_dot + 4.2)",
        "sqrt(abs(u)) * exp(-0.5*theta_dot**2) + log(2 + tanh(u)) - tan(0.1*theta)",
        "-(theta - theta_dot)**1.5 + 1234.5678 - 0.000123456",
    ],
)
def test_tokenizer_round_trip_keeps_structure_and_constants_to_three_digits(text):
    tree = parse_expression(text, NAMES)
    tokens = TOK.encode(tree, NAMES)
    assert all(t in TOK.index for t in tokens)
    back = TOK.decode(tokens, NAMES)
    # the same tree shape and names; constants rounded to 3 significant digits
    assert names_in(back) == names_in(tree)
    assert TOK.encode(back, NAMES) == tokens
    X = np.random.default_rng(0).uniform([-3, -3, 0.1], [3, 3, 2], size=(200, 3))
    a, b = values(tree, NAMES, X), values(back, NAMES, X)
    ok = np.isfinite(a)
    assert ok.mean() > 0.5
    # 3 significant digits: each constant within 0.05 %; the value within 1 % of its scale
    assert np.max(np.abs(a[ok] - b[ok])) <= 1e-2 * (np.max(np.abs(a[ok])) + 1e-12)


def test_constant_tokens_are_sign_mantissa_exponent():
    assert TOK.constant_tokens(-0.0375) == ["-", "M375", "E-4"]
    assert TOK.constant_tokens(0.0) == ["+", "M0", "E0"]
    assert TOK.constant_tokens(9.9996) == ["+", "M100", "E-1"]
    for v in (3.14159, -2.5e-5, 815.0, 1.0, -7.77e3):
        assert TOK.round_constant(v) == pytest.approx(v, rel=5e-3)


def test_incomplete_or_foreign_token_sequences_are_rejected():
    with pytest.raises(TokenError):
        TOK.decode(["add", "x0"], NAMES)
    with pytest.raises(TokenError):
        TOK.decode(["x0", "x1"], NAMES)
    with pytest.raises(TokenError):
        TOK.decode(["sin", "x7"], NAMES)
    with pytest.raises(TokenError):
        TOK.ids(["arcsin", "x0"])


# --- generators ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mechanics", "general"])
def test_generators_give_finite_data_that_their_expression_explains(kind):
    gen = make_generator(kind, TOK)
    rng = np.random.default_rng(5)
    for _ in range(40):
        s = gen.sample(rng, 64)
        assert s.X.shape == (64, s.X.shape[1]) and 1 <= s.X.shape[1] <= TOK.max_inputs
        assert s.y.shape == (64,) and s.angle.shape == (s.X.shape[1],)
        assert np.all(np.isfinite(s.X)) and np.all(np.isfinite(s.y))
        assert np.std(s.y) > 0
        # the tokens are the exact label: they decode to the tree that made y
        tree = TOK.decode(s.tokens, s.variables)
        assert to_string(tree) == to_string(s.tree)
        f = values(tree, s.variables, s.X)
        r2 = 1 - np.mean((f - s.y) ** 2) / np.var(s.y)
        assert r2 > 0.999  # only the optional small noise separates them
        assert np.all(np.abs(s.X[:, s.angle]) <= math.pi)
        parse_expression(to_string(tree), s.variables)  # inside the world-model grammar


def test_mechanics_generator_writes_sums_of_scaled_terms():
    gen = make_generator("mechanics", TOK)
    rng = np.random.default_rng(1)
    heads = [gen.sample(rng, 32).tokens[0] for _ in range(100)]
    # a sum (add) or one scaled term (mul c term); never a bare operator chain
    assert set(heads) <= {"add", "mul"}
    assert heads.count("add") > 30


# --- model and training ----------------------------------------------------------------------


def _tiny_config() -> ModelConfig:
    return ModelConfig(
        d_model=32,
        n_heads=2,
        value_dim=8,
        point_hidden=32,
        n_latents=4,
        encoder_rounds=1,
        encoder_self_layers=1,
        decoder_layers=1,
        max_len=48,
    )


def test_constrained_decoding_only_writes_complete_expressions_even_untrained():
    torch.manual_seed(0)
    model = SymbolicTransformer(_tiny_config(), TOK).eval()
    s = make_generator("mechanics", TOK).sample(np.random.default_rng(0), 50)
    for mode in ("beam", "sample"):
        found, bad = decode_candidates(
            model, s.X, s.y, s.variables, s.angle, mode=mode, n=8, seed=3
        )
        assert bad == 0 and len(found) >= 1
        for tree, logp in found:
            assert np.isfinite(logp)
            assert names_in(tree) <= set(s.variables)
            parse_expression(to_string(tree), s.variables)


def test_training_lowers_the_loss_and_writes_loadable_weights_with_config(tmp_path):
    out = tmp_path / "w.pt"
    cfg = TrainConfig(
        generator="general",
        hours=1.0,
        max_steps=40,
        batch_size=8,
        min_points=20,
        max_points=30,
        n_validation=16,
        eval_seconds=1e9,
        warmup_steps=5,
        lr=2e-3,
        model=_tiny_config(),
    )
    summary = train(cfg, out, command="test", log=lambda s: None)
    assert summary["steps"] == 40 and summary["finished"]
    ckpt = torch.load(out, weights_only=True)
    model = SymbolicTransformer.from_checkpoint(ckpt)
    doc = json.loads(config_path(out).read_text())
    assert doc["command"] == "test" and doc["train_config"]["generator"] == "general"
    # an untrained model scores about log(vocabulary size) per token
    assert summary["best_val_loss"] < math.log(TOK.size) - 2.0
    assert model.n_parameters() == summary["parameters"]


# --- shipped weights -------------------------------------------------------------------------


def test_shipped_weights_load_with_weights_only_and_are_small():
    assert DEFAULT_WEIGHTS.exists()
    assert DEFAULT_WEIGHTS.stat().st_size <= 30e6
    ckpt = torch.load(DEFAULT_WEIGHTS, map_location="cpu", weights_only=True)
    assert ckpt["format"] == "sym-mbrl/sr-transformer-v1"
    model = SymbolicTransformer.from_checkpoint(ckpt)
    doc = json.loads(config_path(DEFAULT_WEIGHTS).read_text())
    assert doc["command"].startswith("sym-mbrl train-sr --generator mechanics")
    assert doc["parameters"] == model.n_parameters()


def test_shipped_weights_decode_parseable_candidates_for_task_names():
    rng = np.random.default_rng(0)
    X = np.c_[rng.uniform(-8, 8, 200), rng.uniform(-2, 2, 200), rng.uniform(-np.pi, np.pi, 200)]
    y = 0.75 * np.sin(X[:, 2]) + 0.15 * X[:, 1]
    names = ["theta_dot", "torque", "theta"]
    settings = TransformerSettings(beam_size=8)
    for attempt in (0, 1):  # beam search, then a sampling regeneration
        cands, info = transformer_candidates(
            X, y, names, settings, seed=0, angle_inputs=["theta"], attempt=attempt
        )
        assert len(cands) >= 1 and info["unreadable"] == 0
        for tree, source in cands:
            assert source.startswith("transformer: ")
            parse_expression(to_string(tree), names)


def test_bad_weights_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="cannot read transformer weights"):
        load_model(bad)
    with pytest.raises(UserError, match="do not exist"):
        load_model(tmp_path / "missing.pt")


# --- recovery with the shipped weights -------------------------------------------------------


def pendulum(n: int, seed: int, dt: float = 0.05):
    """Semi-implicit Euler pendulum, theta'' = 15 sin(theta) + 3 u (as in test_dynamics)."""
    rng = np.random.default_rng(seed)
    th = rng.uniform(-np.pi, np.pi, n)
    w = rng.uniform(-8, 8, n)
    u = rng.uniform(-2, 2, n)
    w2 = w + dt * (15 * np.sin(th) + 3 * u)
    return np.c_[th, w], u[:, None], np.c_[wrap_angle(th + dt * w2), w2]


def test_transformer_backend_with_bfgs_recovers_the_exact_pendulum_from_200_points():
    s, a, s2 = pendulum(200, seed=0)
    model = symbolic_dynamics(["theta", "theta_dot"], ["u"], [0], backend="transformer")
    model.fit(s, a, s2)
    inc = increment_tree("theta_dot", model.trees()[1])
    # the exact structure: c1*sin(theta) + c2*u, with the constants 0.75 and 0.15 after BFGS
    assert names_in(inc) == {"theta", "u"}
    X = np.c_[pendulum(500, seed=1)[0], pendulum(500, seed=1)[1]]
    truth = 0.75 * np.sin(X[:, 0]) + 0.15 * X[:, 2]
    pred = CompiledExpression(inc, ["theta", "theta_dot", "u"]).numpy(X)
    assert np.max(np.abs(pred - truth)) < 1e-6
    held = pendulum(500, seed=1)
    scores = model.score(*held)
    assert scores["theta_dot"] > 0.999999
    # theta' = wrap(theta + dt*theta_dot + dt^2*(15 sin(theta) + 3u)): also exact on this seed
    assert scores["theta"] > 0.999999


def test_train_sr_command_writes_weights_and_config_beside_them(tmp_path, capsys):
    from sym_mbrl_ros.commands import train_sr

    out = tmp_path / "w.pt"
    assert train_sr.main(["--generator", "general", "--hours", "0.0003", "--out", str(out)]) == 0
    assert torch.load(out, weights_only=True)["format"] == "sym-mbrl/sr-transformer-v1"
    doc = json.loads((tmp_path / "w.json").read_text())
    assert doc["command"].startswith("sym-mbrl train-sr --generator general --hours 0.0003")
    assert train_sr.main(["--hours", "0", "--out", str(out)]) == 2
    assert "--hours must be positive" in capsys.readouterr().err
