"""The search backends behind one registry (dynamics/backends.py): each in its own module with
its own settings, loaded on first use, none importing symbolic.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sym_mbrl_ros.dynamics import SymbolicDynamics, backends
from sym_mbrl_ros.dynamics.expression import Num
from sym_mbrl_ros.errors import UserError


def test_every_backend_is_registered_and_loads():
    assert backends.names()[:3] == ("sparse", "gp", "transformer")
    for name in ("sparse", "gp", "transformer"):
        assert callable(backends.get(name).load())


def test_an_unknown_backend_is_one_sentence_naming_the_others():
    with pytest.raises(UserError, match="unknown backend 'sindy'; choose one of sparse, gp"):
        SymbolicDynamics(["x"], ["u"], backend="sindy")


@pytest.mark.parametrize("module", ["sparse", "gp", "transformer/backend"])
def test_no_backend_module_imports_symbolic_at_load_time(module):
    # transformer/backend.py imported symbolic.py at module level while symbolic.py imported
    # it back inside a method: a cycle that only a lazy import kept from failing
    path = Path(backends.__file__).parent / f"{module}.py"
    tree = ast.parse(path.read_text())
    top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not [node for node in top
                if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("symbolic")]
    done = subprocess.run(
        [sys.executable, "-c", f"import sym_mbrl_ros.dynamics.{module.replace('/', '.')}"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def _mean_backend(model, i, data, attempt):
    """A registered test backend: the mean increment."""
    _CALLS.append((i, attempt))
    return [(Num(float(np.mean(data.y_train))), "mean")], {"kind": "test"}


_CALLS: list[tuple[int, int]] = []


def test_a_registered_backend_is_what_a_fit_calls(monkeypatch):
    # a new backend is one register() call: the fit asks the registry, not a chain of ifs
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    backends.register("mean", __name__, "_mean_backend", "the mean increment")
    _CALLS.clear()
    rng = np.random.default_rng(0)
    s = rng.normal(size=(60, 1))
    model = SymbolicDynamics(["x"], ["u"], backend="mean", gp_fallback=False)
    model.fit(s, rng.normal(size=(60, 1)), s + 0.1)
    assert _CALLS and _CALLS[0] == (0, 0)
    assert model.predict(s[:3], np.zeros((3, 1))) == pytest.approx(s[:3] + 0.1)


def test_the_fit_command_offers_every_registered_backend():
    # the CLI keeps a literal list (importing the dynamics package would slow every command's
    # start); it must not drift from the registry
    source = (Path(backends.__file__).parents[1] / "commands" / "fit.py").read_text()
    after = source[source.index('"--backend"'):]
    choices = after[after.index("choices=") + len("choices="):]
    assert ast.literal_eval(choices[: choices.index(")") + 1]) == backends.names()
