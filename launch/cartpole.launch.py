"""sym_mbrl.launch.py with task:=cartpole: ``ros2 launch sym_mbrl_ros cartpole.launch.py [ARG:=V]``.

Every argument of sym_mbrl.launch.py (use_sim, run_dir, rviz, namespace, ...) passes through.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

from launch import LaunchDescription


def generate_launch_description():
    main = os.path.join(get_package_share_directory("sym_mbrl_ros"), "launch",
                        "sym_mbrl.launch.py")
    return LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(main), launch_arguments={"task": "cartpole"}.items())])
