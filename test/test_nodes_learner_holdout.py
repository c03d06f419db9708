"""dynamics_learner over real DDS: the held-out transitions are the newest ones."""

from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from std_msgs.msg import String  # noqa: E402
from test_nodes_common import Probe, RosGraph, fresh_domain, node_args, wait_for  # noqa: E402

from sym_mbrl_ros.data.store import TransitionStore  # noqa: E402
from sym_mbrl_ros.dynamics.symbolic import SymbolicDynamics  # noqa: E402
from sym_mbrl_ros.envs import get_task  # noqa: E402
from sym_mbrl_ros.nodes.common import MODEL_TOPIC, QOS_LATCHED  # noqa: E402
from sym_mbrl_ros.nodes.dynamics_learner import DynamicsLearner  # noqa: E402

pytestmark = pytest.mark.ros
TASK = get_task("pendulum")


def test_the_learner_holds_out_the_newest_transitions(tmp_path):
    """300 simulated transitions, then 75 garbage ones: a model that never trained on the
    garbage fits the simulated ones exactly and scores the garbage badly. A random split
    would put ~60 garbage rows into the fit."""
    env = TASK.make_env()
    rng = np.random.default_rng(0)
    s = env.reset(seed=0)[1]["state"]
    states, actions, next_states = [], [], []
    for _ in range(300):
        a = rng.uniform(-2, 2, 1)
        s2 = env.step(a)[4]["state"]
        states.append(s), actions.append(a), next_states.append(s2)
        s = s2
    states, actions, next_states = map(np.array, (states, actions, next_states))
    with TransitionStore(tmp_path / "transitions.sqlite", TASK.state_names, TASK.action_names,
                         dt=TASK.dt, task=TASK.name) as store:
        store.extend(states, actions, next_states)
        store.extend(rng.uniform(-1, 1, (75, 2)), rng.uniform(-2, 2, (75, 1)),
                     rng.uniform(-1, 1, (75, 2)))
    rclpy.init(domain_id=fresh_domain())
    graph = RosGraph()
    try:
        probe = graph.add(Probe("probe_holdout"))
        models = probe.listen(String, MODEL_TOPIC, QOS_LATCHED)
        graph.add(DynamicsLearner(**node_args("pendulum", tmp_path, min_transitions=300,
                                              poll_s=0.2)))
        assert wait_for(lambda: len(models) >= 1, 60)
        model = SymbolicDynamics.from_json(models[-1][0].data)
        prov = model.provenance
        assert prov["heldout_samples"] == 75 and prov["fit_samples"] == 300
        clean = model.score(states, actions, next_states)
        assert min(clean.values()) > 0.9999, clean  # the pendulum is learned exactly
        assert max(prov["heldout_r2"].values()) < 0.5  # and the garbage was never seen
    finally:
        graph.close()
        rclpy.shutdown()
