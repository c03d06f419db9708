"""Diagnostics: levels that escalate and recover, and counters that worker threads share."""

from __future__ import annotations

import sys
import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.node import Node  # noqa: E402
from test_nodes_common import fresh_domain  # noqa: E402

from sym_mbrl_ros.nodes.common import ERROR, OK, WARN, Diagnostics  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def node():
    rclpy.init(domain_id=fresh_domain())
    n = Node("diagnostics_test")
    yield n
    n.destroy_node()
    rclpy.shutdown()


def test_levels_escalate_and_recover(node):
    diag = Diagnostics(node, period_s=60.0, drop_window_s=0.3)
    try:
        assert diag.snapshot()[:2] == (OK, "ok")
        diag.drop("nan", "a NaN state")
        level, message, counts, _ = diag.snapshot()
        assert level == WARN and message.startswith("1 dropped") and counts["dropped/nan"] == 1
        time.sleep(0.4)  # the drop window (0.3 s) has passed: OK again, the count stays
        level, message, counts, _ = diag.snapshot()
        assert (level, message, counts["dropped/nan"]) == (OK, "ok", 1)
        diag.condition("estop", WARN, "e-stop engaged")
        diag.condition("watchdog", ERROR, "no fresh state")
        level, message, *_ = diag.snapshot()
        assert level == ERROR and message == "no fresh state; e-stop engaged"  # worst first
        diag.condition("watchdog", OK)
        assert diag.snapshot()[:2] == (WARN, "e-stop engaged")
        diag.condition("estop", OK)
        assert diag.snapshot()[:2] == (OK, "ok")
    finally:
        diag.close()


def test_counters_are_exact_under_threads(node):
    """Eight threads count (and add new keys) while another publishes and sums the drops."""
    diag = Diagnostics(node, period_s=60.0, warn_every_s=1e9)
    workers, per_worker = 8, 30_000
    errors: list[BaseException] = []
    done = threading.Event()
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up

    def work(t: int) -> None:
        try:
            for i in range(per_worker):
                diag.count("commands")
                diag.count("dropped/nan")
                if i % 100 == 0:
                    diag.count(f"new/{t}/{i}")  # the dict grows while it is read
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    def read() -> None:
        try:
            while not done.is_set():
                diag.publish()
                assert diag.dropped >= 0
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    try:
        reader = threading.Thread(target=read)
        reader.start()
        threads = [threading.Thread(target=work, args=(t,)) for t in range(workers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        done.set()
        reader.join()
    finally:
        sys.setswitchinterval(previous)
        diag.close()
    assert errors == []
    assert diag.counts["commands"] == workers * per_worker  # no lost update
    assert diag.dropped == workers * per_worker
    assert sum(k.startswith("new/") for k in diag.counts) == workers * per_worker // 100
