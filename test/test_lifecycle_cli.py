"""`sym-mbrl controller` over real DDS: activate, e-stop, release and deactivate a running
controller from the command line, in a namespace, and a node that is not there."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from test_nodes_common import (  # noqa: E402
    ROOT,
    Probe,
    RosGraph,
    fresh_domain,
    joint_state,
    node_args,
    wait_for,
)

from sym_mbrl_ros.nodes.controller import Controller  # noqa: E402

pytestmark = pytest.mark.ros
CMD = "effort_controller/commands"


@pytest.fixture(scope="module")
def graph():
    rclpy.init(domain_id=fresh_domain())  # also the domain of the command's processes
    g = RosGraph()
    yield g
    g.close()
    rclpy.shutdown()


@pytest.fixture()
def probe(graph, request):
    p = graph.add(Probe(f"probe_{request.node.name[:40]}"))
    yield p
    graph.remove(p)


def feed(probe: Probe, namespace: str = "") -> None:
    """Pendulum joint states at 50 Hz on ``<namespace>/joint_states`` (a robot's driver)."""
    pub = probe.publisher(JointState, f"{namespace}/joint_states")
    probe.create_timer(0.02, lambda: pub.publish(joint_state(["hinge"], [0.3], [-0.1])))


def cli(*argv: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """``python -m sym_mbrl_ros.cli controller ARGV --timeout T`` in the test's domain."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                               if p]))
    # the process limit only catches a hang: the command's own deadline plus Python's start-up
    # on a loaded machine
    return subprocess.run([sys.executable, "-m", "sym_mbrl_ros.cli", "controller", *argv,
                           "--timeout", f"{timeout:g}"],
                          capture_output=True, text=True, env=env, timeout=timeout + 60)


def values(box, since: int = 0) -> np.ndarray:
    return np.array([m.data[0] for m, _, _ in box[since:]])


def settled(box, after_s: float = 0.15) -> int:
    """An index into ``box`` past every message already under way (DDS delivery is prompt
    here; 0.15 s is dozens of times its latency on a loaded machine)."""
    time.sleep(after_s)
    return len(box)


def test_activate_estop_release_and_deactivate_a_running_controller(graph, probe, tmp_path):
    cmds = probe.listen(Float64MultiArray, f"/{CMD}")
    feed(probe)
    ctl = graph.add(Controller(**node_args("pendulum", tmp_path, autostart=False,
                                           diagnostics_period_s=0.2)))
    out = cli("state")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("/controller: unconfigured")
    assert not cmds  # a robot's controller sends nothing before it is activated

    out = cli("activate")  # unconfigured: configure, then activate
    assert (out.returncode, out.stdout.strip()) == (0, "/controller: active"), out.stderr
    assert wait_for(lambda: len(cmds) >= 10)
    # uniform exploration over [-2, 2] N m has std 1.15; 0.1 only rules out a constant
    assert np.all(np.abs(values(cmds)) <= 2.0) and np.std(values(cmds)) > 0.1

    out = cli("estop")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "/controller: e-stop engaged (active)"
    start = settled(cmds)
    assert wait_for(lambda: len(cmds) >= start + 5)
    assert np.all(values(cmds, start) == 0.0)  # the effort interface's safe action
    out = cli("state")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("/controller: active; diagnostics WARN: e-stop engaged")

    out = cli("release")
    assert out.stdout.strip() == "/controller: e-stop released (active)", out.stderr
    start = settled(cmds)
    assert wait_for(lambda: len(cmds) >= start + 10)
    assert np.std(values(cmds, start)) > 0.1  # exploring again (bound as above)

    out = cli("deactivate")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("/controller: inactive")
    n = settled(cmds)
    assert cmds[-1][0].data[0] == 0.0  # deactivating leaves the safe command behind
    time.sleep(0.4)
    assert len(cmds) == n
    out = cli("deactivate")  # nothing to do is no error
    assert (out.returncode, out.stdout.strip()) == (
        0, "/controller: inactive (not active: it sends no commands)")

    client = probe.create_client(ChangeState, "/controller/change_state")
    assert client.wait_for_service(timeout_sec=5)
    future = client.call_async(ChangeState.Request(
        transition=Transition(id=Transition.TRANSITION_INACTIVE_SHUTDOWN)))
    assert wait_for(future.done) and future.result().success
    out = cli("activate")
    assert out.returncode == 2 and not out.stdout
    assert out.stderr.strip() == ("sym-mbrl controller: error: /controller is finalized and "
                                  "cannot be activated (a finalized node must be restarted)")
    graph.remove(ctl)


def test_a_namespaced_controller_and_a_node_that_is_not_there(graph, probe, tmp_path):
    gc.collect()  # rclpy withdraws a destroyed lifecycle node's services only when collected
    cmds = probe.listen(Float64MultiArray, f"/robot1/{CMD}")
    feed(probe, "/robot1")
    ctl = graph.add(Controller(namespace="robot1",
                               **node_args("pendulum", tmp_path, autostart=False)))

    out = cli("activate", timeout=3)  # the root namespace has no controller
    assert out.returncode == 2 and not out.stdout
    assert out.stderr.strip().startswith("sym-mbrl controller: error: no node /controller "
                                         "answered on ROS_DOMAIN_ID")
    assert "within 3 s; nodes of that name in this domain: /robot1/controller" in out.stderr
    assert not cmds

    domain = os.environ["ROS_DOMAIN_ID"]
    out = cli("activate", "--namespace", "robot1", "--domain-id", domain)
    assert (out.returncode, out.stdout.strip()) == (0, "/robot1/controller: active"), out.stderr
    assert wait_for(lambda: len(cmds) >= 10)
    assert np.std(values(cmds)) > 0.1  # exploring on the robot's state (bound as above)
    out = cli("deactivate", "--namespace", "/robot1/")
    assert out.stdout.startswith("/robot1/controller: inactive"), out.stderr

    out = cli("state", "--node", "nobody", timeout=2)
    assert out.returncode == 2 and not out.stdout
    assert out.stderr.strip().endswith("no node /nobody answered on ROS_DOMAIN_ID "
                                       f"{domain} within 2 s; is it running, in that "
                                       f"namespace?")
    graph.remove(ctl)
