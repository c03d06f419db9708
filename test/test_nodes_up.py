"""End to end: `sym-mbrl up pendulum` with a small budget, watched over real DDS."""

from __future__ import annotations

import json
import subprocess
import sys

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
def test_up_respawns_a_killed_recorder_and_keeps_recording(tmp_path):
    import os
    import signal

    from test_nodes_common import wait_for

    fresh_domain()
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
