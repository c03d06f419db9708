"""controller over real DDS: lifecycle, watchdog, e-stop, safe actions, the safety envelope,
diagnostic levels, policies, the NaN guard, the loader thread and sync mode."""

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
from geometry_msgs.msg import PointStamped  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray, String  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402
from test_nodes_common import (  # noqa: E402
    ROOT,
    Probe,
    constant_formula,
    joint_state,
    node_args,
    wait_for,
)

from sym_mbrl_ros.envs import get_task  # noqa: E402
from sym_mbrl_ros.nodes.common import (  # noqa: E402
    ERROR,
    ESTOP_TOPIC,
    MODEL_TOPIC,
    OK,
    POLICY_TOPIC,
    QOS_LATCHED,
    TARGET_TOPIC,
    TRAINING_TOPIC,
    WARN,
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


class Feeder:
    """Publishes JointStates of ``names`` at 50 Hz while ``on``; ``values`` holds the
    positions then the velocities (the pendulum's by default)."""

    def __init__(self, probe: Probe, names=("hinge",), values=(0.3, -0.1)):
        self.pub = probe.publisher(JointState, "/joint_states")
        self.on = True
        self.names, self.values = list(names), list(values)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            if self.on:
                n, values = len(self.names), list(self.values)
                self.pub.publish(joint_state(self.names, values[:n], values[n:]))
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
    js.publish(joint_state(["elbow"], [0.0]))  # none of the task's joints
    assert wait_for(lambda: {"dropped/nan", "dropped/missing_joint"}
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


# ----------------------------------------------------------------------------- safety
def _estop_service(probe, engage: bool) -> None:
    client = probe.create_client(SetBool, "/controller/estop")
    assert client.wait_for_service(timeout_sec=5)
    future = client.call_async(SetBool.Request(data=engage))
    assert wait_for(future.done) and future.result().success


def _since(box, after_s: float = 0.15) -> int:
    """An index into ``box`` past every message already under way (DDS delivery is prompt
    here; 0.15 s is dozens of times its latency on a loaded machine)."""
    time.sleep(after_s)
    return len(box)


def test_reacher_safe_action_holds_the_measured_position(graph, tmp_path):
    """Position control: e-stop and deactivate hold where the arm is, not at zero."""
    p = graph.add(Probe("probe_reacher"))
    cmds = p.listen(Float64MultiArray, "/position_controller/commands")
    p.listen(DiagnosticArray, "/diagnostics")
    feeder = Feeder(p, ["shoulder", "elbow"], [0.7, -1.2, 0.0, 0.0])
    target = PointStamped()
    target.header.stamp.sec = int(time.time()) - 1
    target.header.frame_id = "base_link"  # reacher's world_frame (another frame is dropped)
    target.point.x, target.point.y = 0.1, 0.05
    p.publisher(PointStamped, TARGET_TOPIC, QOS_LATCHED).publish(target)
    ctl = graph.add(Controller(**node_args("reacher", tmp_path, policy_noise=0.0)))
    try:
        assert wait_for(lambda: len(cmds) >= 10)
        explored = np.array([m.data for m, *_ in cmds])
        assert np.std(explored, axis=0).min() > 0.1  # exploring: the arm is moving
        _estop_service(p, True)
        n = _since(cmds)
        assert wait_for(lambda: len(cmds) >= n + 5)
        held = np.array([m.data for m, *_ in cmds[n:]])
        # the measured positions, copied (not computed), so exactly equal
        assert np.all(held == [0.7, -1.2]), held[:3]
        feeder.values = [0.5, 0.4, 0.0, 0.0]  # pushed while held: the hold does not follow
        n = _since(cmds, 0.3)
        assert wait_for(lambda: len(cmds) >= n + 5)
        assert np.all(np.array([m.data for m, *_ in cmds[n:]]) == [0.7, -1.2])
        _estop_service(p, False)
        n = _since(cmds)
        assert wait_for(lambda: len(cmds) >= n + 5)
        assert np.any(np.array([m.data for m, *_ in cmds[n:]]) != [0.5, 0.4])  # exploring
        assert _lifecycle(p, Transition.TRANSITION_DEACTIVATE) == "inactive"
        time.sleep(0.2)
        assert list(cmds[-1][0].data) == [0.5, 0.4]  # left holding its measured position
    finally:
        feeder.stop()
        graph.remove(ctl)
        graph.remove(p)


def test_the_first_commands_are_safe_until_a_latched_estop_could_have_arrived(
        graph, probe, tmp_path):
    # a stop latched before the controller started reaches it only once DDS has discovered
    # the publisher; on a loaded machine the first explore command (-0.92) went out before it
    ctl = graph.add(Controller(**node_args("pendulum", tmp_path, estop_settle_s=1.0)))
    cmds = probe.got[CMD]
    try:
        assert wait_for(lambda: len(cmds) >= 5)
        assert np.all(_commands(probe)[:5] == 0.0)  # 5 ticks of 50 ms: inside the 1 s window
        assert wait_for(lambda: np.count_nonzero(_commands(probe)) >= 3)  # exploring after it
    finally:
        graph.remove(ctl)


def test_estop_from_any_publisher_survives_reconfigure(graph, probe, tmp_path):
    probe._pubs[ESTOP_TOPIC].publish(Bool(data=True))  # latched before the controller exists
    ctl = graph.add(Controller(**node_args("pendulum", tmp_path, diagnostics_period_s=0.2)))
    cmds = probe.got[CMD]
    mode = lambda: probe.diagnostics("controller").get("mode")  # noqa: E731
    assert wait_for(lambda: mode() == "estop" and len(cmds) >= 5)
    assert np.all(_commands(probe) == 0.0)
    assert wait_for(lambda: probe.level("controller") == WARN)
    probe._pubs[ESTOP_TOPIC].publish(Bool(data=False))  # the latched publisher releases it
    n = _since(cmds)
    assert wait_for(lambda: np.count_nonzero(_commands(probe, n)) >= 3)

    # `ros2 topic pub` style: reliable, volatile (no transient-local durability)
    plain = probe.create_publisher(Bool, ESTOP_TOPIC, 10)
    assert wait_for(lambda: plain.get_subscription_count() >= 1, 5)
    plain.publish(Bool(data=True))
    assert wait_for(lambda: mode() == "estop")
    n = _since(cmds)
    assert wait_for(lambda: len(cmds) >= n + 5) and np.all(_commands(probe, n) == 0.0)

    # cleanup -> configure -> activate: still stopped (the latched publisher still holds a
    # stale false; it must not release the stop)
    for transition, label in ((Transition.TRANSITION_DEACTIVATE, "inactive"),
                              (Transition.TRANSITION_CLEANUP, "unconfigured"),
                              (Transition.TRANSITION_CONFIGURE, "inactive"),
                              (Transition.TRANSITION_ACTIVATE, "active")):
        assert _lifecycle(probe, transition) == label
    n = _since(cmds, 0.5)
    assert wait_for(lambda: len(cmds) >= n + 8) and np.all(_commands(probe, n) == 0.0)
    assert mode() == "estop"
    plain.publish(Bool(data=False))  # only an explicit release releases it
    n = _since(cmds)
    assert wait_for(lambda: np.count_nonzero(_commands(probe, n)) >= 3)
    probe.destroy_publisher(plain)
    graph.remove(ctl)


def test_envelope_watchdog_and_estop_set_the_diagnostic_level(graph, probe, tmp_path):
    ctl = graph.add(Controller(**node_args("pendulum", tmp_path, policy_noise=0.0,
                                           diagnostics_period_s=0.2)))
    cmds = probe.got[CMD]
    message = lambda: probe.status("controller").message  # noqa: E731
    assert wait_for(lambda: probe.level("controller") == OK and len(cmds) > 5)
    probe.feeder.values = [0.3, 25.0]  # spinning faster than the envelope's 20 rad/s
    assert wait_for(lambda: probe.level("controller") == ERROR, 5)
    assert "velocity.hinge = 25 outside [-20, 20]" in message()
    n = _since(cmds)
    assert wait_for(lambda: len(cmds) >= n + 5) and np.all(_commands(probe, n) == 0.0)
    probe.feeder.values = [0.3, -0.1]  # back inside: exploring again, OK again
    assert wait_for(lambda: probe.level("controller") == OK, 5)
    n = _since(cmds)
    assert wait_for(lambda: np.count_nonzero(_commands(probe, n)) >= 3)
    assert int(probe.diagnostics("controller")["envelope_violations"]) == 1

    probe.feeder.on = False
    assert wait_for(lambda: probe.level("controller") == ERROR, 5)
    assert "no fresh state" in message()
    probe.feeder.on = True
    assert wait_for(lambda: probe.level("controller") == OK, 5)
    _estop_service(probe, True)
    assert wait_for(lambda: probe.level("controller") == WARN, 5)
    assert "e-stop engaged" in message()
    _estop_service(probe, False)
    assert wait_for(lambda: probe.level("controller") == OK, 5)
    graph.remove(ctl)


def _formula_policy(expression: str) -> str:
    return constant_formula(TASK, [1.0]).replace('"1.0"', json.dumps(expression))


def test_non_finite_formulas_get_the_safe_action(graph, probe, tmp_path):
    """A formula that yields NaN, then one that yields inf: the guard counts them and sends
    zero torque (not 0-by-accident for NaN, not full torque for inf)."""
    ctl = graph.add(Controller(**node_args("pendulum", tmp_path, policy_noise=0.0,
                                           diagnostics_period_s=0.2)))
    cmds = probe.got[CMD]

    def count(key: str) -> int:
        return int(probe.diagnostics("controller").get(key, 0))

    def guarded(expression: str, k: int) -> None:
        probe._pubs[POLICY_TOPIC].publish(String(data=_formula_policy(expression)))
        assert wait_for(lambda: count("policies") == k, 5)
        before = count("dropped/nan_action")
        assert wait_for(lambda: count("dropped/nan_action") >= before + 5, 5)
        n = _since(cmds)
        assert wait_for(lambda: len(cmds) >= n + 5) and np.all(_commands(probe, n) == 0.0)

    guarded("sqrt(-1 - o2*o2)", 1)
    guarded("exp(1000 + o2)", 2)
    graph.remove(ctl)


LOADS: dict = {"running": 0, "most": 0, "built": []}
_LOADS_LOCK = threading.Lock()


def slow_planner(task, model, **options):
    """A planner whose set-up takes 0.15 s and records how many set-ups run at once."""
    with _LOADS_LOCK:
        LOADS["running"] += 1
        LOADS["most"] = max(LOADS["most"], LOADS["running"])
    time.sleep(0.15)
    with _LOADS_LOCK:
        LOADS["running"] -= 1
        LOADS["built"].append(model.expression_strings()[1])
    return lambda state: np.zeros(1)


def test_one_loader_thread_and_the_newest_message_wins(graph, probe, tmp_path):
    ctl = graph.add(Controller(**node_args("pendulum", tmp_path, autostart=False,
                                           planner="test_nodes_controller:slow_planner")))
    messages = [model_message().replace("0.15*torque", f"0.{k + 10}*torque") for k in range(8)]
    for text in messages:  # as the subscription would deliver them, faster than they load
        ctl.on_model(String(data=text))
        time.sleep(0.01)
    assert wait_for(lambda: not ctl._loader_busy, 10)
    built = LOADS["built"]
    assert LOADS["most"] == 1
    assert "0.17*torque" in built[-1] and len(built) < len(messages)  # the newest one won
    assert ctl.diag.get("superseded/model") == len(messages) - len(built)
    assert ctl.diag.get("models") == len(built)
    graph.remove(ctl)


def test_position_control_sends_nothing_before_a_measurement_unless_kicking_a_lockstep_sim(
        graph, tmp_path):
    from sym_mbrl_ros.nodes.sim_bridge import SimBridge

    p = graph.add(Probe("probe_kick"))
    cmds = p.listen(Float64MultiArray, "/position_controller/commands")
    ctl = graph.add(Controller(**node_args("reacher", tmp_path, lockstep_kick=False)))
    time.sleep(1.0)  # the watchdog (3 periods, 0.12 s) fires all along: still nothing sent
    assert len(cmds) == 0
    graph.remove(ctl)
    bridge = graph.add(SimBridge(**node_args("reacher", tmp_path)))  # lockstep: waits for us
    ctl = graph.add(Controller(**node_args("reacher", tmp_path)))  # the sim config kicks
    assert wait_for(lambda: bridge.diag.get("steps") >= 20, 20)  # the exchange runs
    graph.remove(ctl)
    graph.remove(bridge)
    graph.remove(p)
