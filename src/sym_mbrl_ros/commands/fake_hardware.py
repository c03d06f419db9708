"""sym-mbrl fake-hardware TASK: a stand-in robot for `sym-mbrl up TASK --hardware`.

Starts the ``fake_hardware`` node (see ``nodes/fake_hardware.py``) with the task's parameter
file, so it speaks the same topics as the robot's driver would, and replaces this process
with it: Ctrl-C stops the robot.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import UserError

HELP = "run a fake ros2_control robot (perturbed physics, encoders, delay, command timeout)"


def add_arguments(parser) -> None:
    parser.add_argument("task", help="task name (see `sym-mbrl tasks`)")
    parser.add_argument("--mass-scale", type=float, default=1.0,
                        help="link masses and inertias times this (default 1)")
    parser.add_argument("--length-scale", type=float, default=1.0,
                        help="link centre-of-mass offsets times this, inertias times its square")
    parser.add_argument("--gravity-scale", type=float, default=1.0, help="gravity times this")
    parser.add_argument("--damping", type=float, default=0.0,
                        help="viscous damping added to the joints (N m s/rad, default 0)")
    parser.add_argument("--friction", type=float, default=0.0,
                        help="dry friction added to the joints (N m, default 0)")
    parser.add_argument("--counts-per-rev", type=int, default=4096,
                        help="encoder counts per revolution (default 4096; 0: exact positions)")
    parser.add_argument("--velocity-noise", type=float, default=0.0,
                        help="std of the velocity noise (rad/s, default 0)")
    parser.add_argument("--delay-ms", type=float, default=5.0,
                        help="actuator delay (ms, default 5)")
    parser.add_argument("--timeout-ms", type=float, default=200.0,
                        help="safe action after this long without a command (ms, default 200)")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="joint state rate (Hz, default 100)")
    parser.add_argument("--extra-joints", default="passive_joint",
                        help="comma-separated joints published that the task does not use "
                             "(default passive_joint; give the same to `up --other-joints`)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the start and the noise")
    parser.add_argument("--domain-id", type=int, default=None,
                        help="ROS_DOMAIN_ID (default: the environment's)")


def parameters(args) -> dict[str, object]:
    """The node's parameters from the command's options."""
    return {
        "mass_scale": args.mass_scale, "length_scale": args.length_scale,
        "gravity_scale": args.gravity_scale, "damping": args.damping,
        "friction": args.friction, "encoder_counts_per_rev": args.counts_per_rev,
        "velocity_noise_std": args.velocity_noise, "actuator_delay_ms": args.delay_ms,
        "command_timeout_ms": args.timeout_ms, "rate_hz": args.rate, "seed": args.seed,
        "extra_joints": [j.strip() for j in args.extra_joints.split(",") if j.strip()]
        or [""],  # (an empty YAML list has no element type; the node drops empty names)
    }


def run(args) -> int:
    from .. import bringup
    from ..envs import get_task

    task = get_task(args.task)
    params_file = bringup.share_dir() / bringup.graph(task.name).config
    if not params_file.is_file():
        raise UserError(f"parameter file {params_file} is missing; reinstall the package")
    if args.rate <= 0 or args.timeout_ms <= 0 or args.delay_ms < 0 or args.counts_per_rev < 0:
        raise UserError("--rate and --timeout-ms must be positive, --delay-ms and "
                        "--counts-per-rev not negative")
    if min(args.mass_scale, args.length_scale) <= 0 or min(args.damping, args.friction) < 0:
        raise UserError("--mass-scale and --length-scale must be positive, --damping and "
                        "--friction not negative")
    folder = Path(tempfile.mkdtemp(prefix="sym-mbrl-fake-"))
    own = folder / "fake_hardware.yaml"
    own.write_text(bringup.overrides_yaml({"fake_hardware": parameters(args)}))
    cmd = bringup.node_command(bringup.FAKE_HARDWARE, [params_file, own])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(args.domain_id)
    print(f"fake {task.name} robot: {' '.join(cmd)}", flush=True)
    os.execve(cmd[0], cmd, env)
    return 0  # not reached: the node replaced this process
