"""End to end: `sym-mbrl up pendulum` with a small budget, watched over real DDS."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from test_nodes_common import Probe, RosGraph, fresh_domain  # noqa: E402

from sym_mbrl_ros.data.store import TransitionStore  # noqa: E402
from sym_mbrl_ros.nodes.common import MODEL_TOPIC, POLICY_TOPIC, QOS_LATCHED  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]


@pytest.fixture(scope="module")
def graph():
    rclpy.init(domain_id=fresh_domain())  # also the domain of the child processes
    g = RosGraph()
    yield g
    g.close()
    rclpy.shutdown()


def test_sym_mbrl_up_pendulum_small_budget(graph, tmp_path):
    probe = graph.add(Probe("probe_up"))
    models = probe.listen(String, MODEL_TOPIC, QOS_LATCHED)
    policies = probe.listen(String, POLICY_TOPIC, QOS_LATCHED)
    commands = probe.listen(Float64MultiArray, "/effort_controller/commands")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "sym_mbrl_ros.cli", "up", "pendulum", "--steps", "600",
         "--speed", "3", "--sync", "0", "--seed", "1", "--out", str(out),
         "--param", "dynamics_learner.min_transitions=150",
         "--param", "dynamics_learner.refit_every=150",
         "--param", "policy_trainer.publish_every_s=1.0"],
        capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "episode   1: return" in proc.stdout and "model v1" in proc.stdout
    with TransitionStore(out / "transitions.sqlite", readonly=True) as store:
        assert store.count() >= 600
        assert len(store.episodes()) >= 3  # 200-step episodes
    # (the probe may match the controller a moment after its first commands)
    assert len(models) >= 1 and len(policies) >= 1 and len(commands) >= 400
    assert json.loads(policies[-1][0].data)["kind"] == "weights"
    assert sorted((out / "models").glob("dynamics_*.json"))
    assert sorted((out / "policies").glob("policy_*.pt"))
    for name in ("config.json", "params.yaml", "summary.json", "curve.png", "policy.pt",
                 "model.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 1 and config["steps"] == 600
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reason"] == "step budget used" and summary["steps"] >= 600
    graph.remove(probe)


def _children(pid: int, word: str) -> list[int]:
    """Pids of the direct children of ``pid`` whose command line contains ``word`` (Linux)."""
    from pathlib import Path

    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        if ppid == pid and word in cmdline:
            found.append(int(stat.parent.name))
    return found


def _stored(path) -> int:
    try:
        with TransitionStore(path, readonly=True) as store:
            return store.count()
    except Exception:  # not created yet
        return 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_up_respawns_a_killed_recorder_and_keeps_recording(graph, tmp_path):
    import os
    import signal

    from test_nodes_common import wait_for

    # (the graph fixture put this module on a domain of its own, which the children inherit)
    out = tmp_path / "run"
    store = out / "transitions.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sym_mbrl_ros.cli", "up", "pendulum", "--steps", "700",
         "--speed", "3", "--sync", "0", "--seed", "2", "--out", str(out), "--max-wall", "150",
         "--param", "dynamics_learner.min_transitions=150",
         "--param", "dynamics_learner.refit_every=150"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: _stored(store) >= 150, timeout=120, period=0.2), \
            "no transitions recorded"
        (victim,) = _children(proc.pid, "recorder")
        os.kill(victim, signal.SIGKILL)
        before = _stored(store)
        assert wait_for(lambda: [p for p in _children(proc.pid, "recorder") if p != victim],
                        timeout=20, period=0.1), "the recorder was not restarted"
        # rows committed before the kill stay; the new recorder appends after them
        assert wait_for(lambda: _stored(store) >= before + 100, timeout=90, period=0.2)
        stdout, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stdout
    assert "recorder exited with code -9; restarting it (1/3)" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["restarts"] == {"recorder": 1}
    assert summary["reason"] == "step budget used" and summary["steps"] >= 700
    with TransitionStore(store, readonly=True) as s:
        ids = s.read().ids
    assert len(ids) == summary["steps"] and (ids[1:] > ids[:-1]).all()


def _change_state(node, transition: int) -> bool:
    """Call /controller/change_state (the lifecycle service `ros2 lifecycle set` uses)."""
    from lifecycle_msgs.srv import ChangeState

    client = node.create_client(ChangeState, "/controller/change_state")
    try:
        if not client.wait_for_service(timeout_sec=30.0):
            return False
        request = ChangeState.Request()
        request.transition.id = transition
        future = client.call_async(request)
        from test_nodes_common import wait_for

        return wait_for(future.done, timeout=15.0) and future.result().success
    finally:
        node.destroy_client(client)


BLOCKER = """
import sys

class _NoSimulator:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mujoco", "gymnasium"):
            raise ImportError(f"{name} is not installed on this robot computer")
        return None

