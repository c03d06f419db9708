"""Only ``nodes/`` imports ROS: the core and the other commands run where ROS is absent."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sym_mbrl_ros"
ROS = ("rclpy", "std_srvs", "launch", "launch_ros", "tf2_ros")
"""(``ament_index_python`` is not here: envs/assets.py asks it, where present, for the package's
share folder, a file lookup with a fallback, no ROS graph.)"""


def _is_ros(module: str) -> bool:
    root = module.split(".")[0]
    return root in ROS or root.endswith("_msgs") or root.endswith("_interfaces")


def test_no_ros_import_outside_nodes():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "nodes":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0
                     and node.module else [])
            offenders += [f"{rel}:{node.lineno} {n}" for n in names if _is_ros(n)]
    assert not offenders, offenders
