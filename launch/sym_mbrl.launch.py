"""Every task's graph: ``ros2 launch sym_mbrl_ros sym_mbrl.launch.py task:=pendulum
[use_sim:=true] [rviz:=false] [run_dir:=/abs/path] [namespace:=robot1] [robots:=N] ...``.

``namespace:=robot1`` puts the whole graph under /robot1 (its topics are relative), so two
graphs share a DDS domain; ``robots:=N`` starts a fleet: N robots in robot1..robotN feeding
one learner and trainer (bringup.py); ``planner:=true`` makes every controller plan with the
learner's model (sym-mpc) and starts no policy trainer (``sym-mbrl up --planner``).

``use_sim:=false`` is hardware mode, the same as ``sym-mbrl up TASK --hardware``: no sim
bridge (a robot driver publishes the state topics), hold pairing in the recorder, and the
controller waits inactive for ``ros2 lifecycle set /controller configure`` + ``activate``
(or ``activate:=true``). The arguments, the nodes, their parameters and remappings come from
``sym_mbrl_ros.bringup`` (``LAUNCH_ARGUMENTS``, ``launch_run``), which ``sym-mbrl up`` reads
too, so the two routes start the same graph.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription
from sym_mbrl_ros.bringup import LAUNCH_ARGUMENTS, PACKAGE, launch_run


def _start(context):
    share = get_package_share_directory(PACKAGE)
    run = launch_run({name: context.launch_configurations.get(name)
                      for name, _, _ in LAUNCH_ARGUMENTS}, share)
    actions = []
    for n in run.nodes:
        kwargs = dict(package=PACKAGE, executable=n.spec.executable, name=n.spec.name,
                      namespace=n.namespace, output="screen",
                      parameters=[run.params_file, n.parameters],
                      remappings=list(n.remappings), respawn=n.respawn)
        if n.respawn:
            kwargs["respawn_delay"] = 1.0
        actions.append(LifecycleNode(**kwargs) if n.spec.lifecycle else Node(**kwargs))
    with open(os.path.join(share, run.graph.urdf)) as f:
        robot_description = f.read()
    # one robot_state_publisher per robot: the controllers' namespaces
    robots = [n.namespace for n in run.nodes if n.spec.name == "controller"]
    for namespace in robots:
        actions.append(Node(
            package="robot_state_publisher", executable="robot_state_publisher",
            namespace=namespace, output="screen",
            parameters=[{"robot_description": ParameterValue(robot_description, value_type=str),
                         "use_sim_time": run.settings.use_sim_time}]))
    if run.rviz:
        actions.append(Node(package="rviz2", executable="rviz2", namespace=robots[0],
                            arguments=["-d", os.path.join(share, run.graph.rviz)]))
    return actions


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, default, text in LAUNCH_ARGUMENTS] + [OpaqueFunction(function=_start)])
