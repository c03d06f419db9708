"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def graph():
    """Nodes of one test module on a DDS domain of their own (rclpy initialised on it), torn
    down after the module. A module that needs a fresh domain per test overrides it."""
    rclpy = pytest.importorskip("rclpy")
    from test_nodes_common import RosGraph, fresh_domain

    rclpy.init(domain_id=fresh_domain())
    g = RosGraph()
    yield g
    g.close()
    rclpy.shutdown()
