"""dynamics_learner and policy_trainer over real DDS: what they publish, bad input, restarts."""

from __future__ import annotations

import json

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from test_nodes_common import Probe, node_args, wait_for  # noqa: E402

from sym_mbrl_ros.data.store import TransitionStore  # noqa: E402
from sym_mbrl_ros.dynamics.symbolic import SymbolicDynamics  # noqa: E402
from sym_mbrl_ros.envs import get_task  # noqa: E402
from sym_mbrl_ros.nodes.common import (  # noqa: E402
    MODEL_TOPIC,
    POLICY_TOPIC,
    QOS_LATCHED,
    TRAINING_TOPIC,
)
from sym_mbrl_ros.nodes.dynamics_learner import DynamicsLearner  # noqa: E402
from sym_mbrl_ros.nodes.policies import load_policy  # noqa: E402
from sym_mbrl_ros.nodes.policy_trainer import PolicyTrainer  # noqa: E402

pytestmark = pytest.mark.ros
TASK = get_task("pendulum")


def _record(store: TransitionStore, env, state, n: int, rng) -> np.ndarray:
    """What the recorder would store: random actions in the simulator; returns the last state."""
    for _ in range(n):
        a = rng.uniform(-2, 2, 1)
        _, r, term, trunc, info = env.step(a)
        store.append(state, a, info["state"], reward=r)
        state = info["state"]
        if term or trunc:
            _, info = env.reset()
            state = info["state"]
    return state


def _version(msg) -> int:
    return json.loads(msg.data)["provenance"]["version"]


@pytest.mark.slow
def test_learner_then_trainer_then_restarts(graph, tmp_path):
    rng = np.random.default_rng(0)
    env = TASK.make_env()
    store = TransitionStore(tmp_path / "transitions.sqlite", TASK.state_names, TASK.action_names,
                            dt=TASK.dt, task=TASK.name)
    state = _record(store, env, env.reset(seed=0)[1]["state"], 250, rng)
    probe = graph.add(Probe("probe_learning"))
    models = probe.listen(String, MODEL_TOPIC, QOS_LATCHED)
    policies = probe.listen(String, POLICY_TOPIC, QOS_LATCHED)
    progress = probe.listen(String, TRAINING_TOPIC, QOS_LATCHED)
    probe.listen(DiagnosticArray, "/diagnostics")
    params = dict(refit_every=100, min_transitions=200, poll_s=0.2)
    learner = graph.add(DynamicsLearner(**node_args("pendulum", tmp_path, **params)))
    assert wait_for(lambda: len(models) >= 1, 60)
    model = SymbolicDynamics.from_json(models[-1][0].data)  # the message is the model file
    prov = model.provenance
    assert prov["version"] == 1 and prov["transitions"] == 250
    assert min(prov["heldout_r2"].values()) > 0.999  # the pendulum is easy to learn exactly
    assert (tmp_path / "models" / "dynamics_0001.json").read_text() == models[-1][0].data
    _record(store, env, state, 120, rng)  # refit_every new transitions: a warm-started refit
    assert wait_for(lambda: _version(models[-1][0]) == 2, 60)
    assert (tmp_path / "models" / "latest.json").read_text() == models[-1][0].data

    trainer = graph.add(PolicyTrainer(**node_args("pendulum", tmp_path, publish_every_s=1.0)))
    assert wait_for(lambda: len(policies) >= 1, 60)
    act, msg = load_policy(policies[-1][0].data, TASK)  # path + sha256 of a weights file
    assert msg["kind"] == "weights" and msg["version"] == 1 and msg["info"]["model_version"] == 2
    assert np.all(np.abs(act(np.array([np.pi, 0.0]))) <= 2.0)
    assert wait_for(lambda: len(progress) and json.loads(progress[-1][0].data)["updates"] > 0)
    bad = probe.publisher(String, MODEL_TOPIC, QOS_LATCHED)
    bad.publish(String(data='{"format": "sym-mbrl/dynamics-v1", "expressions": ["theta +"]}'))
    assert wait_for(lambda: probe.diagnostics("policy_trainer").get("dropped/bad_model") == "1",
                    5)
    graph.remove(trainer)

    # restarts: the learner republishes its newest model without refitting; the trainer goes
    # on from its newest policy file, numbering after it
    graph.remove(learner)
    bad.publish(String(data=(tmp_path / "models" / "latest.json").read_text()))
    graph.remove(probe)
    probe = graph.add(Probe("probe_learning_2"))
    models = probe.listen(String, MODEL_TOPIC, QOS_LATCHED)
    policies = probe.listen(String, POLICY_TOPIC, QOS_LATCHED)
    learner = graph.add(DynamicsLearner(**node_args("pendulum", tmp_path, **params)))
    assert wait_for(lambda: any(_version(m) == 2 for m, _, _ in models), 10)
    n_policies = len(list((tmp_path / "policies").glob("policy_*.pt")))
    trainer = graph.add(PolicyTrainer(**node_args("pendulum", tmp_path, publish_every_s=1.0)))
    assert wait_for(lambda: any(json.loads(m.data)["version"] > n_policies
                                for m, _, _ in policies), 60)
    assert not (tmp_path / "models" / "dynamics_0003.json").exists()
    graph.remove(trainer)
    graph.remove(learner)
    graph.remove(probe)
