"""Two namespaced lockstep graphs on one DDS domain: each records only its own transitions."""

from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from test_nodes_common import (  # noqa: E402
    PENDULUM,
    Probe,
    RosGraph,
    constant_formula,
    fresh_domain,
    node_args,
    wait_for,
)

from sym_mbrl_ros.data.store import StoreGroup, TransitionStore  # noqa: E402
from sym_mbrl_ros.nodes.common import QOS_LATCHED, QOS_RECORD  # noqa: E402
from sym_mbrl_ros.nodes.controller import Controller  # noqa: E402
from sym_mbrl_ros.nodes.recorder import Recorder  # noqa: E402
from sym_mbrl_ros.nodes.sim_bridge import SimBridge  # noqa: E402

pytestmark = pytest.mark.ros

# small enough that the pendulum never spins up past the envelope (20 rad/s: safe action)
TORQUE = {"robot1": 0.5, "robot2": -0.5}


@pytest.fixture()
def graph():
    rclpy.init(domain_id=fresh_domain())
    g = RosGraph()
    yield g
    g.close()
    rclpy.shutdown()


def _count(path) -> int:
    try:
        with TransitionStore(path, readonly=True) as store:
            return store.count()
    except Exception:  # not created yet
        return 0


def test_two_namespaced_graphs_share_a_domain_without_crosstalk(graph, tmp_path):
    probe = graph.add(Probe("probe_ns"))
    states = {ns: probe.listen(JointState, f"/{ns}/joint_states", QOS_RECORD) for ns in TORQUE}
    root_states = probe.listen(JointState, "/joint_states", QOS_RECORD)
    probe.listen(DiagnosticArray, "/diagnostics", 100)
    for ns, torque in TORQUE.items():  # each robot its own constant policy, latched
        probe.publisher(String, f"/{ns}/sym_mbrl/policy", QOS_LATCHED).publish(
            String(data=constant_formula(PENDULUM, [torque])))
    for k, ns in enumerate(TORQUE):
        run_dir = tmp_path / ns
        graph.add(Recorder(namespace=ns, **node_args("pendulum", run_dir)))
        graph.add(SimBridge(namespace=ns, **node_args("pendulum", run_dir, seed=k)))
        graph.add(Controller(namespace=ns, **node_args("pendulum", run_dir, policy_noise=0.0,
                                                       seed=k)))
    paths = {ns: tmp_path / ns / "transitions.sqlite" for ns in TORQUE}
    assert wait_for(lambda: all(_count(p) >= 120 for p in paths.values()), timeout=90), \
        {ns: _count(p) for ns, p in paths.items()}
    for ns in TORQUE:  # /diagnostics is shared; the status names keep the robots apart
        assert wait_for(lambda ns=ns: probe.diagnostics(f"{ns}/controller").get(
            "policies") == "1", timeout=5)
    for node in list(graph.nodes):
        if node is not probe:
            graph.remove(node)
    assert not root_states  # nothing on the root namespace's topics

    published = {ns: {(m.position[0], m.velocity[0]) for m, _, _ in box}
                 for ns, box in states.items()}
    assert not published["robot1"] & published["robot2"]  # two different pendulums
    for ns, torque in TORQUE.items():
        other = "robot2" if ns == "robot1" else "robot1"
        with TransitionStore(paths[ns], readonly=True) as store:
            batch = store.read()
            assert store.robot == ns
        # once the latched policy is loaded every command is this robot's own torque, or the
        # watchdog's safe zero (a starved CPU delays a state past 3 periods); a command of
        # the other graph would show up as the other sign
        tail = batch.actions[-80:, 0]
        assert set(tail.tolist()) <= {torque, 0.0} and np.mean(tail == torque) > 0.5
        assert not np.any(batch.actions[:, 0] == TORQUE[other])
        stored = {(s[0], s[1]) for s in batch.next_states}
        # the probe may still be handling the graph's last states when the nodes go (a fresh
        # clone under load stored one state the probe had not yet taken): let it catch up
        wait_for(lambda ns=ns, stored=stored: stored <= {
            (m.position[0], m.velocity[0]) for m, _, _ in list(states[ns])}, timeout=5)
        published[ns] = {(m.position[0], m.velocity[0]) for m, _, _ in list(states[ns])}
        assert stored <= published[ns] and not stored & published[other]

    group = StoreGroup(list(paths.values()))  # a fleet's learner reads both as one pool
    pooled = group.read_new()
    assert len(pooled) == sum(_count(p) for p in paths.values())
    assert group.robots == ["robot1", "robot2"]
    assert np.all(np.diff(pooled.stamps) >= 0)
    for i, ns in enumerate(group.robots):
        mine = pooled.actions[pooled.robots == i, 0]
        assert np.any(mine == TORQUE[ns]) and not np.any(mine == -TORQUE[ns])
    assert len(group.read_new()) == 0  # the cursor moved past everything
    group.close()
