"""The reacher graph: ``ros2 launch sym_mbrl_ros reacher.launch.py [use_sim:=true]
[rviz:=false] [run_name:=reacher]``.

The nodes, their executables, the parameter file and remappings come from
``sym_mbrl_ros.bringup`` (the same description ``sym-mbrl up reacher`` starts). With
``use_sim:=false`` the sim bridge stays off and a robot driver publishes its topics instead.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription
from sym_mbrl_ros.bringup import PACKAGE, graph

TASK = "reacher"


def generate_launch_description():
    g = graph(TASK)
    share = get_package_share_directory(PACKAGE)
    params = os.path.join(share, g.config)
    with open(os.path.join(share, g.urdf)) as f:
        robot_description = f.read()
    run_dir = PathJoinSubstitution(["runs", LaunchConfiguration("run_name")])
    actions = [
        DeclareLaunchArgument("use_sim", default_value="true",
                              description="start the MuJoCo sim bridge (false: a real robot "
                                          "publishes the state topics)"),
        DeclareLaunchArgument("rviz", default_value="false", description="start rviz2"),
        DeclareLaunchArgument("run_name", default_value=TASK,
                              description="run folder under ./runs (store, models, policies)"),
    ]
    for spec in g.nodes:
        kwargs = dict(package=PACKAGE, executable=spec.executable, name=spec.name,
                      output="screen", parameters=[params, {"run_dir": run_dir}],
                      remappings=list(spec.remappings))
        if spec.sim_only:
            kwargs["condition"] = IfCondition(LaunchConfiguration("use_sim"))
        actions.append(LifecycleNode(namespace="", **kwargs) if spec.lifecycle else Node(**kwargs))
    actions.append(Node(
        package="robot_state_publisher", executable="robot_state_publisher", output="screen",
        parameters=[{"robot_description": ParameterValue(robot_description, value_type=str)}]))
    actions.append(Node(
        package="rviz2", executable="rviz2", arguments=["-d", os.path.join(share, g.rviz)],
        condition=IfCondition(LaunchConfiguration("rviz"))))
    return LaunchDescription(actions)
