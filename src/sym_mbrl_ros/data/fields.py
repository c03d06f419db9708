"""Where each state coordinate comes from, without ROS: the ``state_fields`` vocabulary.

``position.<joint>`` and ``velocity.<joint>`` read sensor_msgs/JointState, ``odom.<key>``
nav_msgs/Odometry, ``target.<axis>`` the episode's target point. The nodes
(``nodes/topics.py``) add the message conversions; the bag importer reads the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StateFields:
    """The message field of each state coordinate, in state order."""

    fields: tuple[str, ...]

    @property
    def joints(self) -> tuple[str, ...]:
        """Joints whose position or velocity is part of the state, first-seen order."""
        out: list[str] = []
        for f in self.fields:
            source, _, key = f.partition(".")
            if source in ("position", "velocity") and key not in out:
                out.append(key)
        return tuple(out)

    @property
    def uses_odom(self) -> bool:
        return any(f.startswith("odom.") for f in self.fields)

    @property
    def needs_target(self) -> bool:
        return any(f.startswith("target.") for f in self.fields)

    @property
    def target_indices(self) -> list[int]:
        return [i for i, f in enumerate(self.fields) if f.startswith("target.")]
