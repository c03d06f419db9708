"""policy_trainer over real DDS: MBPO's own model install (state bounds from the pulled data)
and the model hand-off between the subscription and the training thread."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

rclpy = pytest.importorskip("rclpy")

from std_msgs.msg import String  # noqa: E402
from test_nodes_common import Probe, node_args, wait_for  # noqa: E402

from sym_mbrl_ros.agents import mbpo as mbpo_module  # noqa: E402
from sym_mbrl_ros.agents import model_env as model_env_module  # noqa: E402
from sym_mbrl_ros.agents.model_env import ModelEnv  # noqa: E402
from sym_mbrl_ros.data.store import TransitionStore  # noqa: E402
from sym_mbrl_ros.envs import get_task  # noqa: E402
from sym_mbrl_ros.nodes.common import MODEL_TOPIC, QOS_LATCHED  # noqa: E402
from sym_mbrl_ros.nodes.policy_trainer import LatestModel, PolicyTrainer  # noqa: E402

pytestmark = pytest.mark.ros
TASK = get_task("pendulum")
TRUE = ["theta + 0.05*theta_dot", "theta_dot + 0.15*torque + 0.75*sin(theta)"]
SPIN = ["theta + 0.05*theta_dot", "theta_dot + 10"]  # gains 10 rad/s every step, whatever it does
# small and quick; bounds on (the pendulum preset runs without them, see agents/presets.py)
OVERRIDES = json.dumps({"rollout_state_margin": 1.0, "rollout_batch_size": 64,
                        "updates_per_step": 2, "first_fit_updates": 0})


def _model(version: int, expressions=TRUE) -> str:
    """A ``/sym_mbrl/dynamics_model`` message (the learner's model file)."""
    return json.dumps({"format": "sym-mbrl/dynamics-v1", "state_names": list(TASK.state_names),
                       "action_names": list(TASK.action_names), "expressions": expressions,
                       "angle_coords": [0], "provenance": {"version": version}})


def _store(path, n: int = 300) -> np.ndarray:
    """The recorder's store with ``n`` random-action pendulum transitions; returns the states."""
    store = TransitionStore(path, TASK.state_names, TASK.action_names, dt=TASK.dt,
                            task=TASK.name)
    env, rng = TASK.make_env(), np.random.default_rng(0)
    state, states = env.reset(seed=0)[1]["state"], []
    for _ in range(n):
        a = rng.uniform(-2, 2, 1)
        _, r, term, trunc, info = env.step(a)
        store.append(state, a, info["state"], reward=r)
        states.append(state)
        state = info["state"] if not (term or trunc) else env.reset()[1]["state"]
    store.close()
    return np.asarray(states)


def _version(model) -> int | None:
    return None if model is None else model.provenance.get("version")


def test_trainer_installs_models_with_the_bounds_of_its_real_data(graph, tmp_path):
    """The model env the trainer rolls out in carries MBPO's state bounds (the pulled states'
    range widened by rollout_state_margin), so a model that spins the pole up is cut where it
    leaves them, as in the benchmarks (before: no bounds, rollouts to 8 + 10*H rad/s)."""
    states = _store(tmp_path / "transitions.sqlite")
    probe = graph.add(Probe("probe_trainer_bounds"))
    pub = probe.publisher(String, MODEL_TOPIC, QOS_LATCHED)
    trainer = graph.add(PolicyTrainer(**node_args(
        "pendulum", tmp_path, publish_every_s=1000.0, overrides=OVERRIDES, store_poll_s=0.1)))
    pub.publish(String(data=_model(1, SPIN)))
    assert wait_for(lambda: _version(trainer.installed()[0]) == 1, 30)
    env = trainer.mbpo.model_env
    lo, hi = states[:, 1].min(), states[:, 1].max()
    assert hi - lo > 4.0  # random torques swing the pole: a real range to widen
    # the same float64 operations on the same numbers (the store keeps float64), never beyond
    # the robot's envelope (config/pendulum.yaml: |theta_dot| <= 20 rad/s)
    np.testing.assert_allclose([env.state_low[1], env.state_high[1]],
                               [max(lo - (hi - lo), -20.0), min(hi + (hi - lo), 20.0)],
                               rtol=1e-12)
    assert trainer.mbpo.envelope_bounds[1][1] == 20.0  # copied from the parameter file
    assert env.state_low[0] == -np.inf and env.state_high[0] == np.inf  # theta wraps

    # the trainer's own rollouts of the spinning model stop at the bound
    assert wait_for(lambda: len(trainer.mbpo.model_buffer) >= 64, 30)
    buf = trainer.mbpo.model_buffer
    spins = buf.next_observations[: len(buf), 2].numpy()  # observation: cos, sin, theta_dot
    assert spins.max() <= env.state_high[1] + 1e-5  # float32 observations
    assert spins.max() > hi  # it did spin up, within the bounds
    # the same start states in an unbounded model env run the whole horizon, far beyond them
    starts = torch.as_tensor(states[-64:])
    free = ModelEnv(TASK, trainer.mbpo.model).rollout(
        lambda obs: torch.zeros(obs.shape[0], 1), starts, 10)
    cut = env.rollout(lambda obs: torch.zeros(obs.shape[0], 1), starts, 10)
    assert len(free.rewards) == 640 and len(cut.rewards) < 640
    assert free.next_observations[:, 2].max() > 90.0 > env.state_high[1]
    graph.remove(trainer)
    graph.remove(probe)


def test_model_hand_off_keeps_the_newest_and_installs_atomically(graph, tmp_path, monkeypatch):
    """Models arriving while another is being installed: the installed model and the recorded
    model_version never disagree, and the newest model wins (none is lost)."""
    _store(tmp_path / "transitions.sqlite", 100)
    entered, release = threading.Event(), threading.Event()

    class SlowModelEnv(ModelEnv):  # holds the install of model 1 half-way, on the worker thread
        def __init__(self, task, model, **kwargs):
            if _version(model) == 1 and not release.is_set():
                entered.set()
                release.wait(20)
            super().__init__(task, model, **kwargs)

    monkeypatch.setattr(mbpo_module, "ModelEnv", SlowModelEnv)
    monkeypatch.setattr(model_env_module, "ModelEnv", SlowModelEnv)
    trainer = graph.add(PolicyTrainer(**node_args(
        "pendulum", tmp_path, publish_every_s=1000.0, overrides=OVERRIDES, store_poll_s=0.1)))
    try:
        trainer.on_model(String(data=_model(1)))  # what the subscription callback runs
        assert entered.wait(30)
        # mid-install: whatever is visible must be one model with its own version
        assert _version(trainer.mbpo.model) == trainer.model_version
        trainer.on_model(String(data=_model(2)))
        trainer.on_model(String(data=_model(3)))  # supersedes 2 before it was taken
        assert _version(trainer.mbpo.model) == trainer.model_version
    finally:
        release.set()
    assert wait_for(lambda: trainer.installed()[1] == 3, 30)
    model, version = trainer.installed()
    assert _version(model) == version == 3 and trainer.mbpo.model_env.model is model
    assert trainer.diag.counts.get("superseded_models") == 1
    graph.remove(trainer)


def test_latest_model_never_loses_the_newest():
    """Two threads: one puts 1..N as fast as it can, one takes; the last put is always the
    last taken, and what the taker sees only grows."""
    slot, n, seen = LatestModel(), 20000, []
    done = threading.Event()

    def taker():
        while not done.is_set() or slot._model is not None:
            m = slot.take()
            if m is not None:
                seen.append(m)

    t = threading.Thread(target=taker)
    t.start()
    for k in range(1, n + 1):
        slot.put(k)
    done.set()
    t.join(10)
    assert seen[-1] == n and seen == sorted(seen)
