"""The controller's command echo over real DDS: every command names the state it answered (or
none, for the safe action and the lockstep kick), which is what bench/control_latency.py pairs
commands and states by."""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from bench_loader import load_bench  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray, Int64MultiArray, String  # noqa: E402
from test_nodes_common import (  # noqa: E402
    Probe,
    joint_state,
    node_args,
    wait_for,
)
from test_nodes_controller import model_message  # noqa: E402

from sym_mbrl_ros.nodes.common import (  # noqa: E402
    COMMAND_ECHO_TOPIC,
    ESTOP_TOPIC,
    MODEL_TOPIC,
    QOS_LATCHED,
)
from sym_mbrl_ros.nodes.controller import (  # noqa: E402
    ECHO_ANSWER,
    ECHO_FIELDS,
    ECHO_KICK,
    ECHO_SAFE,
    Controller,
)

pytestmark = pytest.mark.ros
ECHO = "/" + COMMAND_ECHO_TOPIC
PLAN_S = 0.03  # the slow planner's think time: six 5 ms state periods


def slow_planner(task, model, **options):
    """A planner that thinks for ``PLAN_S`` and then commands theta_dot / 10: the command's
    value says which state it was computed from, and newer states arrive while it thinks."""
    def act(state):
        time.sleep(PLAN_S)
        return np.array([state[1] / 10.0])
    return act


def records(box) -> list[dict[str, int]]:
    """The echo messages received, as dicts keyed by their dimension's label."""
    out = []
    for msg, _, _ in box:
        assert msg.layout.dim[0].label == ",".join(ECHO_FIELDS)
        out.append(dict(zip(ECHO_FIELDS, (int(v) for v in msg.data))))
    return out


def test_every_command_names_the_state_it_was_computed_from(graph, tmp_path):
    p = graph.add(Probe("probe_echo_answer"))
    cmds = p.listen(Float64MultiArray, "/effort_controller/commands")
    echoes = p.listen(Int64MultiArray, ECHO)
    js = p.publisher(JointState, "/joint_states")
    p.publisher(String, MODEL_TOPIC, QOS_LATCHED).publish(String(data=model_message()))
    ctl = graph.add(Controller(**node_args(
        "pendulum", tmp_path, trigger="state", planner="test_control_latency_echo:slow_planner",
        policy_noise=0.0, estop_settle_s=0.0,  # every command an answer, from the first
        watchdog_periods=1000.0)))  # no watchdog commands between answers on a busy machine
    try:
        assert wait_for(lambda: ctl.policy is not None, 20) and p.wait_matched("/joint_states")
        published: dict[int, float] = {}  # stamp -> the state's velocity
        for i in range(150):  # 200 Hz, much faster than the planner answers
            ns, velocity = time.time_ns(), -3.0 + 0.04 * i
            js.publish(joint_state(["hinge"], [0.2], [velocity], ns=ns))
            published[ns] = velocity
            time.sleep(0.005)
        time.sleep(0.5)  # the last answers are out
        assert wait_for(lambda: len(cmds) == len(echoes), 2)
        got = records(echoes)
        assert all(r["kind"] == ECHO_ANSWER for r in got)
        assert np.all(np.diff([r["seq"] for r in got]) > 0)
        stamps = [r["state_stamp_ns"] for r in got]
        assert set(stamps) <= set(published)  # every record names a state that was sent
        assert np.all(np.diff(stamps) > 0)  # no state answered twice, none out of order
        assert 10 <= len(got) < len(published) // 2  # the planner skips most states
        order = sorted(published)
        newer_meanwhile = 0
        for r, (cmd, info, _) in zip(got, cmds):
            # the echo follows its command: sent before the command left, the next one after
            assert r["state_stamp_ns"] <= r["state_received_ns"] <= r["command_sent_ns"] <= \
                info["source_timestamp"]
            # computed from the named state (th_dot / 10 in float64: equal to rounding)
            assert cmd.data[0] == pytest.approx(published[r["state_stamp_ns"]] / 10, abs=1e-12)
            newest = order[np.searchsorted(order, info["source_timestamp"]) - 1]
            newer_meanwhile += newest > r["state_stamp_ns"]
        # the case this is for: while it planned, newer states were published, and pairing
        # with the newest state sent before the command would have named one of them
        assert newer_meanwhile >= len(got) // 2
        # the bench pairs these same messages the same way
        row = load_bench("control_latency").pair_with_answered_states(
            sorted(published), [(info["source_timestamp"], info["received_timestamp"],
                                 m.data[0]) for m, info, _ in cmds],
            [tuple(m.data) for m, _, _ in echoes], rate=200.0, warmup_s=0.0)
        assert (row["answered"], row["skipped"]) == (len(got), len(published) - len(got))
        assert row["unpaired"] == row["unknown_stamp"] == row["no_state"] == 0
        assert row["in_order_agrees"] == "n/a"  # fewer commands than states
        # every answer took the planner's think time inside the controller, and more end to end
        assert PLAN_S * 1e3 <= row["controller_ms_p50"] <= row["latency_ms_p50"]
    finally:
        graph.remove(ctl)
        graph.remove(p)


def test_safe_commands_and_the_lockstep_kick_answer_no_state(graph, tmp_path):
    p = graph.add(Probe("probe_echo_safe"))
    echoes = p.listen(Int64MultiArray, ECHO)
    js = p.publisher(JointState, "/joint_states")
    estop = p.publisher(Bool, ESTOP_TOPIC)
    ctl = graph.add(Controller(**node_args("pendulum", tmp_path)))
    try:
        assert wait_for(lambda: len(echoes) >= 3)  # no state: the watchdog's safe action
        assert all(r["kind"] == ECHO_SAFE and r["state_stamp_ns"] == r["state_received_ns"] == -1
                   for r in records(echoes))
        assert p.wait_matched("/joint_states") and p.wait_matched(ESTOP_TOPIC)
        sent = []
        for _ in range(15):
            sent.append(time.time_ns())
            js.publish(joint_state(["hinge"], [0.3], [0.1], ns=sent[-1]))
            time.sleep(0.02)
        answers = [r for r in records(echoes) if r["kind"] == ECHO_ANSWER]
        assert answers and {r["state_stamp_ns"] for r in answers} <= set(sent)
        estop.publish(Bool(data=True))
        assert wait_for(lambda: ctl.estop)
        time.sleep(0.1)  # an answer sent just before the stop may still be on its way
        n = len(echoes)
        for _ in range(10):  # states keep coming: the e-stop's commands answer none of them
            js.publish(joint_state(["hinge"], [0.3], [0.1]))
            time.sleep(0.02)
        assert wait_for(lambda: len(echoes) >= n + 3)
        assert all(r["kind"] == ECHO_SAFE and r["state_stamp_ns"] == -1
                   for r in records(echoes[n:]))
        estop.publish(Bool(data=False))
        assert wait_for(lambda: not ctl.estop)
    finally:
        graph.remove(ctl)  # (it leaves a safe command and its echo behind)
    time.sleep(0.2)
    # position control in a lockstep simulation: the watchdog kicks with zero until a state
    kick = graph.add(Controller(**node_args("reacher", tmp_path, lockstep_kick=True)))
    try:
        n = len(echoes)
        assert wait_for(lambda: len(echoes) >= n + 3)
        assert all(r["kind"] == ECHO_KICK and r["state_stamp_ns"] == r["state_received_ns"] == -1
                   for r in records(echoes[n:]))
    finally:
        graph.remove(kick)
        graph.remove(p)
