"""What every node shares: QoS profiles, parameter declaration, /diagnostics, and ``main``."""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.executors import (
    ExternalShutdownException,
    MultiThreadedExecutor,
    SingleThreadedExecutor,
)
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

# State and command topics: reliable, like ros2_control.
QOS_STREAM = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
# The controller's side of the state topics: only the newest state matters; a slow tick (an
# MPC step) must not leave a queue of stale states behind it.
QOS_NEWEST = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
# The recorder's side of the same topics: a deep queue, so that a busy moment (a slow disk, a
# starved CPU) delays transitions instead of losing them. Compatible with QOS_STREAM writers.
QOS_RECORD = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2000,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
# Model, policy, target, episode and e-stop: the last value reaches late joiners.
QOS_LATCHED = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
QOS_EVENTS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)

# Relative names: a graph started under a namespace (robot1) uses /robot1/sym_mbrl/policy and
# so on, so that several graphs share one DDS domain. In a fleet the robots' controllers are
# remapped to the fleet's model, policy and training topics (bringup.py).
MODEL_TOPIC = "sym_mbrl/dynamics_model"
POLICY_TOPIC = "sym_mbrl/policy"
TARGET_TOPIC = "sym_mbrl/target"
EPISODE_TOPIC = "sym_mbrl/episode"
ESTOP_TOPIC = "sym_mbrl/estop"
TRAINING_TOPIC = "sym_mbrl/training"
MARKER_TOPIC = "sym_mbrl/markers"
# Numeric learning progress next to the JSON (plots in Foxglove, PlotJuggler, rosbag).
MODEL_SCORE_TOPIC = "sym_mbrl/model/heldout_r2"
MODEL_TEXT_TOPIC = "sym_mbrl/model/equations"
PROGRESS_TOPIC = "sym_mbrl/progress"
EPISODE_RETURN_TOPIC = "sym_mbrl/episode_return"
COMMAND_ECHO_TOPIC = "sym_mbrl/command_echo"  # which state each command answered
DIAGNOSTICS_TOPIC = "/diagnostics"  # the one aggregator topic of the domain, as in ROS

_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}


def declare(node: Node, name: str, default: Any, description: str) -> Any:
    """Declare a parameter with a description and return its value.

    An empty list default must say its element type: pass ``("str", [])`` (or ``"float"``,
    ``"int"``).
    """
    typed_empty = None
    if isinstance(default, tuple) and len(default) == 2 and isinstance(default[0], str):
        kind, default = default
        ptype = {"str": ParameterType.PARAMETER_STRING_ARRAY,
                 "float": ParameterType.PARAMETER_DOUBLE_ARRAY,
                 "int": ParameterType.PARAMETER_INTEGER_ARRAY}[kind]
        if not default:
            typed_empty = {"str": Parameter.Type.STRING_ARRAY,
                           "float": Parameter.Type.DOUBLE_ARRAY,
                           "int": Parameter.Type.INTEGER_ARRAY}[kind]
    elif isinstance(default, list):
        ptype = {str: ParameterType.PARAMETER_STRING_ARRAY,
                 float: ParameterType.PARAMETER_DOUBLE_ARRAY,
                 int: ParameterType.PARAMETER_INTEGER_ARRAY}[type(default[0])]
    else:
        ptype = _TYPES[type(default)]
    desc = ParameterDescriptor(name=name, type=ptype, description=description)
    if ptype == ParameterType.PARAMETER_DOUBLE:
        desc.dynamic_typing = True  # YAML writes 1 for 1.0; accept integers for floats
    # an empty list has no element type, so declare it by type (value: None if unset)
    value = node.declare_parameter(name, typed_empty or default, desc).value
    if value is None:
        return list(default)
    if ptype == ParameterType.PARAMETER_DOUBLE:
        return float(value)
    if ptype == ParameterType.PARAMETER_DOUBLE_ARRAY:
        return [float(v) for v in value]
    if ptype in (ParameterType.PARAMETER_STRING_ARRAY, ParameterType.PARAMETER_INTEGER_ARRAY):
        return list(value)
    return value


