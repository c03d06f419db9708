"""A node outlives a failure of rclpy's experimental EventsExecutor (nodes/common.run).

On the fake robot (bench/hardware.py, seed 101) the controller died 50 s into a run with
``SystemError: null argument to internal routine`` raised by the EventsExecutor's
``spin_once``, which stopped the run. ``run`` now moves the node to the single-threaded
executor, logs it and counts it in /diagnostics. The node below runs in its own process (it
calls ``rclpy.init``) with an events executor that fails once, as that one did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")

from test_nodes_common import fresh_domain  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import json, os, signal, sys
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sym_mbrl_ros.nodes import common

class FailsOnce:
    """An executor (not an rclpy class) that raises from its third spin_once, like the
    EventsExecutor did."""
    def __init__(self):
        self.inner, self.spins = SingleThreadedExecutor(), 0
    def add_node(self, node):
        self.inner.add_node(node)
    def remove_node(self, node):
        self.inner.remove_node(node)
    def shutdown(self, timeout_sec=None):
        return self.inner.shutdown(timeout_sec=timeout_sec)
    def spin_once(self, timeout_sec=None):
        self.spins += 1
        if self.spins == 3:
            raise SystemError("null argument to internal routine")
        self.inner.spin_once(timeout_sec=timeout_sec)

common._events_executor = FailsOnce
state = {}

class Ticker(Node):
    def __init__(self):
        super().__init__("ticker")
        self.diag = common.Diagnostics(self)
        self.ticks = 0
        self.create_timer(0.01, self.tick)
        state["node"] = self
    def tick(self):
        self.ticks += 1
        if self.ticks == 50:
            os.kill(os.getpid(), signal.SIGINT)

code = common.run(Ticker, ["ticker"], events=True)
node = state["node"]
print(json.dumps({"code": code, "ticks": node.ticks,
                  "fallbacks": node.diag.get("executor_fallbacks")}))
'''


def test_a_node_spins_on_after_the_events_executor_fails():
    fresh_domain()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # the timer kept firing after the failure (spin 3) until the node asked to stop at 50
    assert result["ticks"] >= 50
    assert result["fallbacks"] == 1
    assert "the events executor failed" in out.stderr
