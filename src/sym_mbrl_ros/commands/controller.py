"""sym-mbrl controller ACTION: activate, deactivate, inspect or e-stop a running controller.

The lifecycle client and e-stop switch of a pip-only install, where the ``ros2`` command line
does not exist: ``activate`` is ``ros2 lifecycle set NODE configure`` (only when the node is
still unconfigured, as ``sym-mbrl up --hardware`` leaves it) then ``... activate``;
``deactivate`` is ``... deactivate``; ``state`` is ``ros2 lifecycle get NODE`` plus the node's
newest /diagnostics line; ``estop`` and ``release`` call the node's ``~/estop`` service
(std_srvs/SetBool, true and false). The node is ``<namespace>/<node>`` (``/controller``;
``/robot1/controller`` for ``sym-mbrl up --namespace robot1`` or a fleet's first robot).
The ROS client lives in ``nodes/controller_client.py`` (only ``nodes/`` imports rclpy); it is
imported only when the command runs, so every other command works without ROS.
"""

from __future__ import annotations

import re

from ..errors import UserError

HELP = "activate, deactivate, e-stop or release a running controller (no `ros2` CLI needed)"

ACTIONS = ("state", "activate", "deactivate", "estop", "release")


def add_arguments(parser) -> None:
    parser.add_argument(
        "action", choices=ACTIONS, metavar="ACTION",
        help="state: print the lifecycle state and the newest /diagnostics status; activate: "
             "start commanding (an unconfigured node is configured first, as `sym-mbrl up "
             "--hardware` leaves it; an active one is left as it is); deactivate: one safe "
             "command, then silence (the configuration is kept); estop: engage the e-stop, in "
             "any lifecycle state (the safe action at once and every tick while active; it "
             "holds through deactivate and configure); release: end the e-stop (an active "
             "controller acts again at once)")
    parser.add_argument("--namespace", default="",
                        help="namespace of the graph, as given to `sym-mbrl up --namespace` "
                             "(a fleet's robots: robot1, robot2, ...; default: none)")
    parser.add_argument("--node", default="controller",
                        help="name of the controller node (default controller)")
    parser.add_argument("--domain-id", type=int, default=None,
                        help="ROS_DOMAIN_ID of the graph (default: the environment's)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="give up (exit code 2) if the node has not answered within this "
                             "many seconds, discovery included (default 10)")


def run(args) -> int:
    from ..bringup import absolute_namespace

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.node):
        raise UserError(f"--node {args.node!r} is not a ROS node name: letters, digits and _ "
                        f"(not first)")
    if not args.timeout > 0:
        raise UserError("--timeout must be a positive number of seconds")
    if args.domain_id is not None and not 0 <= args.domain_id <= 232:
        raise UserError("--domain-id must be between 0 and 232")
    try:
        from ..nodes.controller_client import run_action
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("rclpy", "lifecycle_msgs", "std_srvs",
                                                  "diagnostic_msgs"):
            raise
        raise UserError("this command needs rclpy, lifecycle_msgs and std_srvs: a ROS 2 "
                        "install, or the PyPI wheels (see the README)") from None
    fqn = f"{absolute_namespace(args.namespace)}/{args.node}"
    print(run_action(args.action, fqn, args.domain_id, args.timeout), flush=True)
    return 0
