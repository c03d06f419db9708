"""controller over real DDS: lifecycle, watchdog, e-stop, policies, the NaN guard and sync mode."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray, String  # noqa: E402
from test_nodes_common import (  # noqa: E402
    ROOT,
    Probe,
    RosGraph,
    constant_formula,
    fresh_domain,
    joint_state,
    node_args,
    wait_for,
)

from sym_mbrl_ros.envs import get_task  # noqa: E402
from sym_mbrl_ros.nodes.common import (  # noqa: E402
    ESTOP_TOPIC,
    MODEL_TOPIC,
    POLICY_TOPIC,
    QOS_LATCHED,
    TRAINING_TOPIC,
)
from sym_mbrl_ros.nodes.controller import Controller  # noqa: E402

pytestmark = pytest.mark.ros
CMD = "/effort_controller/commands"
TASK = get_task("pendulum")


def nan_planner(task, model, **options):
    """A planner that fails the way a diverging optimiser does (the controller's NaN guard)."""
    return lambda state: np.array([np.nan])


def model_message() -> str:
    """A valid dynamics model message (the pendulum's exact Euler map)."""
    from sym_mbrl_ros.dynamics.symbolic import FORMAT

    return json.dumps({"format": FORMAT, "state_names": ["theta", "theta_dot"],
                       "action_names": ["torque"], "angle_coords": [0],
                       "expressions": ["theta + 0.05*theta_dot",
                                       "theta_dot + 0.75*sin(theta) + 0.15*torque"]})


@pytest.fixture(scope="module")
def graph():
    rclpy.init(domain_id=fresh_domain())
    g = RosGraph()
    yield g
    g.close()
    rclpy.shutdown()


class Feeder:
    """Publishes pendulum JointStates at 50 Hz while ``on``."""

    def __init__(self, probe: Probe):
        self.pub = probe.publisher(JointState, "/joint_states")
        self.on = True
        self.values = [0.3, -0.1]
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            if self.on:
                self.pub.publish(joint_state(["hinge"], [self.values[0]], [self.values[1]]))
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop = True
        self._thread.join()


@pytest.fixture()
def probe(graph, request):
    p = graph.add(Probe(f"probe_{request.node.name[:40]}"))
    p.listen(Float64MultiArray, CMD)
    p.listen(DiagnosticArray, "/diagnostics")
    p.publisher(Bool, ESTOP_TOPIC, QOS_LATCHED)
    p.publisher(String, POLICY_TOPIC, QOS_LATCHED)
    p.feeder = Feeder(p)
    yield p
    p.feeder.stop()
    graph.remove(p)


def _commands(probe, since: int = 0) -> np.ndarray:
    return np.array([m.data[0] for m, _, _ in probe.got[CMD][since:]])


def _lifecycle(probe, transition: int | None = None) -> str:
    if transition is not None:
        client = probe.create_client(ChangeState, "/controller/change_state")
        assert client.wait_for_service(timeout_sec=5)
        future = client.call_async(ChangeState.Request(transition=Transition(id=transition)))
        assert wait_for(future.done) and future.result().success
    client = probe.create_client(GetState, "/controller/get_state")
    assert client.wait_for_service(timeout_sec=5)
    future = client.call_async(GetState.Request())
    assert wait_for(future.done)
    return future.result().current_state.label


def test_lifecycle_transitions(graph, probe, tmp_path):
    ctl = graph.add(Controller(**node_args("pendulum", tmp_path, autostart=False)))
    cmds = probe.got[CMD]
    assert _lifecycle(probe) == "unconfigured"
    assert _lifecycle(probe, Transition.TRANSITION_CONFIGURE) == "inactive"
    time.sleep(0.4)
    assert len(cmds) == 0  # configured but inactive: silent
    assert _lifecycle(probe, Transition.TRANSITION_ACTIVATE) == "active"
    assert wait_for(lambda: len(cmds) >= 10)
    explored = _commands(probe)
    assert np.all(np.abs(explored) <= 2.0) and np.std(explored) > 0.1  # random exploration
    assert _lifecycle(probe, Transition.TRANSITION_DEACTIVATE) == "inactive"
    time.sleep(0.2)
    n = len(cmds)
    assert cmds[-1][0].data[0] == 0.0  # deactivating leaves a zero command behind
    time.sleep(0.4)
    assert len(cmds) == n
    assert _lifecycle(probe, Transition.TRANSITION_CLEANUP) == "unconfigured"
    assert _lifecycle(probe, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN) == "finalized"
    graph.remove(ctl)


def test_watchdog_estop_and_garbage_state(graph, probe, tmp_path):
    probe.feeder.on = False
    ctl = graph.add(Controller(**node_args("pendulum", tmp_path)))
    cmds = probe.got[CMD]
    assert wait_for(lambda: len(cmds) >= 3)  # no state at all: zero commands
    assert np.all(_commands(probe) == 0.0)
    assert wait_for(lambda: int(probe.diagnostics("controller").get("watchdog", 0)) > 0, 5)
    probe.feeder.on = True
    n = len(cmds)
    assert wait_for(lambda: np.count_nonzero(_commands(probe, n)) >= 5)
    probe.feeder.on = False  # the state stream stops: zero commands within a few periods
    time.sleep(4 * TASK.dt + 0.1)
    n = len(cmds)
    assert wait_for(lambda: len(cmds) >= n + 3) and np.all(_commands(probe, n) == 0.0)
    probe.feeder.on = True
    time.sleep(0.3)
    probe._pubs[ESTOP_TOPIC].publish(Bool(data=True))
    time.sleep(0.2)
    n = len(cmds)
    assert wait_for(lambda: len(cmds) >= n + 8) and np.all(_commands(probe, n) == 0.0)
    probe._pubs[ESTOP_TOPIC].publish(Bool(data=False))
    time.sleep(0.2)
    n = len(cmds)
    assert wait_for(lambda: np.count_nonzero(_commands(probe, n)) >= 5)
    probe.feeder.on = False  # (the controller keeps only the newest state: one at a time)
    time.sleep(0.1)
    js = probe.publisher(JointState, "/joint_states")
    js.publish(joint_state(["hinge"], [float("nan")], [0.0]))
    time.sleep(0.2)
    js.publish(joint_state(["hinge", "elbow"], [0.0, 0.0]))
    assert wait_for(lambda: {"dropped/nan", "dropped/unknown_joint"}
                    <= set(probe.diagnostics("controller")), 5)
    graph.remove(ctl)


def test_policy_swap_and_bad_policy(graph, probe, tmp_path):
    ctl = graph.add(Controller(**node_args("pendulum", tmp_path, policy_noise=0.0)))
    cmds = probe.got[CMD]
    probe._pubs[POLICY_TOPIC].publish(String(data=constant_formula(TASK, [1.5])))
    assert wait_for(lambda: len(cmds) > 3 and cmds[-1][0].data[0] == 1.5)
    probe._pubs[POLICY_TOPIC].publish(String(data=constant_formula(TASK, [9.0])))
    assert wait_for(lambda: cmds[-1][0].data[0] == 2.0)  # clipped to the torque limit
    probe._pubs[POLICY_TOPIC].publish(String(data='{"format": "sym-mbrl/policy-v1", "kind":'))
    assert wait_for(lambda: probe.diagnostics("controller").get("dropped/bad_policy") == "1", 5)
    n = len(cmds)
    assert wait_for(lambda: len(cmds) >= n + 5)
    assert np.all(_commands(probe, n) == 2.0)  # the last good policy stays in charge
    graph.remove(ctl)


def test_planner_hook_and_nan_guard(graph, probe, tmp_path):
    ctl = graph.add(Controller(**node_args(
        "pendulum", tmp_path, planner="test_nodes_controller:nan_planner")))
    cmds = probe.got[CMD]
    model = probe.publisher(String, MODEL_TOPIC, QOS_LATCHED)
    model.publish(String(data="not a model"))
    assert wait_for(lambda: probe.diagnostics("controller").get("dropped/bad_model") == "1", 5)
    model.publish(String(data=model_message()))
    assert wait_for(lambda: "dropped/nan_action" in probe.diagnostics("controller"), 5)
    n = len(cmds)
    assert wait_for(lambda: len(cmds) >= n + 5) and np.all(_commands(probe, n) == 0.0)
    graph.remove(ctl)


def test_sync_mode_waits_for_the_trainer(graph, probe, tmp_path):
    ctl = graph.add(Controller(**node_args("pendulum", tmp_path, sync_updates_per_step=10.0)))
    cmds = probe.got[CMD]
    training = probe.publisher(String, TRAINING_TOPIC, QOS_LATCHED)
    assert wait_for(lambda: len(cmds) >= 3)  # no trainer yet: explore freely

    def progress(updates, head_start=0):
        training.publish(String(data=json.dumps({"updates": updates, "transitions": 300,
                                                 "first_model_transitions": 200,
                                                 "head_start_updates": head_start})))

    def paused() -> bool:
        time.sleep(0.3)
        n = len(cmds)
        time.sleep(0.5)
        return len(cmds) == n

    progress(500)  # 500 < 10 * (300 - 200): the world waits, silently (no watchdog)
    assert paused()
    assert wait_for(lambda: int(probe.diagnostics("controller").get("sync_waits", 0)) > 0, 3)
    progress(1000)
    n = len(cmds)
    assert wait_for(lambda: len(cmds) >= n + 3)
    # the trainer's head start in its first model (first_fit_updates) is owed as well
    progress(1000, head_start=4000)
    assert paused()
    progress(5000, head_start=4000)
    n = len(cmds)
    assert wait_for(lambda: len(cmds) >= n + 3)
    graph.remove(ctl)


def test_sigterm_ends_the_controller_process_cleanly_with_a_zero_command(graph, probe, tmp_path):
    """The installed executable (EventsExecutor spin loop): SIGTERM → last command zero, exit 0,
    no exception raised inside a callback."""
    params = tmp_path / "run.yaml"
    params.write_text(f"controller:\n  ros__parameters:\n    run_dir: {tmp_path}\n"
                      "    exploration: uniform\n")
    own = "/sigterm_test/commands"  # its own command topic: no other controller's commands
    cmds = probe.listen(Float64MultiArray, own)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sym_mbrl_ros.nodes.controller", "--ros-args", "--params-file",
         str(ROOT / "config" / "pendulum.yaml"), "--params-file", str(params),
         "-r", f"{CMD}:={own}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # until the fed states are discovered the watchdog sends zeros; then it explores
        assert wait_for(lambda: any(abs(m.data[0]) > 1e-3 for m, *_ in cmds), 60), [
            round(m.data[0], 4) for m, *_ in cmds[-10:]]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert wait_for(lambda: list(cmds[-1][0].data) == [0.0], 3)  # the goodbye command
    assert "Traceback" not in err and "FATAL" not in err, err
