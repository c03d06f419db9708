"""policy_trainer: continues MBPO on every new world model and publishes the policy.

A worker thread runs the MBPO inner loop without pause, with the task's tuned ``sym-mbpo``
settings (:mod:`sym_mbrl_ros.agents.presets`, changed with ``overrides``): it pulls new
transitions from the store into the real buffer (every ``store_poll_s``), starts
``rollout_batch_size`` model rollouts of ``rollout_horizon`` steps from the newest
``rollout_start_window`` real states, and takes ``updates_per_step`` SAC gradient steps on the
synthetic data (:class:`sym_mbrl_ros.agents.mbpo.MBPO`'s pieces; the task's true reward). A new
``/sym_mbrl/dynamics_model`` message swaps the model in between rounds through
``MBPO.set_model``, the call MBPO's own fits use: rollouts are cut where they leave the range
of the real states pulled so far, widened by ``rollout_state_margin``, exactly as in the
benchmarks. The hand-off is a one-slot mailbox (newest model wins); the installed model and
the reported ``model_version`` change together. SAC keeps learning across swaps.
Every ``publish_every_s`` of training it writes ``<run_dir>/policies/policy_NNNN.pt`` (the
whole agent, so a restart resumes from it; the file is the trainer's own) and publishes the
actor itself, encoded, sized and hashed, on ``sym_mbrl/policy`` (transient-local): the
controller never opens a file of the trainer's. A malformed model message is dropped and counted.

For plots, ``sym_mbrl/progress`` (Float64MultiArray labelled ``updates,updates_per_s,
transitions,model_version,policy_version``; -1: no model yet) goes out with it.

``max_updates_per_transition`` stops training from racing far ahead of the data while the
robot is slow to collect it (0: no limit). Progress (updates, transitions) goes out on
``/sym_mbrl/training`` four times a second; in simulation the controller can wait for it
(``sync_updates_per_step``), so that sample efficiency does not depend on the CPU.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from typing import Any

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray, String

from ..bringup import latest_version
from ..data.store import StoreGroup
from ..errors import UserError
from .common import (
    MODEL_TOPIC,
    POLICY_TOPIC,
    PROGRESS_TOPIC,
    QOS_LATCHED,
    QOS_STREAM,
    TRAINING_TOPIC,
    Diagnostics,
    declare,
    labelled_array,
    run,
)
from .params import TaskParams
from .policies import MAX_MESSAGE_CHARS, PolicyError, model_from_message, weights_message


class PolicyTrainer(Node):
    """Trains SAC inside the learned model; see the module docstring."""

    def __init__(self, **kwargs):
        super().__init__("policy_trainer", **kwargs)
        self.p = TaskParams.declare(self)
        self.publish_every = declare(self, "publish_every_s", 5.0,
                                     "publish the policy after this much training time")
        overrides = declare(self, "overrides", "{}",
                            "JSON object of MBPO settings over the task's tuned preset, with "
                            "dotted keys as in `sym-mbrl train --set` (e.g. "
                            "{\"rollout_horizon\": 5, \"sac.learning_rate\": 0.001})")
        actor = declare(self, "policy", "mlp", "actor architecture: mlp (or espl)")
        self.max_ratio = declare(self, "max_updates_per_transition", 50.0,
                                 "pause training beyond this many updates per stored "
                                 "transition (0: no limit)")
        self.seed = declare(self, "seed", 0, "seed of the agent and the buffers")
        store_name = declare(self, "store", "transitions.sqlite",
                             "transition store file, relative to run_dir")
        stores = declare(self, "stores", ("str", []),
                         "a fleet: every robot's store, relative to run_dir, pooled into one "
                         "real buffer (empty: store)")
        self.store_poll = declare(self, "store_poll_s", 1.0,
                                  "how often new transitions are pulled from the store")
        from ..agents.mbpo import MBPO
        from ..agents.presets import make_config

        try:
            settings = json.loads(overrides)
            if not isinstance(settings, dict):
                raise ValueError("overrides must be a JSON object")
            if actor == "espl":
                from ..agents.espl import register_espl

                register_espl()
            cfg = make_config("sym-mbpo", self.p.task.name, actor, settings)
        except (ValueError, UserError) as exc:
            raise SystemExit(f"policy_trainer: {exc}") from None
        self.mbpo = MBPO(self.p.task, cfg, seed=self.seed)
        # model rollouts stay inside the robot's envelope: a policy cannot learn that a state
        # the controller would stop the robot in (80 rad/s) pays
        self.mbpo.envelope_bounds = self.p.envelope.bounds(self.p.layout.fields)
        self.store_paths = [self.p.run_dir / name for name in (stores or [store_name])]
        self.policy_dir = self.p.run_dir / "policies"
        self.version, last = latest_version(self.policy_dir, "policy_", ".pt")
        self.resumed = False
        if last is not None:
            self._resume(last)
        self.diag = Diagnostics(self)
        self.pub = self.create_publisher(String, POLICY_TOPIC, QOS_LATCHED)
        self.create_subscription(String, MODEL_TOPIC, self.on_model, QOS_LATCHED)
        self.progress_pub = self.create_publisher(String, TRAINING_TOPIC, QOS_LATCHED)
        self.numbers_pub = self.create_publisher(Float64MultiArray, PROGRESS_TOPIC, QOS_STREAM)
        self._rate = (time.monotonic(), 0)  # (when, updates) of the last rate measurement
        self.updates_per_s = 0.0
        # wall-clock: with use_sim_time a lockstep world waits for this progress (sync mode),
        # so a timer on the simulated clock would never fire again
        self.create_timer(0.25, self.on_progress, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.models = LatestModel()
        self._installed = threading.Lock()  # the installed model and model_version, together
        self.model_version = None
        self.first_model_transitions: int | None = None
        self.updates = 0
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._train_loop, daemon=True)
        self._worker.start()

    def _resume(self, path) -> None:
        from ..agents.sac import SAC

        try:
            self.mbpo.agent = SAC.load(path, num_threads=self.mbpo.config.sac.num_threads)
        except UserError as exc:
            self.get_logger().warning(f"not resuming from {path}: {exc}")
            return
        self.resumed = True
        self.get_logger().info(f"resumed the agent from {path.name}")

    def on_model(self, msg: String) -> None:
        try:
            model = model_from_message(msg.data)
        except PolicyError as exc:
            self.diag.drop("bad_model", f"model message: {exc}")
            return
        if model.state_names != self.p.task.state_names:
            self.diag.drop("bad_model", f"model is for states {model.state_names}, not "
                           f"{self.p.task.state_names}")
            return
        if self.models.put(model):
            self.diag.count("superseded_models")  # a newer one came before it was installed
        self.diag.count("models")

    def installed(self) -> tuple[Any, Any]:
        """The installed world model and its version, read together."""
        with self._installed:
            return self.mbpo.model, self.model_version

    def _install(self, model) -> None:
        """Install ``model`` through MBPO's own path (``MBPO.set_model``), with the state
        bounds of the real states pulled so far, the way MBPO's fits install theirs."""
        states = self.mbpo.real_buffer.state_transitions(self.mbpo.config.model_max_samples).states
        with self._installed:
            self.mbpo.set_model(model, states)
            self.model_version = model.provenance.get("version")
        if self.first_model_transitions is None:
            self.first_model_transitions = len(self.mbpo.real_buffer)
        self.diag.set("model_version", str(self.model_version))

    def on_progress(self) -> None:
        """Training progress, for a simulated world that waits for the learner (controller's
        ``sync_updates_per_step``)."""
        _, model_version = self.installed()
        now, updates = time.monotonic(), self.updates
        if now - self._rate[0] >= 1.0:
            self.updates_per_s = (updates - self._rate[1]) / (now - self._rate[0])
            self._rate = (now, updates)
            self.diag.set("updates_per_s", self.updates_per_s)
        self.numbers_pub.publish(labelled_array({
            "updates": updates, "updates_per_s": self.updates_per_s,
            "transitions": len(self.mbpo.real_buffer),
            "model_version": -1 if model_version is None else model_version,
            "policy_version": self.version}))
        self.progress_pub.publish(String(data=json.dumps({
            "updates": self.updates, "transitions": len(self.mbpo.real_buffer),
            "first_model_transitions": self.first_model_transitions,
            "head_start_updates": self._head_start(),
            "model_version": model_version, "policy_version": self.version,
            "stamp": self.get_clock().now().nanoseconds * 1e-9})))

    def _head_start(self) -> int:
        """Updates owed on the first model (MBPO's ``first_fit_updates``): none after a
        resume, and never more than the updates-per-transition cap allows (no deadlock)."""
        if self.resumed or self.first_model_transitions is None:
            return 0
        head = int(self.mbpo.config.first_fit_updates)
        if self.max_ratio > 0:
            head = min(head, int(self.max_ratio * self.first_model_transitions))
        return head

    # ------------------------------------------------------------------ worker
    def _pull(self, store: StoreGroup) -> int:
        batch = store.read_new()
        if len(batch) == 0:
            return 0
        task = self.p.task
        obs = np.asarray(task.observation(batch.states), dtype=np.float64)
        next_obs = np.asarray(task.observation(batch.next_states), dtype=np.float64)
        rewards = np.where(np.isfinite(batch.rewards), batch.rewards, np.asarray(
            task.reward(batch.states, batch.actions, batch.next_states), dtype=np.float64))
        self.mbpo.real_buffer.add_batch(obs, batch.actions, rewards, next_obs,
                                        batch.terminated.astype(np.float64), batch.states,
                                        batch.next_states)
        self.mbpo.num_timesteps = len(self.mbpo.real_buffer)
        return len(batch)

    def _train_loop(self) -> None:
        store = StoreGroup(self.store_paths)
        last_pull = last_publish = 0.0
        trained_s = 0.0
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now - last_pull >= self.store_poll:
                    last_pull = now
                    if store.open():
                        self.diag.count("transitions", self._pull(store))
                n_real = len(self.mbpo.real_buffer)
                model = self.models.take() if n_real else None  # no bounds without data
                if model is not None:
                    self._install(model)
                ratio_ok = self.max_ratio <= 0 or self.updates < self.max_ratio * n_real
                if self.mbpo.model_env is None or n_real == 0 or not ratio_ok:
                    self._stop.wait(0.2)
                    continue
                t0 = time.monotonic()
                self.mbpo.rollout()
                losses = self.mbpo.train_policy()
                self.updates += self.mbpo.config.updates_per_step
                trained_s += time.monotonic() - t0
                if trained_s - last_publish >= self.publish_every:
                    last_publish = trained_s
                    self._publish(losses)
            except Exception as exc:  # keep training through a bad round; count it
                self.diag.count("errors")
                self.get_logger().error(f"training round failed: {exc}\n"
                                        f"{traceback.format_exc(limit=3)}")
                self._stop.wait(1.0)

    def _publish(self, losses) -> None:
        self.version += 1
        self.policy_dir.mkdir(parents=True, exist_ok=True)
        path = self.policy_dir / f"policy_{self.version:04d}.pt"
        tmp = path.with_name(path.name + ".tmp")
        self.mbpo.agent.save(tmp)
        tmp.replace(path)
        info = {"updates": self.updates, "model_version": self.model_version,
                "transitions": len(self.mbpo.real_buffer), "alpha": self.mbpo.agent.alpha}
        if losses is not None:
            info.update(critic_loss=float(losses.critic_loss), actor_loss=float(losses.actor_loss))
        text = weights_message(self.p.task, self.mbpo.agent, self.version,
                               self.mbpo.config.sac.policy, info)
        if len(text) > MAX_MESSAGE_CHARS:
            self.diag.count("policy_too_large")
            self.get_logger().error(f"policy v{self.version} is {len(text)} characters, over "
                                    f"the {MAX_MESSAGE_CHARS} a controller accepts; not "
                                    f"published (use a smaller actor)")
            return
        self.pub.publish(String(data=text))
        self.diag.set("policy_message_bytes", len(text))
        self.diag.count("policies")
        self.diag.set("policy_version", self.version)
        self.diag.set("updates", self.updates)
        self.get_logger().info(
            f"policy v{self.version}: {self.updates} updates, model v{self.model_version}, "
            f"{info['transitions']} real transitions, alpha {info['alpha']:.3f}")

    def close(self) -> None:
        self._stop.set()
        self._worker.join(timeout=5.0)


class LatestModel:
    """A one-slot mailbox between the subscription and the training thread: ``put`` replaces
    what is there (the newest model wins), ``take`` empties it; both under one lock, so a model
    put while another is taken is never lost."""

    def __init__(self):
        self._lock = threading.Lock()
        self._model: Any = None

    def put(self, model: Any) -> bool:
        """Leave ``model`` for the trainer; True if it replaced one not yet taken."""
        with self._lock:
            replaced, self._model = self._model is not None, model
        return replaced

    def take(self) -> Any:
        """The newest model put since the last take, or None."""
        with self._lock:
            model, self._model = self._model, None
        return model


def main(args=None) -> int:
    return run(PolicyTrainer, args)


if __name__ == "__main__":
    raise SystemExit(main())
