"""The safety envelope of a robot: bounds on what may be measured and what may be commanded.

An envelope maps *field names* to closed intervals ``[low, high]``. Field names are those of
the controller's ``state_fields`` (see ``nodes/topics.py``) plus one per command interface:

* ``position.<joint>``: the joint's ``<limit lower upper>`` (revolute and prismatic joints
  only; a continuous joint has no position bound);
* ``velocity.<joint>``: ``[-velocity, velocity]`` of the joint's ``<limit>``;
* ``effort.<joint>``: ``[-effort, effort]`` of the joint's ``<limit>``;
* ``twist.<component>`` (``twist.linear.x``, ``twist.angular.z``): a geometry_msgs/Twist
  command's component, only through an override (a URDF bounds joints, not a base's twist);
* any other name (``odom.vx``, ``target.x``) only through an override.

Measured state coordinates are checked against the ``position.*``/``velocity.*``/``odom.*``
entries; a command for a joint driven through interface ``I`` (``position``, ``velocity`` or
``effort``) is bounded by the entry ``I.<joint>``, and a twist command's component ``C`` by
``twist.C``. A field without an entry is unbounded.

The same bounds serve a model rollout: for a task whose state is its joints' positions then
velocities the fields are ``position.<j>`` for each joint then ``velocity.<j>``; other tasks
name theirs in ``state_fields`` of ``config/<task>.yaml``. Plain ``xml.etree``, no MuJoCo::

    env = SafetyEnvelope.from_urdf("urdf/reacher.urdf", {"velocity.elbow": (-10, 10)})
    low, high = env.bounds(["position.shoulder", "velocity.elbow", "target.x"])
    inside = env.contains(["position.shoulder", "velocity.elbow", "target.x"], states)
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

Interval = tuple[float, float]


class EnvelopeError(UserError):
    """A URDF or an override that cannot give an envelope (the sentence says why)."""


@dataclass(frozen=True)
class Violation:
    """One coordinate outside its bounds."""

    field: str
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.field} = {self.value:.4g} outside [{self.low:.4g}, {self.high:.4g}]"


@dataclass(frozen=True)
class SafetyEnvelope:
    """Closed intervals per field name; see the module docstring for the names."""

    limits: Mapping[str, Interval] = field(default_factory=dict)

    @classmethod
    def from_urdf(cls, path: str | Path,
                  overrides: Mapping[str, Sequence[float | None]] | None = None
                  ) -> SafetyEnvelope:
        """The ``<limit>`` elements of a URDF's joints, then ``overrides`` on top.

        A missing attribute, or a zero ``velocity``/``effort`` (common in URDFs written for
        visualisation only), leaves that bound open. Raises :class:`EnvelopeError` for a file
        that cannot be read or a limit that is not a number.
        """
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as exc:
            raise EnvelopeError(f"cannot read the robot description {path}: {exc}") from None
        limits: dict[str, Interval] = {}
        for joint in root.iter("joint"):
            name, kind, limit = joint.get("name"), joint.get("type"), joint.find("limit")
            if name is None or limit is None:
                continue
            try:
                values = {k: float(v) for k, v in limit.attrib.items()}
            except ValueError:
                raise EnvelopeError(f"{path}: joint {name} has a <limit> that is not a "
                                    f"number ({limit.attrib})") from None
            if kind in ("revolute", "prismatic") and "lower" in values and "upper" in values:
                limits[f"position.{name}"] = (values["lower"], values["upper"])
            for attr in ("velocity", "effort"):
                if values.get(attr, 0.0) > 0:
                    limits[f"{attr}.{name}"] = (-values[attr], values[attr])
        return cls(limits).with_overrides(overrides or {})

    def with_overrides(self, overrides: Mapping[str, Sequence[float | None]]) -> SafetyEnvelope:
        """A copy where each ``field: [low, high]`` replaces that field's bounds (None: open)."""
        limits = dict(self.limits)
        for name, pair in overrides.items():
            try:
                low, high = (-math.inf if pair[0] is None else float(pair[0]),
                             math.inf if pair[1] is None else float(pair[1]))
                if len(pair) != 2 or math.isnan(low) or math.isnan(high):
                    raise ValueError
            except (TypeError, ValueError, IndexError):
                raise EnvelopeError(f"envelope override {name!r} must be [low, high], numbers or "
                                    f"null, not {pair!r}") from None
            if low > high:
                raise EnvelopeError(f"envelope override {name!r} has low {low} above high "
                                    f"{high}")
            limits[str(name)] = (low, high)
        return SafetyEnvelope(limits)

    def bounds(self, fields: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per-coordinate ``(low, high)`` arrays for these fields; ``-inf``/``inf`` if open."""
        low = np.array([self.limits.get(f, (-math.inf, math.inf))[0] for f in fields], float)
        high = np.array([self.limits.get(f, (-math.inf, math.inf))[1] for f in fields], float)
        return low, high

    def contains(self, fields: Sequence[str], states) -> np.ndarray:
        """Whether each state (shape ``(..., len(fields))``) lies inside; NaN never does."""
        low, high = self.bounds(fields)
        x = np.asarray(states, dtype=np.float64)
        return np.all((x >= low) & (x <= high), axis=-1)

    def violations(self, fields: Sequence[str], state) -> list[Violation]:
        """The coordinates of one state that lie outside their bounds (or are NaN)."""
        low, high = self.bounds(fields)
        x = np.asarray(state, dtype=np.float64).reshape(-1)
        bad = ~((x >= low) & (x <= high))
        return [Violation(fields[i], float(x[i]), float(low[i]), float(high[i]))
                for i in np.flatnonzero(bad)]

    def command_bounds(self, interface: str, joints: Sequence[str]
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Bounds on a command array for ``joints`` driven through ``interface``."""
        return self.bounds([f"{interface}.{j}" for j in joints])

    def twist_bounds(self, components: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Bounds on a twist command whose coordinates are these components (``linear.x``)."""
        return self.bounds([f"twist.{c}" for c in components])
