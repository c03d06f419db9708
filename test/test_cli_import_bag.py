"""`sym-mbrl import-bag`: rosbag2 bags (MCAP and sqlite3, written with rosbags' own writer) of
a simulated pendulum run become the simulator's transitions; bad and cut bags."""

from __future__ import annotations

import sqlite3

import mujoco
import numpy as np
import pytest
import torch

rosbags = pytest.importorskip("rosbags")

from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from sym_mbrl_ros.cli import main  # noqa: E402
from sym_mbrl_ros.data.transitions import load_transitions  # noqa: E402
from sym_mbrl_ros.dynamics import SymbolicDynamics  # noqa: E402
from sym_mbrl_ros.envs import get_task  # noqa: E402
from sym_mbrl_ros.envs.base import wrap_angle  # noqa: E402

torch.set_num_threads(1)
TASK = get_task("pendulum")
TS = get_typestore(Stores.ROS2_JAZZY)
T = TS.types
MS = 1_000_000
CMD = "/effort_controller/commands"
STEPS = 100  # control periods per episode


def simulate(seed: int = 0, episodes: int = 2):
    """A random policy on the MuJoCo pendulum, seen as a robot: states at 100 Hz (each of the
    5 physics steps of a control period), stamped with the measurement time plus jitter, a
    command 0.5-4 ms after each state that starts a period. Also returns the env's own
    transitions (env.step on a second env with the same actions)."""
    rng = np.random.default_rng(seed)
    robot, twin = TASK.make_env().unwrapped, TASK.make_env()
    t0 = 1_700_000_000 * 10**9
    states, commands, truth = [], [], []

    def measure(k: int) -> None:  # the k-th state of the episode, stamped with jitter
        jitter = int(rng.uniform(-0.2, 0.2) * MS)
        states.append((t0 + k * 10 * MS + jitter, float(robot.data.qpos[0]),
                       float(robot.data.qvel[0])))

    for ep in range(episodes):
        robot.reset(seed=seed + ep)
        s = twin.reset(seed=seed + ep)[1]["state"]
        measure(0)
        for k in range(STEPS):
            a = rng.uniform(-2.5, 2.5, 1)  # beyond the limits at times: clipped on both sides
            commands.append((states[-1][0] + int(rng.uniform(0.5, 4.0) * MS), a))
            robot._set_control(np.clip(a, -2.0, 2.0))
            for sub in range(5):
                mujoco.mj_step(robot.model, robot.data)
                measure(5 * k + sub + 1)
            s2 = twin.step(np.clip(a, -2.0, 2.0))[4]["state"]
            truth.append((s, np.clip(a, -2, 2), s2))
            s = s2
        t0 = states[-1][0] + 500 * MS  # the robot rests half a second between episodes
    return states, commands, truth


