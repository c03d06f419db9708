"""`sym-mbrl collect`, `fit` and `show`: files written, numbers printed, bad input refused."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sym_mbrl_ros.cli import main
from sym_mbrl_ros.data.transitions import load_transitions
from sym_mbrl_ros.dynamics import SymbolicDynamics

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pendulum_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "pendulum.npz"
    assert main(["collect", "pendulum", "--steps", "500", "--seed", "3", "--out", str(path)]) == 0
    return path


def test_collect_writes_transitions_and_config(pendulum_file):
    data = load_transitions(pendulum_file)
    assert data.states.shape == (500, 2) and data.actions.shape == (500, 1)
    assert data.next_states.shape == (500, 2)
    assert data.state_names == ("theta", "theta_dot") and data.action_names == ("torque",)
    assert data.angle_coords == (0,) and data.dt == pytest.approx(0.05)
    assert data.n_dropped == 0
    # episodes of 200 steps: 0, 1, 2; consecutive rows of an episode chain up
    assert list(np.unique(data.episode)) == [0, 1, 2]
    same = data.episode[1:] == data.episode[:-1]
    np.testing.assert_array_equal(data.states[1:][same], data.next_states[:-1][same])
    assert np.all(np.abs(data.actions) <= 2.0)
    config = json.loads(pendulum_file.with_suffix(".json").read_text())
    assert config["task"] == "pendulum" and config["seed"] == 3 and config["steps"] == 500
    assert config["policy"] == "random"


def test_fit_invariant_keeps_a_coordinate_out_of_every_expression(tmp_path, pendulum_file, capsys):
    model_path = tmp_path / "model.json"
    argv = ["fit", str(pendulum_file), "--out", str(model_path), "-q", "--invariant", "theta_dot"]
    assert main(argv) == 0
    model = SymbolicDynamics.load(model_path)
    assert model.invariant_coords == (1,)
    for i, expr in enumerate(model.expressions()):
        used = {str(sym) for sym in expr.free_symbols} - {model.state_names[i]}
        assert "theta_dot" not in used, expr
    assert main(["fit", str(pendulum_file), "--out", str(model_path), "--invariant", "omega"]) == 2
    assert "unknown state coordinate 'omega'" in capsys.readouterr().err


def test_collect_is_reproducible_with_a_seed(tmp_path, pendulum_file):
    again = tmp_path / "again.npz"
    assert main(["collect", "pendulum", "--steps", "500", "--seed", "3", "--out", str(again)]) == 0
    np.testing.assert_array_equal(
        load_transitions(again).states, load_transitions(pendulum_file).states
    )


def test_fit_prints_equations_and_held_out_r2_then_show_prints_them(
    tmp_path, pendulum_file, capsys
):
    model_path = tmp_path / "model.json"
    assert main(["fit", str(pendulum_file), "--out", str(model_path), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    # the file has dt: a continuous-time model, printed as the law (MuJoCo's pendulum:
    # theta_ddot = 15 sin(theta) + 3 torque; two terms, whatever their rounding)
    law = next(line for line in out.splitlines() if "theta_ddot = " in line)
    assert "sin(theta)" in law and "torque" in law and law.count("+") + law.count(" - ") == 1
    assert "held-out R²" in out and "what was chosen and why" in out and "runner-up 1" in out
    model = SymbolicDynamics.load(model_path)
    heldout = model.metrics["heldout_r2"]
    assert set(heldout) == {"theta", "theta_dot"}
    assert min(heldout.values()) > 0.9999
    assert model.provenance["seed"] == 1 and model.provenance["data"] == str(pendulum_file)
    # the R² printed is the one stored
    for value in heldout.values():
        assert f"{value:.6f}" in out

    assert main(["show", str(model_path)]) == 0
    shown = capsys.readouterr().out
    for line in model.equations():
        assert line in shown
    assert "LaTeX" in shown and "\\sin" in shown and "held-out R²" in shown


def test_fit_warm_start_from_a_model_file(tmp_path, pendulum_file, capsys):
    first = tmp_path / "first.json"
    assert main(["fit", str(pendulum_file), "--out", str(first), "-q", "--time", "discrete"]) == 0
    second = tmp_path / "second.json"
    assert (
        main(["fit", str(pendulum_file), "--out", str(second), "--init", str(first), "--seed", "2",
              "--time", "discrete"])
        == 0
    )
    out = capsys.readouterr().out
    assert "skipped: the warm-start expression" in out
    assert min(SymbolicDynamics.load(second).metrics["heldout_r2"].values()) > 0.9999


def test_fit_reports_nan_rows_it_dropped(tmp_path, pendulum_file, capsys):
    with np.load(pendulum_file) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["next_states"][[5, 50, 100], 1] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, **arrays)
    assert main(["fit", str(path), "--out", str(tmp_path / "m.json"), "-q"]) == 0
    captured = capsys.readouterr()
    assert "dropped 3 of 500 transitions that contain NaN or inf" in captured.err
    assert "3 dropped for NaN/inf" in captured.out
    assert SymbolicDynamics.load(tmp_path / "m.json").metrics["n_dropped_in_file"] == 3


def bad_inputs(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    partial = tmp_path / "partial.npz"
    np.savez(partial, states=np.zeros((30, 2)), actions=np.zeros((30, 1)))
    shapes = tmp_path / "shapes.npz"
    np.savez(
        shapes, states=np.zeros((30, 2)), actions=np.zeros((29, 1)), next_states=np.zeros((30, 2))
    )
    few = tmp_path / "few.npz"
    np.savez(few, states=np.zeros((5, 2)), actions=np.zeros((5, 1)), next_states=np.ones((5, 2)))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    evil = tmp_path / "evil.json"
    evil.write_text(
        json.dumps(
            {
                "format": "sym-mbrl/dynamics-v1",
                "state_names": ["x"],
                "action_names": ["u"],
                "expressions": ["__import__('os').system('echo hacked')"],
            }
        )
    )
    return [
        (["fit", str(tmp_path / "missing.npz")], "does not exist"),
        (["fit", str(junk)], "cannot read transitions file"),
        (["fit", str(partial)], "no next_states array"),
        (["fit", str(shapes)], "one row per transition"),
        (["fit", str(few)], "at least 20 transitions"),
        (["fit", str(partial), "--holdout", "2"], "--holdout"),
        (["show", str(tmp_path / "missing.json")], "does not exist"),
        (["show", str(bad_json)], "not valid JSON"),
        (["show", str(evil)], "unknown function '__import__'"),
        (["collect", "segway", "--out", str(tmp_path / "x.npz")], "unknown task"),
        (["collect", "pendulum", "--steps", "0", "--out", str(tmp_path / "x.npz")], "--steps"),
    ]


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    for argv, message in bad_inputs(tmp_path):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, (argv, err)
        assert message in lines[0], (argv, err)
        assert lines[0].startswith(f"sym-mbrl {argv[0]}: error:")


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sym_mbrl_ros.cli", "fit", str(tmp_path / "missing.npz")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


def test_fit_holds_out_the_newest_rows(tmp_path, pendulum_file, capsys):
    """The newest 20% are garbage: a fit that never sees them recovers the pendulum exactly on
    the rest, and its held-out R² says the newest rows are not predicted. A random split would
    train on ~80 garbage rows and lose the exact fit."""
    data = load_transitions(pendulum_file)
    next_states = data.next_states.copy()
    next_states[400:] = np.random.default_rng(0).normal(size=(100, 2))
    path = tmp_path / "drift.npz"
    np.savez(path, states=data.states, actions=data.actions, next_states=next_states,
             state_names=np.array(data.state_names), action_names=np.array(data.action_names),
             angle_coords=np.array([0]))
    model_path = tmp_path / "model.json"
    assert main(["fit", str(path), "--out", str(model_path), "-q"]) == 0
    assert "the newest 100 held out" in capsys.readouterr().out
    model = SymbolicDynamics.load(model_path)
    # trained on the clean rows only (R² of increments; > 0.9999 as for clean data above)
    clean = model.score(data.states[:400], data.actions[:400], data.next_states[:400])
    assert min(clean.values()) > 0.9999, clean
    assert max(model.metrics["heldout_r2"].values()) < 0.5  # the garbage was held out


def _store_from_file(path, npz) -> None:
    from sym_mbrl_ros.data.store import TransitionStore

    data = load_transitions(npz)
    with TransitionStore(path, data.state_names, data.action_names, dt=data.dt,
                         task="pendulum") as store:
        for ep in np.unique(data.episode):
            rows = data.episode == ep
            store.start_episode()
            store.extend(data.states[rows], data.actions[rows], data.next_states[rows])


def test_fit_reads_a_transition_store(tmp_path, pendulum_file, capsys):
    store = tmp_path / "transitions.sqlite"
    _store_from_file(store, pendulum_file)
    model_path = tmp_path / "model.json"
    assert main(["fit", str(store), "--out", str(model_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "learned from 400 transitions" in out and "theta_ddot = " in out  # the store has dt
    model = SymbolicDynamics.load(model_path)
    assert model.angle_coords == (0,)  # from the store's task
    assert min(model.metrics["heldout_r2"].values()) > 0.9999  # pendulum: exact, as above
    other = tmp_path / "other.sqlite"
    import sqlite3

    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    assert main(["fit", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a transition store" in err