sys.meta_path.insert(0, _NoSimulator())
"""


def without_simulator(tmp_path) -> dict:
    """An environment whose Python processes cannot import mujoco or gymnasium."""
    import os

    site = tmp_path / "no_simulator"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in sys.path if p])
    return env


def test_the_robot_computer_nodes_import_no_simulator(tmp_path):
    """recorder, learner, trainer and controller (and `up`) load without mujoco/gymnasium."""
    code = ("import sym_mbrl_ros.nodes.recorder, sym_mbrl_ros.nodes.dynamics_learner, "
            "sym_mbrl_ros.nodes.policy_trainer, sym_mbrl_ros.nodes.controller, "
            "sym_mbrl_ros.commands.up\n"
            "from sym_mbrl_ros.envs import TASKS\n"
            "from sym_mbrl_ros.agents.presets import make_config\n"
            "import numpy as np\n"
            "for t in TASKS.values():  # every task's spec works: observer, reward, config\n"
            "    s, a = np.zeros((1, t.state_dim)), np.zeros((1, t.action_dim))\n"
            "    t.reward(s, a, t.observe(t.observation(s)))\n"
            "    make_config('sym-mbpo', t.name)\n"
            "import sys; assert 'mujoco' not in sys.modules and 'gymnasium' not in sys.modules\n"
            "try:\n    import mujoco\nexcept ImportError:\n    print('blocked')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=without_simulator(tmp_path), timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "blocked", proc.stderr[-2000:]


def test_up_hardware_waits_for_activate_then_records_windows(graph, tmp_path):
    """`up --hardware` against `fake-hardware`: no sim bridge, nothing is commanded until the
    lifecycle activate, then hold-paired transitions in windows of the task's length."""
    import time

    from lifecycle_msgs.msg import Transition
    from sensor_msgs.msg import JointState
    from test_nodes_common import wait_for

    probe = graph.add(Probe("probe_hw"))
    commands = probe.listen(Float64MultiArray, "/effort_controller/commands")
    states = probe.listen(JointState, "/joint_states")
    out = tmp_path / "run"
    cli = [sys.executable, "-m", "sym_mbrl_ros.cli"]
    robot = subprocess.Popen(cli + ["fake-hardware", "pendulum", "--velocity-noise", "0.05"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the robot computer: `up` and its four nodes run where MuJoCo and gymnasium cannot be
    # imported; the fake robot publishes a joint the task does not use, undeclared here
    up = subprocess.Popen(
        cli + ["up", "pendulum", "--hardware", "--steps", "260", "--out", str(out),
               "--max-wall", "150"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=without_simulator(tmp_path))
    try:
        assert wait_for(lambda: len(states) > 50, timeout=60), "the fake robot is silent"
        assert "passive_joint" in states[-1][0].name
        assert wait_for(lambda: any(n == "/controller/change_state"
                                    for n, _ in probe.get_service_names_and_types()),
                        timeout=60, period=0.2), "no controller"
        time.sleep(3.0)  # the inactive controller has had time to command, if it would
        assert not commands and _stored(out / "transitions.sqlite") == 0
        assert _change_state(probe, Transition.TRANSITION_CONFIGURE)
        assert _change_state(probe, Transition.TRANSITION_ACTIVATE)
        stdout, _ = up.communicate(timeout=150)
    finally:
        for p in (up, robot):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    assert up.returncode == 0, stdout
    assert "the controller is inactive" in stdout
    assert "`sym-mbrl controller activate" in stdout  # a client that needs no ROS install
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reason"] == "step budget used" and summary["steps"] >= 260
    assert summary["episode_end_steps"][:1] == [200]  # a window of the task's length
    assert len(commands) >= 260
    config = json.loads((out / "config.json").read_text())
    assert config["hardware"] and "sim_bridge" not in config["commands"]
    with TransitionStore(out / "transitions.sqlite", readonly=True) as store:
        episodes = store.episodes()
        assert episodes[0].steps == 200 and episodes[0].source == "recorder"
        batch = store.read()
    # one transition per control period: stored commands are ~50 ms apart (hold pairing
    # drops a transition whose window is not one period ±25 %, so gaps are multiples)
    span = batch.stamps[1:] - batch.stamps[:-1]
    assert np.median(span) == pytest.approx(0.05, rel=0.25)


def _node_pids(parent: int) -> list[int]:
    from pathlib import Path

    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            pass
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_no_node_outlives_a_killed_up(tmp_path):
    """kill -9 of `up` itself: its nodes (a controller commanding a robot among them) stop too
    instead of running on as orphans."""
    import os
    import signal
    import time

    from test_nodes_common import wait_for

    up = subprocess.Popen(
        [sys.executable, "-m", "sym_mbrl_ros.cli", "up", "pendulum", "--steps", "5000",
         "--out", str(tmp_path / "run"), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(_node_pids(up.pid)) >= 5, timeout=60)
        nodes = _node_pids(up.pid)
        time.sleep(2.0)  # the nodes are up and running
        up.send_signal(signal.SIGKILL)
        up.wait(timeout=10)

        def alive() -> list[int]:
            out = []
            for pid in nodes:
                try:
                    os.kill(pid, 0)
                    out.append(pid)
                except ProcessLookupError:
                    pass
            return out

        assert wait_for(lambda: not alive(), timeout=30), f"orphaned nodes: {alive()}"
    finally:
        if up.poll() is None:
            up.kill()
