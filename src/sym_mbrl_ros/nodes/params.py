"""The parameters every node of a task's graph shares (the ``/**`` section of config/TASK.yaml)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rclpy.node import Node

from ..envs.base import TaskSpec
from ..envs.envelope import EnvelopeError, SafetyEnvelope
from .common import declare
from .topics import CommandCodec, ConfigError, StateLayout


@dataclass
class TaskParams:
    """Task, topic names and the state/command layout, declared on a node."""

    task: TaskSpec
    layout: StateLayout
    codec: CommandCodec
    joint_names: list[str]
    published_joints: list[str]
    state_topic: str
    joint_state_topic: str
    command_topic: str
    world_frame: str
    run_dir: Path
    envelope: SafetyEnvelope
    """The robot's safety envelope (URDF ``<limit>``s and the ``envelope`` overrides): the
    controller keeps states and commands inside it, the trainer's model rollouts too."""

    @classmethod
    def declare(cls, node: Node) -> TaskParams:
        name = declare(node, "task", "pendulum", "task name (see `sym-mbrl tasks`)")
        fields = declare(node, "state_fields", ("str", []),
                         "message field of each state coordinate, in state order: "
                         "position.<joint>, velocity.<joint>, odom.<x|y|yaw|vx|vy|wz>, "
                         "target.<x|y|z>")
        joints = declare(node, "joint_names", ("str", []),
                         "commanded joints, in the order of the command array")
        other = declare(node, "other_joints", ("str", []),
                        "further joints the sim bridge publishes in /joint_states (URDF joints "
                        "that are not commanded); receivers ignore joints the state does not "
                        "read, whatever their names")
        state_topic = declare(node, "state_topic", "joint_states",
                              "state topic: sensor_msgs/JointState, or nav_msgs/Odometry when "
                              "state_fields use odom.*")
        joint_topic = declare(node, "joint_state_topic", "joint_states",
                              "JointState topic read next to an Odometry state topic (for "
                              "position.*/velocity.* fields)")
        controller = declare(node, "controller_name", "effort_controller",
                             "ros2_control controller whose <name>/commands topic is used "
                             "(relative: inside the node's namespace)")
        command_topic = declare(node, "command_topic", "",
                                "command topic; empty means <controller_name>/commands")
        command_type = declare(node, "command_type", "array",
                               "array: std_msgs/Float64MultiArray; twist: TwistStamped")
        command_fields = declare(node, "command_fields", ("str", []),
                                 "twist component of each action coordinate (twist commands), "
                                 "e.g. [linear.x, angular.z]")
        frame = declare(node, "world_frame", "",
                        "frame of the target (and of the sim bridge's markers and odometry): "
                        "the URDF root for a fixed-base robot, odom for a mobile base; empty: "
                        "odom when state_fields read odom.*, else base_link")
        run_dir = declare(node, "run_dir", "runs/default",
                          "run folder: the store, models, policies and logs go here")
        urdf = declare(node, "urdf", "",
                       "robot description whose joint <limit>s bound states and commands; "
                       "empty: <task>.urdf from the package, none: no URDF")
        overrides = declare(node, "envelope", "{}",
                            "JSON object of envelope bounds over the URDF's, field: [low, "
                            "high] (null: open), e.g. {\"velocity.hinge\": [-20, 20]}; fields "
                            "as in state_fields, plus <interface>.<joint> (e.g. effort.hinge) "
                            "and twist.<component> (e.g. twist.linear.x) for commands")
        from ..envs import get_task

        try:
            task = get_task(name)
            layout = StateLayout.parse(fields or _default_fields(task), task.state_dim)
            codec = CommandCodec.parse(command_type, task.action_dim, command_fields)
            if command_type == "array" and joints and len(joints) != task.action_dim:
                raise ConfigError(f"joint_names has {len(joints)} joints but {task.name} has "
                                  f"{task.action_dim} action coordinates")
            envelope = _envelope(task, urdf, overrides)
        except (ConfigError, ValueError) as exc:
            node.get_logger().fatal(str(exc))
            raise SystemExit(f"{node.get_name()}: {exc}") from None
        joints = joints or list(task.joint_names)
        known = list(dict.fromkeys(list(joints) + list(layout.joints) + list(other)))
        return cls(
            task=task,
            layout=layout,
            codec=codec,
            joint_names=joints,
            published_joints=known,
            state_topic=state_topic,
            joint_state_topic=joint_topic,
            command_topic=command_topic or f"{controller}/commands",
            world_frame=frame or ("odom" if layout.uses_odom else "base_link"),
            run_dir=Path(run_dir),
            envelope=envelope,
        )


def _envelope(task: TaskSpec, urdf: str, overrides: str) -> SafetyEnvelope:
    """The safety envelope the ``urdf`` and ``envelope`` parameters describe."""
    try:
        extra = json.loads(overrides)
        if not isinstance(extra, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise ConfigError(f"envelope must be a JSON object ({exc})") from None
    try:
        if urdf.lower() == "none":
            return SafetyEnvelope().with_overrides(extra)
        if not urdf:
            from ..envs.assets import urdf_path

            urdf = str(urdf_path(task.name))
        return SafetyEnvelope.from_urdf(urdf, extra)
    except EnvelopeError as exc:  # TaskError (no URDF found) is a ValueError: caught above
        raise ConfigError(str(exc)) from None


def _default_fields(task: TaskSpec) -> list[str]:
    """Without ``state_fields``: positions then velocities of the task's joints."""
    joints = list(task.joint_names)
    fields = [f"position.{j}" for j in joints] + [f"velocity.{j}" for j in joints]
    if len(fields) != task.state_dim:
        raise ConfigError(f"{task.name}: set state_fields in config/{task.name}.yaml (the state "
                          f"{list(task.state_names)} is not just joint positions and velocities)")
    return fields
