"""The safety envelope from a URDF's joint limits (core: no ROS, no MuJoCo in the module)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sym_mbrl_ros.envs.envelope import EnvelopeError, SafetyEnvelope

URDF = Path(__file__).resolve().parents[1] / "urdf"


def test_limits_of_the_shipped_urdfs():
    reacher = SafetyEnvelope.from_urdf(URDF / "reacher.urdf")
    assert reacher.limits == {
        "position.shoulder": (-3.0, 3.0), "velocity.shoulder": (-20.0, 20.0),
        "effort.shoulder": (-10.0, 10.0),
        "position.elbow": (-2.8, 2.8), "velocity.elbow": (-20.0, 20.0),
        "effort.elbow": (-10.0, 10.0),
    }
    car = SafetyEnvelope.from_urdf(URDF / "car2d.urdf")
    assert car.limits["position.steering_joint"] == (-0.5, 0.5)
    assert not any(k.endswith("wheel_joint") for k in car.limits)  # continuous, no <limit>
    assert SafetyEnvelope.from_urdf(URDF / "pendulum.urdf").limits == {}


def test_bounds_contains_and_violations_per_state_coordinate():
    env = SafetyEnvelope.from_urdf(URDF / "reacher.urdf", {"target.x": [-0.2, None]})
    fields = ["position.shoulder", "position.elbow", "velocity.shoulder", "velocity.elbow",
              "target.x", "target.y"]
    low, high = env.bounds(fields)
    np.testing.assert_array_equal(low, [-3.0, -2.8, -20.0, -20.0, -0.2, -math.inf])
    np.testing.assert_array_equal(high, [3.0, 2.8, 20.0, 20.0, math.inf, math.inf])
    states = np.array([[0.0, 0.0, 1.0, -1.0, 0.1, 5.0],      # inside (target.y is open)
                       [0.0, 2.9, 1.0, -1.0, 0.1, 0.0],      # elbow past its range
                       [0.0, 0.0, 25.0, -1.0, 0.1, 0.0],     # shoulder too fast
                       [0.0, 0.0, 1.0, -1.0, -0.3, 0.0],     # target override
                       [0.0, float("nan"), 1.0, 0.0, 0.0, 0.0]])  # NaN is never inside
    assert env.contains(fields, states).tolist() == [True, False, False, False, False]
    assert env.contains(fields, states.reshape(5, 1, 6)).shape == (5, 1)  # any batch shape
    (v,) = env.violations(fields, states[2])
    assert (v.field, v.value, v.low, v.high) == ("velocity.shoulder", 25.0, -20.0, 20.0)
    assert "velocity.shoulder = 25 outside [-20, 20]" == str(v)
    assert env.violations(fields, states[0]) == []
    low, high = env.command_bounds("effort", ["elbow", "shoulder"])
    assert low.tolist() == [-10.0, -10.0] and high.tolist() == [10.0, 10.0]


def test_limit_attributes_and_overrides(tmp_path):
    path = tmp_path / "robot.urdf"
    path.write_text("""<robot name="r">
      <joint name="slide" type="prismatic"><limit lower="-0.1" upper="0.2" effort="0"
        velocity="0.5"/></joint>
      <joint name="spin" type="continuous"><limit lower="-1" upper="1" effort="3"
        velocity="7"/></joint>
      <joint name="fixed" type="fixed"/>
    </robot>""")
    env = SafetyEnvelope.from_urdf(path, {"velocity.spin": [-4, 4], "odom.vx": [-1, 1]})
    assert env.limits == {
        "position.slide": (-0.1, 0.2), "velocity.slide": (-0.5, 0.5),  # effort 0: open
        "velocity.spin": (-4.0, 4.0), "effort.spin": (-3.0, 3.0),  # continuous: no range
        "odom.vx": (-1.0, 1.0),
    }
    for bad, match in (({"odom.vx": [1, -1]}, "low 1.0 above high"),
                       ({"odom.vx": [1]}, "must be \\[low, high\\]"),
                       ({"odom.vx": "fast"}, "must be \\[low, high\\]")):
        with pytest.raises(EnvelopeError, match=match):
            env.with_overrides(bad)
    path.write_text('<robot><joint name="j" type="revolute"><limit lower="a"/></joint></robot>')
    with pytest.raises(EnvelopeError, match="not a number"):
        SafetyEnvelope.from_urdf(path)
    with pytest.raises(EnvelopeError, match="cannot read"):
        SafetyEnvelope.from_urdf(tmp_path / "missing.urdf")