def write_bag(path, states, commands, storage=StoragePlugin.MCAP, joint_names=None,
              topics=("/joint_states", CMD)):
    """A rosbag2 of JointState (with an extra joint) and Float64MultiArray; log times are the
    moment a bag recorder would receive each message."""
    names = joint_names or ["counterweight", "hinge"]
    with Writer(path, version=9, storage_plugin=storage) as w:
        conns = {}
        if "/joint_states" in topics:
            conns["js"] = w.add_connection("/joint_states", "sensor_msgs/msg/JointState",
                                           typestore=TS)
        if CMD in topics:
            conns["cmd"] = w.add_connection(CMD, "std_msgs/msg/Float64MultiArray", typestore=TS)
        out = []
        for ns, pos, vel in states:
            header = T["std_msgs/msg/Header"](
                stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                frame_id="")
            msg = T["sensor_msgs/msg/JointState"](
                header=header, name=names, position=np.array([0.3, pos])[-len(names):],
                velocity=np.array([-0.1, vel])[-len(names):], effort=np.zeros(0))
            out.append((ns + int(0.3 * MS), "js", TS.serialize_cdr(msg, msg.__msgtype__)))
        for ns, a in commands:
            layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
            msg = T["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.asarray(a, float))
            out.append((ns, "cmd", TS.serialize_cdr(msg, msg.__msgtype__)))
        for ns, key, raw in sorted(out, key=lambda x: x[0]):
            if key in conns:
                w.write(conns[key], ns, raw)
    return path


@pytest.fixture(scope="module")
def run():
    return simulate()


def _truth_rows(truth):
    return [np.concatenate(x) for x in truth]


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
def test_a_bag_gives_the_simulators_transitions(tmp_path, run, storage, capsys):
    states, commands, truth = run
    bag = write_bag(tmp_path / "bag", states, commands, storage)
    out = tmp_path / "imported.npz"
    assert main(["import-bag", str(bag), "--task", "pendulum", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    data = load_transitions(out)
    # every control period but the very last, whose command has no state after its window
    assert len(data) == 2 * STEPS - 1 and "imported 199 transitions" in printed
    assert "2 unbroken segments" in printed and "dropped: unpaired 1" in printed
    assert data.state_names == TASK.state_names and data.dt == pytest.approx(TASK.dt)
    got = np.hstack([data.states, data.actions, data.next_states])
    want = np.array(_truth_rows(truth))[:-1]
    # The same MuJoCo steps: positions agree to rounding; the bag holds the unwrapped joint
    # angle, wrapped on import, so 1e-12 allows for wrap(qpos) vs atan2(sin, cos) rounding.
    np.testing.assert_allclose(wrap_angle(got - want), 0.0, atol=1e-12)
    np.testing.assert_array_equal(np.unique(data.episode), [0, 1])


def test_fit_on_an_imported_bag_predicts_the_simulator(tmp_path, run):
    states, commands, _ = run
    bag = write_bag(tmp_path / "bag", states, commands)
    assert main(["import-bag", str(bag), "--task", "pendulum", "--out",
                 str(tmp_path / "bag.npz")]) == 0
    assert main(["fit", str(tmp_path / "bag.npz"), "--out", str(tmp_path / "m.json"), "-q"]) == 0
    fresh = tmp_path / "fresh.npz"
    assert main(["collect", "pendulum", "--steps", "300", "--seed", "11", "--out",
                 str(fresh)]) == 0
    env_data = load_transitions(fresh)
    r2 = SymbolicDynamics.load(tmp_path / "m.json").score(
        env_data.states, env_data.actions, env_data.next_states)
    assert min(r2.values()) > 0.999, r2  # increment R² on env data the model never saw


def test_a_cut_mcap_imports_what_it_holds(tmp_path, run, capsys):
    states, commands, truth = run
    bag = write_bag(tmp_path / "bag", states, commands)
    (mcap,) = bag.glob("*.mcap")
    raw = mcap.read_bytes()
    mcap.write_bytes(raw[: int(0.6 * len(raw))])  # the recorder died mid-file
    out = tmp_path / "cut.npz"
    assert main(["import-bag", str(bag), "--task", "pendulum", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cut short" in printed and "the bag is incomplete" in printed
    data = load_transitions(out)
    assert 80 <= len(data) < 2 * STEPS  # ~60% of the messages: about 120 transitions
    got = np.hstack([data.states, data.actions, data.next_states])
    want = np.array(_truth_rows(truth))[: len(data)]
    np.testing.assert_allclose(wrap_angle(got - want), 0.0, atol=1e-12)  # as above


def test_a_sqlite_bag_with_lost_rows_imports_the_rest(tmp_path, run, capsys):
    states, commands, truth = run
    bag = write_bag(tmp_path / "bag", states, commands, StoragePlugin.SQLITE3)
    (db,) = bag.glob("*.db3")
    with sqlite3.connect(db) as con:
        (n,) = con.execute("SELECT COUNT(*) FROM messages").fetchone()
        con.execute("DELETE FROM messages WHERE id > ?", (n // 2,))
    out = tmp_path / "half.npz"
    assert main(["import-bag", str(bag), "--task", "pendulum", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"read {n // 2} of the {n} messages metadata.yaml lists" in printed
    data = load_transitions(out)
    assert 80 <= len(data) < STEPS + 5  # half the messages: about the first episode
    got = np.hstack([data.states, data.actions, data.next_states])
    want = np.array(_truth_rows(truth))[: len(data)]
    np.testing.assert_allclose(wrap_angle(got - want), 0.0, atol=1e-12)  # as above


def test_bad_bags_exit_2_with_one_sentence(tmp_path, run, capsys):
    states, commands, _ = run
    no_cmd_topic = write_bag(tmp_path / "a", states, commands, topics=("/joint_states",))
    other_joints = write_bag(tmp_path / "b", states, commands, joint_names=["j1", "j2"])
    no_commands = write_bag(tmp_path / "c", states, [], topics=("/joint_states", CMD))
    cases = [
        (no_cmd_topic, "has no /effort_controller/commands topic"),
        (other_joints, "name the joints ['j1', 'j2'], but the state needs ['hinge']"),
        (no_commands, "has no command messages on /effort_controller/commands"),
        (tmp_path / "missing", "does not exist"),
        (tmp_path, "is not a rosbag2 recording"),
    ]
    for bag, message in cases:
        argv = ["import-bag", str(bag), "--task", "pendulum", "--out", str(tmp_path / "x.npz")]
        assert main(argv) == 2, bag
        lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert len(lines) == 1 and message in lines[0], (bag, lines)
        assert lines[0].startswith("sym-mbrl import-bag: error:")
    assert not (tmp_path / "x.npz").exists()
