"""`sym-mbrl predict`: next states of symbolic and ensemble models, written as transitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sym_mbrl_ros.cli import main
from sym_mbrl_ros.data.transitions import load_transitions
from sym_mbrl_ros.dynamics import SymbolicDynamics

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict")
    data = folder / "pendulum.npz"
    model = folder / "model.json"
    assert main(["collect", "pendulum", "--steps", "300", "--seed", "5", "--out", str(data)]) == 0
    assert main(["fit", str(data), "--out", str(model), "-q"]) == 0
    return data, model


def test_predict_writes_the_models_next_states(tmp_path, fitted, capsys):
    data_path, model_path = fitted
    out = tmp_path / "pred.npz"
    assert main(["predict", str(model_path), str(data_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "predicted 300 next states" in printed and "theta_dot" in printed
    pred, data = load_transitions(out), load_transitions(data_path)
    model = SymbolicDynamics.load(model_path)
    np.testing.assert_array_equal(pred.states, data.states)
    np.testing.assert_array_equal(pred.actions, data.actions)
    # the same model on the same rows: equal to rounding (the file stores float64)
    np.testing.assert_allclose(pred.next_states, model.predict(data.states, data.actions),
                               rtol=0, atol=1e-12)
    # and close to the simulator's next states: the fit's errors are ~1e-5 (R² 1 - 1e-7 on
    # increments of size ~1); 1e-3 tolerates that and fails any model that is not the pendulum
    np.testing.assert_allclose(pred.next_states, data.next_states, atol=1e-3)
    assert pred.state_names == data.state_names and pred.dt == pytest.approx(0.05)
    np.testing.assert_array_equal(pred.episode, data.episode)


def test_predict_with_the_ensemble(tmp_path, fitted):
    from sym_mbrl_ros.dynamics.ensemble import EnsembleDynamics

    data_path, _ = fitted
    data = load_transitions(data_path)
    ens = EnsembleDynamics(data.state_names, data.action_names, data.angle_coords,
                           ensemble_size=2, num_elites=1, hidden_sizes=(16,), max_epochs=3)
    ens.fit(data.states, data.actions, data.next_states)
    ens.save(tmp_path / "ens.pt")
    out = tmp_path / "pred.npz"
    assert main(["predict", str(tmp_path / "ens.pt"), str(data_path), "--out", str(out)]) == 0
    again = EnsembleDynamics.load(tmp_path / "ens.pt").predict(data.states, data.actions)
    # deterministic (mean of the elites): the same numbers to float32-in-float64 rounding
    np.testing.assert_allclose(load_transitions(out).next_states, again, rtol=0, atol=1e-9)


def test_predict_refuses_data_of_another_system(tmp_path, fitted, capsys):
    data_path, model_path = fitted
    data = load_transitions(data_path)
    renamed = tmp_path / "renamed.npz"
    np.savez(renamed, states=data.states, actions=data.actions, next_states=data.next_states,
             state_names=np.array(["x", "v"]), action_names=np.array(["torque"]))
    wide = tmp_path / "wide.npz"
    np.savez(wide, states=np.zeros((30, 3)), actions=np.zeros((30, 1)),
             next_states=np.zeros((30, 3)))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torch")
    cases = [
        ([str(model_path), str(renamed)], "has states ['x', 'v'] but the model"),
        ([str(model_path), str(wide)], "has 3 state columns but the model"),
        ([str(tmp_path / "missing.json"), str(data_path)], "does not exist"),
        ([str(junk), str(data_path)], "cannot read ensemble model"),
    ]
    for argv, message in cases:
        assert main(["predict", *argv, "--out", str(tmp_path / "p.npz")]) == 2, argv
        lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert len(lines) == 1 and message in lines[0], (argv, lines)
        assert lines[0].startswith("sym-mbrl predict: error:")
    assert not (tmp_path / "p.npz").exists()