OK, WARN, ERROR = 0, 1, 2
"""Diagnostic levels (diagnostic_msgs/DiagnosticStatus), as ints that compare."""


class Diagnostics:
    """Counters, values and conditions of one node, published on /diagnostics once a period.

    ``drop(reason, text)`` is the single path for bad input: it counts ``dropped/<reason>``
    and logs a warning at most once every ``warn_every_s`` per reason. ``condition(name,
    level, text)`` raises a named condition (``WARN`` or ``ERROR``) until it is cleared with
    ``condition(name, OK)``. The level published is the worst of: WARN while a message was
    dropped within the last ``drop_window_s``, and every active condition; OK otherwise.

    Thread-safe: worker threads count while the timer publishes a snapshot taken under a lock.
    """

    def __init__(self, node: Node, period_s: float = 1.0, warn_every_s: float = 5.0,
                 callback_group=None, drop_window_s: float = 10.0):
        self.node = node
        self.counts: dict[str, int] = {}
        self.values: dict[str, str] = {}
        self.conditions: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._last_drop = -math.inf
        self._warned: dict[str, float] = {}
        self._warn_every = warn_every_s
        self._drop_window = drop_window_s
        self._pub = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._timer = node.create_timer(period_s, self.publish, callback_group=callback_group)

    def close(self) -> None:
        self.node.destroy_timer(self._timer)
        self.node.destroy_publisher(self._pub)

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to a counter."""
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def get(self, key: str) -> int:
        """A counter's value (0 if never counted)."""
        with self._lock:
            return self.counts.get(key, 0)

    def set(self, key: str, value: Any) -> None:
        """Set a value shown next to the counters (floats with 6 significant digits)."""
        text = value if isinstance(value, str) else f"{value:.6g}" if isinstance(
            value, float) else str(value)
        with self._lock:
            self.values[key] = text

    def drop(self, reason: str, text: str) -> None:
        """Count a dropped input under ``dropped/<reason>`` and log it (rate-limited)."""
        with self._lock:
            key = f"dropped/{reason}"
            self.counts[key] = self.counts.get(key, 0) + 1
            self._last_drop = time.monotonic()
        self.warn(reason, f"dropped: {text}")

    def warn(self, key: str, text: str) -> None:
        """Log a warning at most once every ``warn_every_s`` per key."""
        now = time.monotonic()
        with self._lock:
            if now - self._warned.get(key, -1e9) < self._warn_every:
                return
            self._warned[key] = now
            n = self.counts.get(f"dropped/{key}")
        self.node.get_logger().warning(text + (f" ({n} so far)" if n else ""))

    def condition(self, name: str, level: int, text: str = "") -> None:
        """Raise condition ``name`` at ``level`` (WARN or ERROR) with ``text``; OK clears it."""
        with self._lock:
            if level == OK:
                self.conditions.pop(name, None)
            else:
                self.conditions[name] = (int(level), text or name)

    @property
    def dropped(self) -> int:
        """Messages dropped since start, over all reasons."""
        with self._lock:
            return sum(v for k, v in self.counts.items() if k.startswith("dropped/"))

    def snapshot(self) -> tuple[int, str, dict[str, int], dict[str, str]]:
        """``(level, message, counts, values)``, consistent with each other at one instant."""
        with self._lock:
            counts, values = dict(self.counts), dict(self.values)
            conditions = sorted(self.conditions.values(), key=lambda c: -c[0])
            since_drop = time.monotonic() - self._last_drop
        dropped = sum(v for k, v in counts.items() if k.startswith("dropped/"))
        level, parts = OK, [text for _, text in conditions]
        if conditions:
            level = conditions[0][0]
        if since_drop <= self._drop_window:
            level = max(level, WARN)
            parts.append(f"{dropped} dropped, the last {since_drop:.1f} s ago")
        return level, "; ".join(parts) or "ok", counts, values

    def publish(self) -> None:
        """Publish the current snapshot on /diagnostics."""
        level, message, counts, values = self.snapshot()
        status = DiagnosticStatus()
        # the namespace keeps two robots' controllers apart: sym_mbrl/robot1/controller
        status.name = "sym_mbrl/" + self.node.get_fully_qualified_name().lstrip("/")
        status.hardware_id = "sym_mbrl_ros"
        status.level = bytes([level])
        status.message = message
        status.values = [KeyValue(key=k, value=str(v)) for k, v in sorted(counts.items())]
        status.values += [KeyValue(key=k, value=v) for k, v in sorted(values.items())]
        msg = DiagnosticArray()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.status = [status]
        self._pub.publish(msg)


