"""sym-mbrl controller ACTION: activate, deactivate, inspect or e-stop a running controller.

The lifecycle client and e-stop switch of a pip-only install, where the ``ros2`` command line
does not exist: ``activate`` is ``ros2 lifecycle set NODE configure`` (only when the node is
still unconfigured, as ``sym-mbrl up --hardware`` leaves it) then ``... activate``;
``deactivate`` is ``... deactivate``; ``state`` is ``ros2 lifecycle get NODE`` plus the node's
newest /diagnostics line; ``estop`` and ``release`` call the node's ``~/estop`` service
(std_srvs/SetBool, true and false). The node is ``<namespace>/<node>`` (``/controller``;
``/robot1/controller`` for ``sym-mbrl up --namespace robot1`` or a fleet's first robot).
rclpy is imported only when the command runs, so every other command works without ROS.
"""

from __future__ import annotations

import os
import re
import time

from ..errors import UserError

HELP = "activate, deactivate, e-stop or release a running controller (no `ros2` CLI needed)"

ACTIONS = ("state", "activate", "deactivate", "estop", "release")
DIAGNOSTICS_WAIT_S = 2.5
"""How long ``state`` listens for the node's /diagnostics (published once a second)."""


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
    fqn = f"{absolute_namespace(args.namespace)}/{args.node}"
    with _Session(fqn, args.domain_id, args.timeout) as session:
        line = _ACTIONS[args.action](session)
    print(line, flush=True)
    return 0


# ----------------------------------------------------------------------------- actions
def _state(s: _Session) -> str:
    label = s.get_state()[1]
    diagnostics = s.diagnostics(min(DIAGNOSTICS_WAIT_S, s.left()))
    return f"{s.fqn}: {label}" + (f"; diagnostics {diagnostics}" if diagnostics else "")


def _activate(s: _Session) -> str:
    from lifecycle_msgs.msg import State, Transition

    state, label = s.get_state()
    if state == State.PRIMARY_STATE_ACTIVE:
        return f"{s.fqn}: active (it already was)"
    if state == State.PRIMARY_STATE_UNCONFIGURED:
        s.transition(Transition.TRANSITION_CONFIGURE, "configure", label)
        state, label = s.get_state()
    if state != State.PRIMARY_STATE_INACTIVE:
        raise UserError(f"{s.fqn} is {label} and cannot be activated"
                        + (" (a finalized node must be restarted)"
                           if state == State.PRIMARY_STATE_FINALIZED else ""))
    s.transition(Transition.TRANSITION_ACTIVATE, "activate", label)
    return f"{s.fqn}: {s.get_state()[1]}"


def _deactivate(s: _Session) -> str:
    from lifecycle_msgs.msg import State, Transition

    state, label = s.get_state()
    if state != State.PRIMARY_STATE_ACTIVE:
        return f"{s.fqn}: {label} (not active: it sends no commands)"
    s.transition(Transition.TRANSITION_DEACTIVATE, "deactivate", label)
    return f"{s.fqn}: {s.get_state()[1]} (its last command was the safe action)"


def _estop(engage: bool):
    def action(s: _Session) -> str:
        message = s.set_estop(engage)
        return f"{s.fqn}: {message} ({s.get_state()[1]})"
    return action


_ACTIONS = {"state": _state, "activate": _activate, "deactivate": _deactivate,
            "estop": _estop(True), "release": _estop(False)}


# ----------------------------------------------------------------------------- ROS client
class _Session:
    """A short-lived rclpy node that calls one controller's services before a deadline."""

    def __init__(self, fqn: str, domain_id: int | None, timeout: float):
        self.fqn, self.timeout = fqn, timeout
        self.domain = domain_id if domain_id is not None else int(
            os.environ.get("ROS_DOMAIN_ID", "0") or 0)
        self.deadline = time.monotonic() + timeout
        try:
            import rclpy
            from rclpy.executors import SingleThreadedExecutor
            from rclpy.signals import SignalHandlerOptions
        except ImportError:
            raise UserError("this command needs rclpy, lifecycle_msgs and std_srvs: a ROS 2 "
                            "install, or the PyPI wheels (see the README)") from None
        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context, domain_id=domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(f"sym_mbrl_cli_{os.getpid()}", context=self.context,
                                      enable_rosout=False, start_parameter_services=False)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)

    def left(self) -> float:
        """Seconds left before the deadline (0 when past it)."""
        return max(0.0, self.deadline - time.monotonic())

    def call(self, srv_type, service: str, request):
        """Call ``<fqn>/<service>``; UserError if the node is absent or silent until the
        deadline."""
        name = f"{self.fqn}/{service}"
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=self.left()):
                raise UserError(self._not_found())
            future = client.call_async(request)
            self.executor.spin_until_future_complete(future, timeout_sec=self.left())
            if not future.done():
                raise UserError(f"{name} did not answer within {self.timeout:g} s (--timeout)")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def _not_found(self) -> str:
        seen = sorted(f"{ns.rstrip('/')}/{name}"
                      for name, ns in self.node.get_node_names_and_namespaces()
                      if name == self.fqn.rsplit("/", 1)[1])
        hint = (f"; nodes of that name in this domain: {', '.join(seen)} (give its namespace "
                f"with --namespace)" if seen else "; is it running, in that namespace?")
        return (f"no node {self.fqn} answered on ROS_DOMAIN_ID {self.domain} within "
                f"{self.timeout:g} s{hint}")

    def get_state(self) -> tuple[int, str]:
        """The node's lifecycle state: (id, label)."""
        from lifecycle_msgs.srv import GetState

        state = self.call(GetState, "get_state", GetState.Request()).current_state
        return int(state.id), state.label

    def transition(self, transition_id: int, name: str, label: str) -> None:
        """Ask for one lifecycle transition; UserError if the node refuses it."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request(transition=Transition(id=transition_id))
        if not self.call(ChangeState, "change_state", request).success:
            raise UserError(f"{self.fqn} refused to {name} from {label}; its log says why")

    def set_estop(self, engage: bool) -> str:
        """Engage (True) or release (False) the e-stop; the node's answer."""
        from std_srvs.srv import SetBool

        response = self.call(SetBool, "estop", SetBool.Request(data=engage))
        if not response.success:
            raise UserError(f"{self.fqn} refused to {'engage' if engage else 'release'} the "
                            f"e-stop: {response.message}")
        return response.message

    def diagnostics(self, wait_s: float) -> str:
        """``LEVEL: message`` of the node's newest /diagnostics status ("" if none came)."""
        from diagnostic_msgs.msg import DiagnosticArray

        name = "sym_mbrl/" + self.fqn.lstrip("/")
        found: list[str] = []

        def on_diagnostics(msg) -> None:
            for status in msg.status:
                if status.name == name:
                    level = {0: "OK", 1: "WARN", 2: "ERROR"}.get(ord(status.level), "STALE")
                    found.append(f"{level}: {status.message}")

        sub = self.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        end = time.monotonic() + wait_s
        try:
            while not found and time.monotonic() < end:
                self.executor.spin_once(timeout_sec=min(0.1, max(0.0, end - time.monotonic())))
        finally:
            self.node.destroy_subscription(sub)
        return found[-1] if found else ""
