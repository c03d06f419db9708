"""The ROS side of ``sym-mbrl controller``: a short-lived rclpy client that calls one
controller's lifecycle and e-stop services (``commands/controller.py`` parses the command line).
"""

from __future__ import annotations

import os
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from std_srvs.srv import SetBool

from ..errors import UserError

DIAGNOSTICS_WAIT_S = 2.5
"""How long ``state`` listens for the node's /diagnostics (published once a second)."""


def run_action(action: str, fqn: str, domain_id: int | None, timeout: float) -> str:
    """Carry out ``action`` on the controller ``fqn``; the line to print."""
    with _Session(fqn, domain_id, timeout) as session:
        return _ACTIONS[action](session)


# ----------------------------------------------------------------------------- actions
def _state(s: _Session) -> str:
    label = s.get_state()[1]
    diagnostics = s.diagnostics(min(DIAGNOSTICS_WAIT_S, s.left()))
    return f"{s.fqn}: {label}" + (f"; diagnostics {diagnostics}" if diagnostics else "")


def _activate(s: _Session) -> str:
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
        rclpy.try_shutdown(context=self.context)

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
        state = self.call(GetState, "get_state", GetState.Request()).current_state
        return int(state.id), state.label

    def transition(self, transition_id: int, name: str, label: str) -> None:
        """Ask for one lifecycle transition; UserError if the node refuses it."""
        request = ChangeState.Request(transition=Transition(id=transition_id))
        if not self.call(ChangeState, "change_state", request).success:
            raise UserError(f"{self.fqn} refused to {name} from {label}; its log says why")

    def set_estop(self, engage: bool) -> str:
        """Engage (True) or release (False) the e-stop; the node's answer."""
        response = self.call(SetBool, "estop", SetBool.Request(data=engage))
        if not response.success:
            raise UserError(f"{self.fqn} refused to {'engage' if engage else 'release'} the "
                            f"e-stop: {response.message}")
        return response.message

    def diagnostics(self, wait_s: float) -> str:
        """``LEVEL: message`` of the node's newest /diagnostics status ("" if none came)."""
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
