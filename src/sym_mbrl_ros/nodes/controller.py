"""controller: a lifecycle node that turns the newest state into a clipped command.

Lifecycle: *configure* creates the (lifecycle) command publisher and the subscriptions,
*activate* starts the fixed-rate loop, *deactivate* sends one zero command and stops it,
*cleanup* releases everything. ``autostart: true`` configures and activates at start-up (what
``sym-mbrl up`` and the launch files use); otherwise drive it with the standard lifecycle
services (``ros2 lifecycle set /controller activate``).

Acting: until a policy message arrives the controller explores (``exploration``); then it
uses the newest valid policy (a malformed one is dropped and the previous one kept, so a
dead learner or trainer leaves the robot on its last policy). With ``planner`` set (the
sym-mpc hook) it plans with the newest world model instead.

Loop: a wall-clock timer at the control period (``rate_hz``, default 1/dt). With
``trigger: timer`` each tick acts on the newest state if it has not acted on it yet; with
``trigger: state`` it acts as soon as a new state arrives (lowest latency) and the timer only
keeps watch. Safety, in order: e-stop (``/sym_mbrl/estop`` Bool true → zero commands until
false), watchdog (no fresh state for ``watchdog_periods`` periods → zero command + warning),
NaN guard (a non-finite action → zero command), and clipping to the task's limits.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque

import numpy as np
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from std_msgs.msg import Bool, String

from .common import (
    ESTOP_TOPIC,
    MODEL_TOPIC,
    POLICY_TOPIC,
    QOS_LATCHED,
    QOS_NEWEST,
    QOS_STREAM,
    TRAINING_TOPIC,
    Diagnostics,
    declare,
    run,
)
from .params import TaskParams
from .policies import Exploration, PolicyError, load_planner, load_policy
from .topics import BadMessage, StateInput


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
                                        "zero command after this many periods without a fresh "
                                        "state")
        self.exploration = Exploration(
            task,
            declare(self, "exploration", "uniform",
                    "actions before a policy exists: uniform, gaussian or zero"),
            declare(self, "exploration_hold_steps", 1,
                    "repeat each exploratory action this many ticks"),
            declare(self, "exploration_scale", 0.5,
                    "gaussian exploration: std as a fraction of the half-range"),
            declare(self, "seed", 0, "seed of the exploration noise"))
        self.policy_noise = declare(self, "policy_noise", 0.0,
                                    "gaussian noise added to policy actions, as a fraction of "
                                    "the half-range (exploration while learning)")
        self.planner_spec = declare(self, "planner", "",
                                    "MPC planner as module:factory, e.g. "
                                    "sym_mbrl_ros.agents.mpc:make_planner (the sym-mpc hook); "
                                    "empty: use the published policy")
        planner_options = declare(self, "planner_options", "{}",
                                  "JSON object of keyword arguments for the planner factory")
        try:
            self.planner_options = json.loads(planner_options)
            if not isinstance(self.planner_options, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise SystemExit(f"controller: planner_options must be a JSON object ({exc})") from None
        self.sync = declare(self, "sync_updates_per_step", 0.0,
                            "simulation only: send nothing (the lockstep world waits) while "
                            "the policy trainer has done fewer SAC updates than this per real "
                            "step since its first model; 0 never waits. Never on a robot.")
        self.stamp_age = declare(self, "max_stamp_age_s", 2.0,
                                 "drop states whose stamp is further than this from now")
        autostart = declare(self, "autostart", True, "configure and activate at start-up")
        if self.trigger not in ("timer", "state"):
            raise SystemExit(f"controller: trigger must be timer or state, not {self.trigger!r}")
        self.rng = np.random.default_rng(self.exploration.rng.integers(1 << 31))
        self.low, self.high = task.action_low.astype(float), task.action_high.astype(float)
        self.zero = np.clip(np.zeros(task.action_dim), self.low, self.high)
        self._loading = threading.Lock()
        self._requests = self._installed = 0
        self._reset_runtime()
        if autostart:
            self.trigger_configure()
            self.trigger_activate()

    def _reset_runtime(self) -> None:
        self.policy = None
        self.policy_version = None
        self.training: dict | None = None
        self.estop = False
        self.values: dict[str, float] | None = None
        self.state_seq = 0
        self.acted_seq = 0
        self.state_time = -1e9
        self.mode = "idle"
        self.pub = self.timer = self.diag = None
        self._subs: list = []
        self._tick_times: deque[float] = deque(maxlen=500)
        self._compute: deque[float] = deque(maxlen=500)
        self._last_tick = None

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.pub = self.create_lifecycle_publisher(self.p.codec.msg_type, self.p.command_topic,
                                                   QOS_STREAM)
        self.diag = Diagnostics(self)
        self.input = StateInput(self, self.p, self.diag, self.on_state, self.stamp_age,
                                QOS_NEWEST)
        subs = self.input.subscriptions + [
            self.create_subscription(Bool, ESTOP_TOPIC, self.on_estop, QOS_LATCHED),
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
            f"configured: {self.p.task.name}, commands on {self.p.command_topic} every "
            f"{self.period * 1e3:.1f} ms ({self.trigger}-triggered)")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.timer = self.create_timer(self.period, self.on_tick)
        self.state_time = time.monotonic()  # the watchdog counts from activation
        self.mode = "explore" if self.policy is None else "policy"
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._publish(self.zero)  # leave the robot with a zero command, not the last one
        self._stop_timer()
        self.mode = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.timer is not None:
            self._publish(self.zero)
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """On process exit: a zero command if the loop was running."""
        if self.timer is not None:
            self._publish(self.zero)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.destroy_timer(self.timer)
            self.timer = None

    def _teardown(self) -> None:
        self._stop_timer()
        for s in self._subs:
            self.destroy_subscription(s)
        if self.pub is not None:
            self.destroy_lifecycle_publisher(self.pub)
        if self.diag is not None:
            self.diag.close()
        policy = self.policy
        self._reset_runtime()
        self.policy = policy  # a learned policy survives cleanup; data does not

    # ------------------------------------------------------------------ inputs
    def on_state(self, ns: int, values: dict[str, float]) -> None:
        self.values = values
        self.state_seq += 1
        self.state_time = time.monotonic()
        if self.trigger == "state" and self.timer is not None:
            self._act()

    def on_estop(self, msg: Bool) -> None:
        if bool(msg.data) != self.estop:
            self.estop = bool(msg.data)
            # (one call site per severity: rclpy refuses to change it between calls)
            if self.estop:
                self.get_logger().warning("EMERGENCY STOP engaged: zero commands")
            else:
                self.get_logger().info("e-stop released")

    def on_policy(self, msg: String) -> None:
        self._load_beside_loop(self._policy_from, msg.data)

    def on_model(self, msg: String) -> None:
        self._load_beside_loop(self._planner_from, msg.data)

    def _load_beside_loop(self, build, text: str) -> None:
        """Loading (file read, hash, weights, planner set-up) runs in a thread beside the
        loop; the newest message wins and the swap is one assignment."""
        self._requests += 1
        threading.Thread(target=build, args=(text, self._requests), daemon=True).start()

    def _install(self, seq: int, policy) -> bool:
        with self._loading:
            if seq <= self._installed:
                return False  # a newer message was installed meanwhile
            self._installed, self.policy = seq, policy
            return True

    def _policy_from(self, text: str, seq: int) -> None:
        try:
            policy, info = load_policy(text, self.p.task)
        except PolicyError as exc:
            self.diag.drop("bad_policy", f"policy message: {exc}")
            return
        if self.planner_spec or not self._install(seq, policy):
            return  # with a planner, the planner is in charge
        self.policy_version = info.get("version")
        self.diag.count("policies")
        self.diag.set("policy_version", str(self.policy_version))
        self.get_logger().info(f"using policy {info['kind']} v{self.policy_version}")

    def _planner_from(self, text: str, seq: int) -> None:
        try:
            planner = load_planner(self.planner_spec, self.p.task, text, self.planner_options)
        except PolicyError as exc:
            self.diag.drop("bad_model", f"model message: {exc}")
            return
        except Exception as exc:  # the factory (set-up, warm-up plan) failed: keep the old one
            self.diag.drop("bad_model", f"planner set-up failed: {type(exc).__name__}: {exc}")
            return
        if self._install(seq, planner):
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
        owed = t["head_start"] + self.sync * (t["transitions"] - int(t["first"]))
        return t["updates"] < owed

    # ------------------------------------------------------------------ loop
    def on_tick(self) -> None:
        now = time.monotonic()
        if self._last_tick is not None:
            self._tick_times.append(now - self._last_tick)
        self._last_tick = now
        if self.estop:
            self.mode = "estop"
            self._publish(self.zero)
            return
        if self._waiting_for_training():
            self.mode = "sync"
            self.diag.count("sync_waits")
            self.state_time = now  # a deliberate pause, not a lost state stream
            return
        if now - self.state_time > self.watchdog_periods * self.period:
            self.mode = "watchdog"
            self.diag.count("watchdog")
            self.diag.warn("watchdog", f"no fresh state for {now - self.state_time:.2f} s on "
                           f"{self.p.state_topic}: zero command")
            self._publish(self.zero)
            return
        if self.trigger == "timer":
            self._act()

    def _act(self) -> None:
        if self.estop or self.values is None or self.acted_seq == self.state_seq:
            return
        if self._waiting_for_training():
            return
        t0 = time.perf_counter()
        try:
            state = self.p.layout.assemble({**self.input.joints_at(), **self.values,
                                            **self.input.target_at()})
        except BadMessage as exc:
            self.diag.drop(exc.reason, str(exc))
            return
        self.acted_seq = self.state_seq
        if self.policy is None:
            self.mode = "explore"
            action = self.exploration(state)
        else:
            self.mode = "policy"
            try:
                action = np.asarray(self.policy(state), dtype=np.float64).reshape(-1)
            except Exception as exc:  # a policy must never take the loop down
                self.diag.drop("policy_error", f"policy raised {type(exc).__name__}: {exc}")
                action = self.zero
            if self.policy_noise > 0 and action.shape == self.low.shape:
                action = action + self.policy_noise * (self.high - self.low) / 2 * \
                    self.rng.standard_normal(action.shape)
        if action.shape != self.low.shape or not np.all(np.isfinite(action)):
            self.diag.drop("nan_action", f"non-finite or mis-shaped action {action}: zero command")
            action = self.zero
        self._publish(np.clip(action, self.low, self.high))
        self._compute.append(time.perf_counter() - t0)

    def _publish(self, action: np.ndarray) -> None:
        if self.pub is None:
            return
        self.pub.publish(self.p.codec.to_msg(action, time.time_ns()))
        self.diag.count("commands")
        self._loop_stats()

    def _loop_stats(self) -> None:
        if len(self._tick_times) >= 10 and self.diag.counts["commands"] % 20 == 0:
            ticks = np.asarray(self._tick_times)
            jitter = np.abs(ticks - self.period) * 1e3
            self.diag.set("period_ms_mean", float(ticks.mean() * 1e3))
            self.diag.set("jitter_ms_p50", float(np.percentile(jitter, 50)))
            self.diag.set("jitter_ms_p99", float(np.percentile(jitter, 99)))
        if self._compute and self.diag.counts["commands"] % 20 == 0:
            c = np.asarray(self._compute) * 1e3
            self.diag.set("compute_ms_p50", float(np.percentile(c, 50)))
            self.diag.set("compute_ms_p99", float(np.percentile(c, 99)))
            self.diag.set("compute_ms_max", float(c.max()))
        self.diag.set("mode", self.mode)


def main(args=None) -> int:
    return run(Controller, args, events=True)


if __name__ == "__main__":
    raise SystemExit(main())
