"""Find the robot descriptions in ``urdf/`` and load them as MuJoCo specs.

The URDF files at the repository root are the one description of each robot: MuJoCo builds
the simulation from them and rviz draws them. They are found, in this order, in

1. the folder named by the ``SYM_MBRL_URDF_DIR`` environment variable;
2. ``sym_mbrl_ros/urdf`` inside the Python package (package data, if the build copies it);
3. the source checkout (``<repo>/urdf``, for an editable install or a plain ``PYTHONPATH``);
4. ``share/sym_mbrl_ros/urdf`` of the install tree this module lives in (colcon or pip put
   setup.py's ``data_files`` there);
5. the package's ament share folder (``get_package_share_directory``);
6. ``share/sym_mbrl_ros/urdf`` under the Python prefix (``sys.prefix``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .base import TaskError

if TYPE_CHECKING:
    import mujoco

PACKAGE = "sym_mbrl_ros"
URDF_DIR_ENV = "SYM_MBRL_URDF_DIR"


def _ament_share() -> Path | None:
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory(PACKAGE)) / "urdf"
    except (LookupError, ValueError, OSError):  # PackageNotFoundError is a KeyError
        return None


def urdf_search_path() -> list[Path]:
    """The folders searched for ``<robot>.urdf``, in order."""
    here = Path(__file__).resolve()
    dirs: list[Path] = []
    if os.environ.get(URDF_DIR_ENV):
        dirs.append(Path(os.environ[URDF_DIR_ENV]))
    dirs.append(here.parents[1] / "urdf")  # package data
    dirs.append(here.parents[3] / "urdf")  # <repo>/src/sym_mbrl_ros/envs/assets.py
    # <prefix>/lib/pythonX.Y/site-packages/sym_mbrl_ros/envs/assets.py: the same install tree
    if len(here.parents) > 5:
        dirs.append(here.parents[5] / "share" / PACKAGE / "urdf")
    ament = _ament_share()
    if ament is not None:
        dirs.append(ament)
    dirs.append(Path(sys.prefix) / "share" / PACKAGE / "urdf")
    return dirs


def urdf_path(robot: str) -> Path:
    """Path of ``<robot>.urdf``; raises TaskError saying where it looked if it is missing."""
    for folder in urdf_search_path():
        candidate = folder / f"{robot}.urdf"
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(d) for d in urdf_search_path())
    raise TaskError(
        f"cannot find {robot}.urdf (looked in: {looked}); install the package with its urdf/ "
        f"folder or point {URDF_DIR_ENV} at a folder that holds it"
    )


def load_urdf_spec(robot: str) -> mujoco.MjSpec:
    """Parse ``<robot>.urdf`` into an editable :class:`mujoco.MjSpec`."""
    import mujoco  # here, so that finding a URDF (the controller's envelope) needs no MuJoCo

    path = urdf_path(robot)
    try:
        return mujoco.MjSpec.from_file(str(path))
    except ValueError as exc:
        raise TaskError(f"MuJoCo cannot read {path}: {exc}") from exc
