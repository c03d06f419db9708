"""controller: a lifecycle node that turns the newest state into a clipped command.

Lifecycle: *configure* creates the (lifecycle) command publisher and the state
subscriptions, *activate* starts the fixed-rate loop, *deactivate* sends one safe command and
stops it, *cleanup* releases them. ``autostart: true`` configures and activates at start-up
(what ``sym-mbrl up`` and the launch files use in simulation); with ``false`` the node stays
unconfigured and sends nothing until the standard lifecycle services configure and activate
it (``ros2 lifecycle set /controller activate``).

Acting: until a policy message arrives the controller explores (``exploration``, bounded to
``exploration_amplitude`` of the action range); then it uses the newest valid policy (a
malformed one is dropped and the previous one kept, so a dead learner or trainer leaves the
robot on its last policy; ``dropped/bad_policy`` counts them and ``bad_policy/<reason>`` says
why: format, truncated, hash, shape or task). A policy message carries the weights themselves
(:mod:`.policy_payload`): the controller opens no file of the trainer's, so it can run on
another machine. With ``planner`` set (the sym-mpc hook) it plans with the newest
world model instead. Policy and model messages are loaded by one loader thread beside the
loop; a message that arrives while another of its kind waits replaces it (counted as
``superseded/<kind>``).

Loop: a wall-clock timer at the control period (``rate_hz``, default 1/dt). With
``trigger: timer`` each tick acts on the newest state if it has not acted on it yet; with
``trigger: state`` it acts as soon as a new state arrives (lowest latency) and the timer only
keeps watch.

Safety. Every fallback sends the *safe action* of the ``command_interface``: zero for
``effort`` and ``velocity`` (a twist: zero twist); for ``position`` the position of each
commanded joint measured when the fallback began, held until normal acting resumes (nothing
at all before a position was measured). In order:

1. e-stop: engaged by ``~/estop`` (std_srvs/SetBool) or a Bool on ``/sym_mbrl/estop``
   (any publisher: volatile or latched); the safe action every tick until an explicit
   release (SetBool false, Bool false). It survives deactivate, cleanup and configure. For
   ``estop_settle_s`` (0.3 s) after the node starts it sends only the safe action, so that a
   stop latched before it started is discovered before the first computed command.
2. watchdog: no fresh state for ``watchdog_periods`` periods;
3. safety envelope: a measured state outside the robot's joint ``<limit>`` (the URDF,
   ``urdf``) or the ``envelope`` overrides, until it is back inside;
4. NaN guard: a non-finite or mis-shaped action, or a policy that raises;
5. clipping to the task's action limits and the envelope's command limits (``effort.<joint>``
   and the like for array commands, ``twist.linear.x`` and the like for a twist).

Command echo: with every command the controller publishes a record on ``sym_mbrl/command_echo``
(std_msgs/Int64MultiArray labelled ``seq,state_stamp_ns,state_received_ns,command_sent_ns,kind``):
the header stamp of the state the action was computed from, when this node took that state in
and when it sent the command (system clock ns; the time the command codec stamps), a sequence
number, and the kind: 0 computed from that state, 1 a safe action, 2 the lockstep kick. Kinds 1
and 2 answer no state: their stamp and receive time are -1. A consumer (``bench/
control_latency.py``) thus pairs each command with the state it answered, not the newest one.

/diagnostics: WARN while the e-stop is engaged (or messages were dropped recently), ERROR
while the watchdog fires or the envelope is violated, OK again when the cause ends.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque

import numpy as np
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from std_msgs.msg import Bool, Int64MultiArray, MultiArrayDimension, String
from std_srvs.srv import SetBool

from .common import (
    COMMAND_ECHO_TOPIC,
    ERROR,
    ESTOP_TOPIC,
    MODEL_TOPIC,
    OK,
    POLICY_TOPIC,
    QOS_LATCHED,
    QOS_NEWEST,
    QOS_STREAM,
    TRAINING_TOPIC,
    WARN,
    Diagnostics,
    declare,
    run,
)
from .params import TaskParams
from .policies import Exploration, PolicyError, load_planner, load_policy
from .topics import BadMessage, StateInput

INTERFACES = ("effort", "velocity", "position")
ECHO_FIELDS = ("seq", "state_stamp_ns", "state_received_ns", "command_sent_ns", "kind")
"""The elements of a command echo record, in order (its dimension's label)."""
ECHO_ANSWER, ECHO_SAFE, ECHO_KICK = 0, 1, 2
"""Echo ``kind``: computed from the named state; a safe action; the lockstep kick."""
NO_STATE = (-1, -1)
"""Echo ``state_stamp_ns, state_received_ns`` of a command that answers no state."""


class Controller(LifecycleNode):
    """Runs the control loop; see the module docstring."""

    def __init__(self, **kwargs):
        super().__init__("controller", **kwargs)
        self.p = TaskParams.declare(self)
        task = self.p.task
        rate = declare(self, "rate_hz", 0.0, "loop rate in Hz (0: 1/dt of the task)")
        self.period = 1.0 / rate if rate > 0 else task.dt
        self.trigger = declare(self, "trigger", "timer",
                               "timer: act on each tick; state: act when a new state arrives")
        self.watchdog_periods = declare(self, "watchdog_periods", 3.0,
                                        "safe action after this many periods without a fresh "
                                        "state")
        self.estop_settle_s = declare(self, "estop_settle_s", 0.3,
                                      "safe action until this long after the node started, so "
                                      "that an e-stop latched before it reaches it first")
        exploration = declare(self, "exploration", "uniform",
                              "actions before a policy exists: uniform, gaussian or zero")
        hold = declare(self, "exploration_hold_steps", 1,
                       "repeat each exploratory action this many ticks")
        scale = declare(self, "exploration_scale", 0.5,
                        "gaussian exploration: std as a fraction of the half-range")
        amplitude = declare(self, "exploration_amplitude", 1.0,
                            "exploratory actions stay within this fraction of the half-range "
                            "around the middle of the action box (1: the whole box)")
        seed = declare(self, "seed", 0, "seed of the exploration noise")
        self.policy_noise = declare(self, "policy_noise", 0.0,
                                    "gaussian noise added to policy actions, as a fraction of "
                                    "the half-range (exploration while learning)")
        self.planner_spec = declare(self, "planner", "",
                                    "MPC planner as module:factory, e.g. "
                                    "sym_mbrl_ros.agents.mpc:make_planner (the sym-mpc hook); "
                                    "empty: use the published policy")
        planner_options = declare(self, "planner_options", "{}",
                                  "JSON object of keyword arguments for the planner factory")
        self.sync = declare(self, "sync_updates_per_step", 0.0,
                            "simulation only: send nothing (the lockstep world waits) while "
                            "the policy trainer has done fewer SAC updates than this per real "
                            "step since its first model; 0 never waits. Never on a robot.")
        self.fleet_size = max(1, declare(self, "fleet_size", 1,
                                         "robots feeding the trainer (sym-mbrl up --robots): "
                                         "sync counts SAC updates per step of each robot, the "
                                         "trainer's pooled transitions divided by this"))
        self.stamp_age = declare(self, "max_stamp_age_s", 2.0,
                                 "drop states whose stamp is further than this from now")
        interface = declare(self, "command_interface", "",
                            "effort, velocity or position: what the commands drive, and so "
                            "the safe action (zero; zero; the last measured position); empty: "
                            "velocity for twist commands, else the one of the three words in "
                            "the command topic")
        self.lockstep_kick = declare(
            self, "lockstep_kick", False,
            "simulation only: until the first state arrives the watchdog sends the task's zero "
            "action even under position control (a lockstep sim bridge publishes nothing "
            "before a command). Never on a robot: it would drive an arm to its zero pose.")
        diag_period = declare(self, "diagnostics_period_s", 1.0,
                              "publish /diagnostics this often")
        autostart = declare(self, "autostart", True,
                            "configure and activate at start-up; false: wait for the "
                            "lifecycle services (a robot)")
        try:
            self.planner_options = json.loads(planner_options)
            if not isinstance(self.planner_options, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise SystemExit(f"controller: planner_options must be a JSON object ({exc})") from None
        if self.trigger not in ("timer", "state"):
            raise SystemExit(f"controller: trigger must be timer or state, not {self.trigger!r}")
        try:
            self.exploration = Exploration(task, exploration, hold, scale, seed, amplitude)
        except PolicyError as exc:
            raise SystemExit(f"controller: {exc}") from None
        self.interface = self._command_interface(interface)
        self.envelope = self.p.envelope
        self.rng = np.random.default_rng(self.exploration.rng.integers(1 << 31))
        self.low, self.high = self._command_bounds()
        self.zero = np.clip(np.zeros(task.action_dim), self.low, self.high)
        self._bounded = [f for f in self.p.layout.fields if f in self.envelope.limits]
        self._bounds = self.envelope.bounds(self._bounded)
        self._position_fields = [f"position.{j}" for j in self.p.joint_names]
        self.diag = Diagnostics(self, period_s=diag_period)

        # The e-stop lives as long as the node, not a lifecycle: an engaged e-stop survives
        # deactivate/cleanup/configure, and a robot can be stopped before it is activated.
        self.estop = False
        self._released_ns = 0  # source stamp of the last release (stale latched stops lose)
        self._estop_srv = self.create_service(SetBool, "~/estop", self.on_estop_service)
        # a latched stop arrives only once DDS has discovered its publisher: a computed command
        # sent before that (a loaded machine took longer than one 50 ms tick) is unsafe
        self._settled_at = time.monotonic() + self.estop_settle_s
        self._estop_subs = [
            # volatile: matches every publisher, `ros2 topic pub` and latched ones alike
            self.create_subscription(Bool, ESTOP_TOPIC, self.on_estop, QOS_STREAM),
            # transient-local: a stop latched before this node started still reaches it. A
            # volatile publisher cannot match it; rclpy's warning about that would read as if
            # the stop were lost (the subscription above receives it), so it is silenced.
            self.create_subscription(
                Bool, ESTOP_TOPIC, self.on_latched_estop, QOS_LATCHED,
                event_callbacks=SubscriptionEventCallbacks(incompatible_qos=lambda event: None)),
        ]

        self._echo = Int64MultiArray()  # one message, refilled per command (the hot path)
        self._echo.layout.dim = [MultiArrayDimension(
            label=",".join(ECHO_FIELDS), size=len(ECHO_FIELDS), stride=len(ECHO_FIELDS))]
        self._echo_seq = 0  # over the node's life: a gap means a lost record
        self._loading = threading.Lock()
        self._pending: dict[str, tuple] = {}
        self._loader_busy = False
        self._reset_runtime()
        self.policy = None
        self.policy_version = None
        if autostart:
            self.trigger_configure()
            self.trigger_activate()

    def _command_interface(self, name: str) -> str:
        if not name:
            if self.p.codec.kind == "twist":
                return "velocity"
            found = [i for i in INTERFACES if i in self.p.command_topic]
            if len(found) != 1:
                raise SystemExit(f"controller: set command_interface (effort, velocity or "
                                 f"position) for {self.p.command_topic}; it decides the safe "
                                 f"command")
            name = found[0]
        if name not in INTERFACES:
            raise SystemExit(f"controller: command_interface must be effort, velocity or "
                             f"position, not {name!r}")
        if name == "position":
            if self.p.codec.kind != "array":
                raise SystemExit("controller: command_interface position needs array commands")
            missing = [j for j in self.p.joint_names
                       if f"position.{j}" not in self.p.layout.fields]
            if missing:
                raise SystemExit(f"controller: position commands hold the measured position "
                                 f"when stopping; add position.{missing[0]} to state_fields")
        return name

    def _command_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The task's action box, narrowed by the envelope's limits of the commanded joints
        (``<interface>.<joint>``) or twist components (``twist.<component>``)."""
        low = self.p.task.action_low.astype(float)
        high = self.p.task.action_high.astype(float)
        if self.p.codec.kind == "array":
            kind, names = self.interface, self.p.joint_names
            e_low, e_high = self.envelope.command_bounds(kind, names)
        else:
            kind, names = "twist", list(self.p.codec.twist_fields)
            e_low, e_high = self.envelope.twist_bounds(names)
        low, high = np.maximum(low, e_low), np.minimum(high, e_high)
        if np.any(low > high):
            raise SystemExit(f"controller: the envelope's {kind} limits of {names} exclude "
                             f"the task's whole action box")
        return low, high

    def _reset_runtime(self) -> None:
        self.training: dict | None = None
        self.values: dict[str, float] | None = None
        self.measured: np.ndarray | None = None  # position of each commanded joint
        self._hold: np.ndarray | None = None  # what position control holds in a fallback
        self.violations: list = []
        self.state_seq = 0
        self.acted_seq = 0
        self.state_time = -1e9
        self._state_at = NO_STATE  # (stamp, receive time) of the newest state, ns
        self.mode = "idle"
        self.pub = self.echo_pub = self.timer = None
        self._subs: list = []
        self._tick_times: deque[float] = deque(maxlen=500)
        self._compute: deque[float] = deque(maxlen=500)
        self._last_tick = None

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.pub = self.create_lifecycle_publisher(self.p.codec.msg_type, self.p.command_topic,
                                                   QOS_STREAM)
        self.echo_pub = self.create_lifecycle_publisher(Int64MultiArray, COMMAND_ECHO_TOPIC,
                                                        QOS_STREAM)
        self.input = StateInput(self, self.p, self.diag, self.on_state, self.stamp_age,
                                QOS_NEWEST)
        subs = self.input.subscriptions + [
            self.create_subscription(String, POLICY_TOPIC, self.on_policy, QOS_LATCHED),
        ]
        if self.sync > 0:
            subs.append(self.create_subscription(String, TRAINING_TOPIC, self.on_training,
                                                 QOS_LATCHED))
        if self.planner_spec:
            subs.append(self.create_subscription(String, MODEL_TOPIC, self.on_model, QOS_LATCHED))
        self._subs = subs
        self.mode = "inactive"
        self.get_logger().info(
            f"configured: {self.p.task.name}, {self.interface} commands on "
            f"{self.p.command_topic} every {self.period * 1e3:.1f} ms ({self.trigger}-triggered)"
            + (" - E-STOP ENGAGED" if self.estop else ""))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.timer = self.create_timer(self.period, self.on_tick)
        self.state_time = time.monotonic()  # the watchdog counts from activation
        self.mode = "explore" if self.policy is None else "policy"
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._publish_safe()  # leave the robot with the safe command, not the last one
        self._stop_timer()
        self.mode = "inactive"
        self.diag.condition("watchdog", OK)
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.timer is not None:
            self._publish_safe()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """On process exit: the safe command if the loop was running."""
        if self.timer is not None:
            self._publish_safe()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.destroy_timer(self.timer)
            self.timer = None

    def _teardown(self) -> None:
        self._stop_timer()
        for s in self._subs:
            self.destroy_subscription(s)
        for pub in (self.pub, self.echo_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._reset_runtime()  # a learned policy and the e-stop survive cleanup; data does not
        for name in ("watchdog", "envelope"):
            self.diag.condition(name, OK)

    # ------------------------------------------------------------------ inputs
    def on_state(self, ns: int, values: dict[str, float]) -> None:
        self._state_at = (ns, time.time_ns())
        self.values = values
        self.state_seq += 1
        self.state_time = time.monotonic()
        measured = {**self.input.joints_at(), **values}
        if self.interface == "position":
            self.measured = np.array([measured[f] for f in self._position_fields])
        self._check_envelope(measured)
        if self.trigger == "state" and self.timer is not None:
            self._act()

    def _check_envelope(self, measured: dict[str, float]) -> None:
        fields = [f for f in self._bounded if f in measured]
        x = np.array([measured[f] for f in fields])
        if len(fields) == len(self._bounded) and not self.violations and np.all(
                (x >= self._bounds[0]) & (x <= self._bounds[1])):
            return  # the common case, without building a report
        violations = self.envelope.violations(fields, x)
        if violations:
            text = "outside the safety envelope: " + ", ".join(map(str, violations))
            if not self.violations:
                self.diag.count("envelope_violations")
            self.diag.condition("envelope", ERROR, text + ": safe action")
            self.diag.warn("envelope", text + ": safe action")
        elif self.violations:
            self.diag.condition("envelope", OK)
            self.get_logger().info("state back inside the safety envelope")
        self.violations = violations

    def on_estop_service(self, request: SetBool.Request, response: SetBool.Response
                         ) -> SetBool.Response:
        """``~/estop``: true engages the e-stop, false releases it."""
        if not request.data:
            self._released_ns = time.time_ns()
        self._set_estop(bool(request.data), "service")
        response.success = True
        response.message = "e-stop engaged" if self.estop else "e-stop released"
        return response

    def on_estop(self, msg: Bool, info) -> None:
        """A live Bool (any publisher): true engages, false releases."""
        if not msg.data:
            self._released_ns = _source_ns(info) or time.time_ns()
        self._set_estop(bool(msg.data), "topic")

    def on_latched_estop(self, msg: Bool, info) -> None:
        """The transient-local copy: only engages (releases arrive live on the other one), and
        never with a stop older than the last release."""
        if msg.data and _source_ns(info) > self._released_ns:
            self._set_estop(True, "latched topic")

    def _set_estop(self, engaged: bool, source: str) -> None:
        changed = engaged != self.estop
        self.estop = engaged
        self.diag.condition("estop", WARN if engaged else OK,
                            "e-stop engaged: safe action" if engaged else "")
        if engaged:
            self._publish_safe()  # now, not at the next tick
        if changed:
            # (one call site per severity: rclpy refuses to change it between calls)
            if engaged:
                self.diag.count("estop")
                self.get_logger().warning(f"EMERGENCY STOP engaged ({source}): safe action")
            else:
                self.get_logger().info(f"e-stop released ({source})")

    def on_policy(self, msg: String) -> None:
        self._load_beside_loop("policy", self._policy_from, msg.data)

    def on_model(self, msg: String) -> None:
        self._load_beside_loop("model", self._planner_from, msg.data)

    def _load_beside_loop(self, kind: str, build, text: str) -> None:
        """Loading (file read, hash, weights, planner set-up) runs in one thread beside the
        loop; a message waiting there is replaced by a newer one of its kind."""
        with self._loading:
            superseded = kind in self._pending
            self._pending[kind] = (build, text)
            start, self._loader_busy = not self._loader_busy, True
        if superseded:
            self.diag.count(f"superseded/{kind}")
        if start:
            threading.Thread(target=self._loader, name="controller-loader", daemon=True).start()

    def _loader(self) -> None:
        while True:
            with self._loading:
                if not self._pending:
                    self._loader_busy = False
                    return
                kind = next(iter(self._pending))
                build, text = self._pending.pop(kind)
            try:
                build(text)
            except Exception as exc:  # a bug in loading must not end the loader for good
                self.diag.drop(f"bad_{kind}", f"loading a {kind} failed: "
                               f"{type(exc).__name__}: {exc}")

    def _policy_from(self, text: str) -> None:
        try:
            policy, info = load_policy(text, self.p.task)
        except PolicyError as exc:
            self.diag.count(f"bad_policy/{exc.reason}")
            self.diag.drop("bad_policy", f"policy message: {exc}")
            return
        if self.planner_spec:
            return  # with a planner, the planner is in charge
        self.policy, self.policy_version = policy, info.get("version")
        self.diag.count("policies")
        self.diag.set("policy_version", str(self.policy_version))
        self.get_logger().info(f"using policy {info['kind']} v{self.policy_version}")

    def _planner_from(self, text: str) -> None:
        try:
            planner = load_planner(self.planner_spec, self.p.task, text, self.planner_options)
        except PolicyError as exc:
            self.diag.drop("bad_model", f"model message: {exc}")
            return
        except Exception as exc:  # the factory (set-up, warm-up plan) failed: keep the old one
            self.diag.drop("bad_model", f"planner set-up failed: {type(exc).__name__}: {exc}")
            return
        self.policy = planner
        self.diag.count("models")

    def on_training(self, msg: String) -> None:
        try:
            progress = json.loads(msg.data)
            self.training = {"updates": int(progress["updates"]),
                             "transitions": int(progress["transitions"]),
                             "first": progress.get("first_model_transitions"),
                             "head_start": int(progress.get("head_start_updates", 0)),
                             "received": time.monotonic()}
        except (ValueError, KeyError, TypeError) as exc:
            self.diag.drop("bad_training", f"training progress: {exc}")

    def _waiting_for_training(self) -> bool:
        """Sync mode: is the trainer (alive, with a model) behind its updates per step, plus
        the head start it takes in its first model (MBPO's ``first_fit_updates``)?"""
        t = self.training
        if self.sync <= 0 or t is None or t["first"] is None:
            return False
        if time.monotonic() - t["received"] > 5.0:
            return False  # the trainer is gone: do not wait for it
        owed = t["head_start"] + self.sync * (t["transitions"] - int(t["first"])) / self.fleet_size
        return t["updates"] < owed

    # ------------------------------------------------------------------ loop
    def on_tick(self) -> None:
        now = time.monotonic()
        if self._last_tick is not None:
            self._tick_times.append(now - self._last_tick)
        self._last_tick = now
        if self.estop:
            self.mode = "estop"
            self._publish_safe()
            return
        if now < self._settled_at:
            self._publish_safe()
            return
        if self._waiting_for_training():
            self.mode = "sync"
            self.diag.count("sync_waits")
            self.state_time = now  # a deliberate pause, not a lost state stream
            return
        if now - self.state_time > self.watchdog_periods * self.period:
            self.mode = "watchdog"
            self.diag.count("watchdog")
            text = (f"no fresh state for {now - self.state_time:.2f} s on "
                    f"{self.p.state_topic}: safe action")
            self.diag.condition("watchdog", ERROR, text)
            self.diag.warn("watchdog", text)
            if self.lockstep_kick and self.state_seq == 0 and self.safe_action() is None:
                self._publish(self.zero, ECHO_KICK)  # start a lockstep simulation's exchange
            else:
                self._publish_safe()
            return
        self.diag.condition("watchdog", OK)
        if self.violations:
            self.mode = "envelope"
            self._publish_safe()
            return
        if self.trigger == "timer":
            self._act()

    def _act(self) -> None:
        if self.estop or self.values is None or self.acted_seq == self.state_seq:
            return
        if time.monotonic() < self._settled_at:
            self.acted_seq = self.state_seq
            self._publish_safe()
            return
        if self._waiting_for_training():
            return
        if self.violations:
            self.acted_seq = self.state_seq
            self.mode = "envelope"
            self._publish_safe()
            return
        t0 = time.perf_counter()
        try:
            state = self.p.layout.assemble({**self.input.joints_at(), **self.values,
                                            **self.input.target_at()})
        except BadMessage as exc:
            self.diag.drop(exc.reason, str(exc))
            return
        self.acted_seq = self.state_seq
        answered = self._state_at
        if self.policy is None:
            self.mode = "explore"
            action = self.exploration(state)
        else:
            self.mode = "policy"
            try:
                action = np.asarray(self.policy(state), dtype=np.float64).reshape(-1)
            except Exception as exc:  # a policy must never take the loop down
                self.diag.drop("policy_error", f"policy raised {type(exc).__name__}: {exc}")
                self._publish_safe()
                return
            if self.policy_noise > 0 and action.shape == self.low.shape:
                action = action + self.policy_noise * (self.high - self.low) / 2 * \
                    self.rng.standard_normal(action.shape)
        if action.shape != self.low.shape or not np.all(np.isfinite(action)):
            self.diag.drop("nan_action", f"non-finite or mis-shaped action {action}: safe "
                           f"action")
            self._publish_safe()
            return
        self._hold = None  # acting normally again: a later fallback holds where it begins
        self._publish(np.clip(action, self.low, self.high), ECHO_ANSWER, answered)
        self._compute.append(time.perf_counter() - t0)

    def safe_action(self) -> np.ndarray | None:
        """The command of the fallbacks: zero (effort, velocity), or, for position, the
        position of each commanded joint measured when the fallback began (None before any
        was measured)."""
        if self.interface != "position":
            return self.zero
        if self._hold is None and self.measured is not None:
            # Latched, not re-read every tick: an arm that sags under gravity while held
            # would otherwise be commanded lower and lower.
            self._hold = np.clip(self.measured, self.low, self.high)
        return self._hold

    def _publish_safe(self) -> None:
        action = self.safe_action()
        if action is not None:  # position control with no measurement yet: send nothing
            self._publish(action, ECHO_SAFE)

    def _publish(self, action: np.ndarray, kind: int,
                 answered: tuple[int, int] = NO_STATE) -> None:
        if self.pub is None or self.timer is None:
            return  # not active: a lifecycle publisher would drop it anyway
        sent = time.time_ns()
        self.pub.publish(self.p.codec.to_msg(action, sent))
        self._echo_seq += 1  # after the command: the echo never delays it
        self._echo.data = [self._echo_seq, answered[0], answered[1], sent, kind]
        self.echo_pub.publish(self._echo)
        self.diag.count("commands")
        self._loop_stats()

    def _loop_stats(self) -> None:
        n = self.diag.get("commands")
        if len(self._tick_times) >= 10 and n % 20 == 0:
            ticks = np.asarray(self._tick_times)
            jitter = np.abs(ticks - self.period) * 1e3
            self.diag.set("period_ms_mean", float(ticks.mean() * 1e3))
            self.diag.set("jitter_ms_p50", float(np.percentile(jitter, 50)))
            self.diag.set("jitter_ms_p99", float(np.percentile(jitter, 99)))
        if self._compute and n % 20 == 0:
            c = np.asarray(self._compute) * 1e3
            self.diag.set("compute_ms_p50", float(np.percentile(c, 50)))
            self.diag.set("compute_ms_p99", float(np.percentile(c, 99)))
            self.diag.set("compute_ms_max", float(c.max()))
        self.diag.set("mode", self.mode)


def _source_ns(info) -> int:
    """The publisher's stamp of a message (rclpy's MessageInfo), 0 where absent."""
    try:
        return int(info["source_timestamp"])
    except (TypeError, KeyError, ValueError):
        return 0


def main(args=None) -> int:
    return run(Controller, args, events=True)


if __name__ == "__main__":
    raise SystemExit(main())