def labelled_array(values: dict[str, float]) -> Any:
    """A std_msgs/Float64MultiArray of ``values`` whose one dimension's label names them in
    order (``"version,theta,theta_dot"``): Foxglove and PlotJuggler plot ``data[i]``."""
    from std_msgs.msg import Float64MultiArray, MultiArrayDimension

    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=",".join(values), size=len(values), stride=1)]
    msg.data = [float(v) for v in values.values()]
    return msg


def stamp_ns(stamp) -> int:
    """A builtin_interfaces/Time as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def to_stamp(ns: int, msg_stamp) -> Any:
    """Write integer nanoseconds into a builtin_interfaces/Time in place; returns it."""
    msg_stamp.sec, msg_stamp.nanosec = divmod(int(ns), 1_000_000_000)
    return msg_stamp


def _events_executor():
    """rclpy's C++ EventsExecutor (Jazzy: ``rclpy.experimental``), or None where it is absent.

    It dispatches a subscription callback without rebuilding a wait set per spin, which cuts
    the controller's state-to-command latency (``bench/control_latency.py``).
    """
    try:
        from rclpy.experimental import EventsExecutor
    except ImportError:
        return None
    return EventsExecutor()


def _fall_back(node: Node, executor: Any, exc: Exception) -> SingleThreadedExecutor:
    """Move ``node`` from a failed EventsExecutor to rclpy's single-threaded one, logged and
    counted (``executor_fallbacks`` in /diagnostics): a node keeps running, slower, instead
    of dying. rclpy's experimental EventsExecutor raised ``SystemError: null argument to
    internal routine`` from ``spin_once`` in a controller after 50 s on the fake robot
    (bench/hardware.py, seed 101), which stopped the whole run."""
    node.get_logger().error(f"the events executor failed ({exc!r}); spinning on with the "
                            "single-threaded executor")
    diag = getattr(node, "diag", None)
    if isinstance(diag, Diagnostics):
        diag.count("executor_fallbacks")
    try:
        executor.remove_node(node)
        executor.shutdown(timeout_sec=1.0)
    except Exception as err:  # noqa: BLE001 - a broken executor may fail to let go too
        node.get_logger().warning(f"the failed executor did not shut down cleanly: {err!r}")
    fallback = SingleThreadedExecutor()
    fallback.add_node(node)
    return fallback


def run(make_node: Callable[[], Node], args: list[str] | None = None, threads: int = 1,
        events: bool = False) -> int:
    """``rclpy.init`` → spin the node → clean shutdown, on Ctrl-C and SIGTERM alike.

    rclpy's own signal handlers are off so that the context is still valid when the node
    says goodbye (the controller sends a last zero command in ``close()``). SIGTERM and SIGINT
    only set a flag that the spin loop checks every 0.1 s: no exception is raised inside a
    callback. ``events``: spin with the EventsExecutor where this rclpy has it (the
    single-threaded executor otherwise).
    """
    rclpy.init(args=sys.argv if args is None else args,
               signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    node = executor = None
    try:
        node = make_node()
        if threads > 1:
            executor = MultiThreadedExecutor(num_threads=threads)
        else:
            executor = (_events_executor() if events else None) or SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and not stop.is_set():
            try:
                executor.spin_once(timeout_sec=0.1)
            except (KeyboardInterrupt, ExternalShutdownException):
                raise
            except Exception as exc:  # noqa: BLE001 - the executor's, not a callback's
                if isinstance(executor, (SingleThreadedExecutor, MultiThreadedExecutor)):
                    raise
                executor = _fall_back(node, executor, exc)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            if executor is not None:
                executor.remove_node(node)
            node.destroy_node()
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if rclpy.ok():
            rclpy.shutdown()
    return 0
