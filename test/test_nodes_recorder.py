"""recorder over real DDS: pairing into SQLite, episodes, garbage input, restart and kill -9."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from test_nodes_common import (  # noqa: E402
    ROOT,
    Probe,
    command,
    joint_state,
    node_args,
    wait_for,
)

from sym_mbrl_ros.data.store import TransitionStore  # noqa: E402
from sym_mbrl_ros.envs import get_task  # noqa: E402
from sym_mbrl_ros.nodes.common import EPISODE_TOPIC, QOS_EVENTS  # noqa: E402
from sym_mbrl_ros.nodes.recorder import Recorder  # noqa: E402

pytestmark = pytest.mark.ros
CMD = "/effort_controller/commands"
TASK = get_task("pendulum")


@pytest.fixture()
def probe(graph, request):
    p = graph.add(Probe(f"probe_{request.node.name[:40]}"))
    p.listen(DiagnosticArray, "/diagnostics")
    p.publisher(JointState, "/joint_states")
    p.publisher(Float64MultiArray, CMD)
    p.publisher(String, EPISODE_TOPIC, QOS_EVENTS)
    yield p
    graph.remove(p)


def _event(probe, boundary_ns: int, mode: str = "lockstep", episode: int = 1) -> None:
    probe._pubs[EPISODE_TOPIC].publish(String(data=json.dumps(
        {"episode": episode, "boundary_ns": boundary_ns, "reason": "test", "mode": mode})))


def _lockstep(probe, states, actions, gap: float = 0.002) -> list[int]:
    """Publish s0, a0, s1, a1, ..., sN the way a lockstep bridge and a controller would."""
    stamps = []
    for k, s in enumerate(states):
        ns = time.time_ns()
        stamps.append(ns)
        probe._pubs["/joint_states"].publish(joint_state(["hinge"], [s[0]], [s[1]], ns))
        time.sleep(gap)
        if k < len(actions):
            probe._pubs[CMD].publish(command(actions[k]))
            time.sleep(gap)
    return stamps


def _connected(probe, recorder_subs: int = 1) -> None:
    for topic in ("/joint_states", CMD, EPISODE_TOPIC):
        assert probe.wait_matched(topic)
    time.sleep(0.3)  # the recorder's side of discovery


def test_round_trip_into_sqlite_then_restart(graph, probe, tmp_path):
    rec = graph.add(Recorder(**node_args("pendulum", tmp_path)))
    _connected(probe)
    rng = np.random.default_rng(0)
    states, actions = rng.uniform(-1, 1, (9, 2)), rng.uniform(-2, 2, (8, 1))
    _event(probe, time.time_ns() - 1)
    time.sleep(0.2)
    _lockstep(probe, states, actions)
    store = TransitionStore(tmp_path / "transitions.sqlite", readonly=True)
    assert wait_for(lambda: store.count() == 8), store.count()
    b = store.read()
    np.testing.assert_allclose(b.states, states[:-1])
    np.testing.assert_allclose(b.actions, actions)
    np.testing.assert_allclose(b.next_states, states[1:])
    np.testing.assert_allclose(b.rewards, TASK.reward(states[:-1], actions, states[1:]))
    (ep,) = store.episodes()
    assert ep.steps == 8 and ep.source == "sim"

    # a new episode: the command answering the last state is not stored across the boundary
    boundary = time.time_ns()
    probe._pubs[CMD].publish(command([0.0]))
    _event(probe, boundary, episode=2)
    time.sleep(0.2)
    _lockstep(probe, states[:3], actions[:2])
    assert wait_for(lambda: store.count() == 10)
    assert wait_for(lambda: probe.diagnostics("recorder").get("skipped/episode_boundary") == "1")
    eps = store.episodes()
    assert [e.steps for e in eps] == [8, 2] and eps[0].closed

    # restart: the same store, appended to; the episode in progress goes on
    graph.remove(rec)
    rec = graph.add(Recorder(**node_args("pendulum", tmp_path)))
    _connected(probe)
    _lockstep(probe, states[:3], actions[:2])
    assert wait_for(lambda: store.count() == 12)
    assert [e.steps for e in store.episodes()] == [8, 4]
    assert store.read().ids.tolist() == list(range(1, 13))
    graph.remove(rec)


def test_hold_pairing_needs_one_control_period(graph, probe, tmp_path):
    rec = graph.add(Recorder(**node_args("pendulum", tmp_path, pairing="hold")))
    _connected(probe)
    rng = np.random.default_rng(1)
    states, actions = rng.uniform(-1, 1, (12, 2)), rng.uniform(-2, 2, (11, 1))
    # a real-time loop: a state every dt, the command right after it
    for k, s in enumerate(states):
        t0 = time.monotonic()
        probe._pubs["/joint_states"].publish(joint_state(["hinge"], [s[0]], [s[1]]))
        time.sleep(0.002)
        if k < len(actions):
            probe._pubs[CMD].publish(command(actions[k]))
        time.sleep(max(0.0, TASK.dt - (time.monotonic() - t0)))
    store = TransitionStore(tmp_path / "transitions.sqlite", readonly=True)
    assert wait_for(lambda: store.count() >= 5, 5)  # a loaded CPU may cost a few periods
    b = store.read()
    for s, a, s2 in zip(b.states, b.actions, b.next_states):
        k = int(np.argmin(np.abs(states - s).sum(1)))
        np.testing.assert_allclose(np.r_[s, a, s2], np.r_[states[k], actions[k], states[k + 1]])
    assert store.episodes()[0].source == "recorder"  # no simulator: the recorder's own episodes
    # a command held for half a period, or one with no state a period later, is not stored
    js, cmd = probe._pubs["/joint_states"], probe._pubs[CMD]
    js.publish(joint_state(["hinge"], [0.0], [0.0]))  # (decides the loop's last command)
    time.sleep(0.3)
    count = store.count()
    js.publish(joint_state(["hinge"], [0.05], [0.05]))
    cmd.publish(command([0.5]))
    time.sleep(TASK.dt / 2)
    js.publish(joint_state(["hinge"], [0.1], [0.1]))
    cmd.publish(command([0.6]))  # the first command was in force for half a period only
    time.sleep(3 * TASK.dt)  # ...and the second finds no state one period later
    js.publish(joint_state(["hinge"], [0.2], [0.2]))
    time.sleep(0.1)
    js.publish(joint_state(["hinge"], [0.3], [0.3]))
    assert wait_for(lambda: {"dropped/bad_period", "dropped/no_state_after"}
                    <= set(probe.diagnostics("recorder")), 5), probe.diagnostics("recorder")
    assert store.count() == count
    graph.remove(rec)


def test_garbage_input_is_dropped_and_counted(graph, probe, tmp_path):
    rec = graph.add(Recorder(**node_args("pendulum", tmp_path)))
    _connected(probe)
    js = probe._pubs["/joint_states"]
    now = time.time_ns()
    js.publish(joint_state(["hinge"], [0.1, 0.2], [0.0, 0.0]))  # wrong length
    js.publish(joint_state(["knee"], [0.2]))  # lacks the task's joint
    js.publish(joint_state(["hinge"], [float("nan")], [0.0]))  # NaN
    js.publish(joint_state(["hinge"], [0.1], [0.1], now - 30 * 10**9))  # stale
    js.publish(joint_state(["hinge"], [0.1], [0.1], now))
    js.publish(joint_state(["hinge"], [0.1], [0.1], now - 10**6))  # out of order
    probe._pubs[CMD].publish(command([0.1, 0.2]))  # wrong size
    probe._pubs[EPISODE_TOPIC].publish(String(data="{not json"))
    expected = ("wrong_length", "missing_joint", "nan", "stale", "out_of_order", "wrong_size",
                "bad_episode")
    assert wait_for(lambda: all(probe.diagnostics("recorder").get(f"dropped/{r}") == "1"
                                for r in expected), 5), probe.diagnostics("recorder")
    # and the node still records
    _event(probe, time.time_ns() - 1)
    time.sleep(0.2)
    rng = np.random.default_rng(2)
    _lockstep(probe, rng.uniform(-1, 1, (4, 2)), rng.uniform(-2, 2, (3, 1)))
    store = TransitionStore(tmp_path / "transitions.sqlite", readonly=True)
    assert wait_for(lambda: store.count() == 3)
    graph.remove(rec)


@pytest.mark.slow
def test_kill_9_of_the_recorder_loses_at_most_the_transition_in_flight(graph, probe, tmp_path):
    params = tmp_path / "run.yaml"
    params.write_text(f"recorder:\n  ros__parameters:\n    run_dir: {tmp_path}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sym_mbrl_ros.nodes.recorder", "--ros-args", "--params-file",
         str(ROOT / "config" / "pendulum.yaml"), "--params-file", str(params)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: probe._pubs[CMD].get_subscription_count() > 0, 60)
        _connected(probe)
        _event(probe, time.time_ns() - 1)
        time.sleep(0.3)
        rng = np.random.default_rng(3)
        states, actions = rng.uniform(-1, 1, (21, 2)), rng.uniform(-2, 2, (21, 1))
        _lockstep(probe, states, actions)  # 20 complete transitions + 1 command in flight
        path = tmp_path / "transitions.sqlite"
        assert wait_for(lambda: path.exists(), 10)
        store = TransitionStore(path, readonly=True)
        assert wait_for(lambda: store.count() == 20, 10)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        store.close()
        with TransitionStore(path) as st:  # reopened for writing: the next recorder's view
            assert st.count() == 20
            assert st._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            np.testing.assert_allclose(st.read().next_states, states[1:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_locked_store_delays_transitions_and_loses_none(graph, probe, tmp_path):
    rec = graph.add(Recorder(**node_args("pendulum", tmp_path)))
    _connected(probe)
    path = tmp_path / "transitions.sqlite"
    store = TransitionStore(path, readonly=True)
    blocker = sqlite3.connect(str(path), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the lock: every write fails
    rng = np.random.default_rng(4)
    states, actions = rng.uniform(-1, 1, (11, 2)), rng.uniform(-2, 2, (10, 1))
    _event(probe, time.time_ns() - 1)
    time.sleep(0.2)
    _lockstep(probe, states, actions)
    assert wait_for(lambda: probe.diagnostics("recorder").get("store_backlog") == "10", 5), (
        probe.diagnostics("recorder"))
    time.sleep(1.0)  # a few retries, all refused
    diag = probe.diagnostics("recorder")
    assert int(diag["store_errors"]) >= 2 and "locked" in diag["store_last_error"]
    assert store.count() == 0
    blocker.execute("ROLLBACK")  # released: the backlog goes in, in order
    assert wait_for(lambda: store.count() == 10, 5)
    b = store.read()
    np.testing.assert_allclose(b.states, states[:-1])
    np.testing.assert_allclose(b.actions, actions)
    np.testing.assert_allclose(b.next_states, states[1:])
    (ep,) = store.episodes()
    assert ep.steps == 10 and ep.source == "sim"
    assert wait_for(lambda: probe.diagnostics("recorder").get("store_backlog") == "0", 5)
    assert "dropped/backlog_overflow" not in probe.diagnostics("recorder")
    blocker.close()
    graph.remove(rec)


def test_a_full_backlog_drops_new_transitions_and_says_so(graph, probe, tmp_path):
    rec = graph.add(Recorder(**node_args("pendulum", tmp_path, store_backlog=4)))
    _connected(probe)
    path = tmp_path / "transitions.sqlite"
    store = TransitionStore(path, readonly=True)
    blocker = sqlite3.connect(str(path), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    rng = np.random.default_rng(5)
    states, actions = rng.uniform(-1, 1, (7, 2)), rng.uniform(-2, 2, (6, 1))
    _event(probe, time.time_ns() - 1)
    time.sleep(0.2)
    _lockstep(probe, states, actions)
    assert wait_for(lambda: probe.diagnostics("recorder").get("dropped/backlog_overflow") == "2",
                    5), probe.diagnostics("recorder")
    blocker.execute("ROLLBACK")
    assert wait_for(lambda: store.count() == 4, 5)
    np.testing.assert_allclose(store.read().actions, actions[:4])  # the oldest four were kept
    time.sleep(0.3)
    assert store.count() == 4
    blocker.close()
    graph.remove(rec)
