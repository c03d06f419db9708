"""recorder: pairs each command with the state before and after it and stores the transition.

The pairing rule is the core's (``data/pairing.py``; docs/ros.md states it), the same code
``sym-mbrl import-bag`` uses. Times: a state's time is its header stamp; a command's time is
its header stamp (TwistStamped) or, for Float64MultiArray (no header), the moment the
controller published it (its DDS source timestamp, in ROS time:
:class:`~sym_mbrl_ros.nodes.topics.CommandInput`). All are the node's ROS time: the system
clock, or ``/clock`` with ``use_sim_time:=true`` (a replayed bag, a bridge stamping simulated
time). ``pairing: next`` for a lockstep simulation, ``hold`` for real time and hardware,
``auto``: next while the bridge's episode events say ``"mode": "lockstep"``, hold otherwise.
Episode events on /sym_mbrl/episode give the boundaries (an episode holds the states stamped
after its ``boundary_ns``).

Without episode events (a robot with no simulator), the recorder starts a new episode every
``episode_steps`` transitions. Rewards and termination come from the task's own functions.
When an episode ends (the next one opens), its return and length go out on
``sym_mbrl/episode_return`` (Float64MultiArray labelled ``episode,return,steps``; episode
counts from 1 in this recorder's life).

Store errors (a locked database, a full disk, any sqlite3 error) never stop the recorder:
decided transitions wait in an in-memory backlog (at most ``store_backlog``), written in order
once the store takes them again, retried with a backoff from ``store_retry_s`` doubling up to
``store_retry_max_s``. /diagnostics counts ``store_errors`` and shows ``store_backlog``; a
transition that finds the backlog full is dropped as ``backlog_overflow``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray, String

from ..data.pairing import Decision, Paired, Pairing, StampedState, Unpairable
from ..data.store import TransitionStore
from .common import (
    EPISODE_RETURN_TOPIC,
    EPISODE_TOPIC,
    QOS_EVENTS,
    QOS_RECORD,
    Diagnostics,
    declare,
    labelled_array,
    run,
)
from .params import TaskParams
from .topics import BadMessage, CommandInput, StateInput


@dataclass
class _Op:
    """One write the store has not taken yet: open an episode, or append a transition."""

    episode: int  # the recorder's key of the episode (mapped to the store's id once written)
    stamp: float
    source: str = ""  # episodes only
    row: tuple | None = None  # transitions: (state, action, next_state, reward, terminated,
    #                           next_stamp)


class Recorder(Node):
    """Turns the state and command streams into stored transitions."""

    def __init__(self, **kwargs):
        super().__init__("recorder", **kwargs)
        self.p = TaskParams.declare(self)
        task = self.p.task
        store_name = declare(self, "store", "transitions.sqlite",
                             "transition store file, relative to run_dir")
        pairing = declare(self, "pairing", "auto",
                          "next: after = first state after the command (lockstep sim); "
                          "hold: after = last state before the next command (real time); "
                          "auto: next while the sim bridge announces lockstep, else hold")
        tol = declare(self, "period_tolerance", 0.25,
                      "hold pairing: allowed |after-before-dt| as a fraction of dt")
        max_age = declare(self, "max_state_age_s", 0.5,
                          "hold pairing: a command's before-state may be at most this old")
        stamp_age = declare(self, "max_stamp_age_s", 2.0,
                            "drop states whose stamp is further than this from now (stale)")
        self.episode_steps = declare(self, "episode_steps", 0,
                                     "without episode events: transitions per episode "
                                     "(0: the task's episode length)") or task.max_episode_steps
        self.backlog_max = declare(self, "store_backlog", 50000,
                                   "transitions kept in memory while the store refuses writes")
        self.retry_min = declare(self, "store_retry_s", 0.05,
                                 "first wait before retrying a failed store write (s)")
        self.retry_max = declare(self, "store_retry_max_s", 2.0,
                                 "longest wait between retries; the wait doubles up to this (s)")
        busy = declare(self, "store_busy_timeout_s", 0.05,
                       "how long one write waits for a lock held by another connection (s)")
        if pairing not in ("next", "hold", "auto"):
            raise SystemExit(f"recorder: pairing must be next, hold or auto, not {pairing!r}")
        self.auto_pairing = pairing == "auto"
        self.pairing = Pairing("hold" if self.auto_pairing else pairing, task.dt,
                               tolerance=tol, max_state_age_s=max_age,
                               assemble=self._assemble)
        try:
            # in a fleet the robot is the last part of the namespace (/fleet/robot2: robot2)
            robot = self.get_namespace().rstrip("/").rpartition("/")[2]
            self.store = TransitionStore(self.p.run_dir / store_name, task.state_names,
                                         task.action_names, dt=task.dt, task=task.name,
                                         robot=robot)
            self.store.set_busy_timeout(busy)
            stored = self.store.episodes()
        except sqlite3.Error as exc:
            raise SystemExit(f"recorder: cannot open the transition store "
                             f"{self.p.run_dir / store_name} ({exc}); check the path and that "
                             f"no other recorder writes to it") from None
        self.diag = Diagnostics(self)
        # The recorder is the store's only writer: what it stored is known from here on.
        self._episode_ids: dict[int, int] = {}  # episode key -> the store's episode id
        self._stored: list[tuple[float, int]] = []  # (started s, episode key), oldest first
        self._next_key = 0
        for e in stored:
            self._stored.append((e.started, self._key(e.id)))
        self.episodes: list[tuple[int, int]] = []  # (boundary stamp ns, episode key)
        self._auto_episode: int | None = None
        self._auto_steps = 0
        self._backlog: deque[_Op] = deque()
        self._backlog_rows = 0
        self._retry_at = 0.0
        self._retry_wait = self.retry_min
        self._failing_since: float | None = None
        self.written = 0
        self._rate_t, self._rate_n = time.monotonic(), 0

        self.return_pub = self.create_publisher(Float64MultiArray, EPISODE_RETURN_TOPIC,
                                                QOS_EVENTS)
        self._episode_sums: dict[int, list[float]] = {}  # episode key -> [steps, return]
        self._episode_count = 0
        self._returned = 0  # the newest episode key reported
        # created first: when an event and a state are ready together, the event goes first
        self.create_subscription(String, EPISODE_TOPIC, self.on_episode, QOS_EVENTS)
        self.input = StateInput(self, self.p, self.diag, self.on_state, stamp_age, QOS_RECORD)
        self.command_input = CommandInput(self, self.p, self.diag, self.on_command, QOS_RECORD)
        self.create_timer(0.5, self.on_timer)
        self.create_timer(min(0.05, self.retry_min), self._flush_if_due)
        self.get_logger().info(
            f"recording {task.name} ({pairing} pairing) into {self.store.path} "
            f"({self.store.count()} transitions already there)")

    # ------------------------------------------------------------------ inputs
    def on_state(self, ns: int, values: dict[str, float]) -> None:
        self._take(self.pairing.add_state(ns, values))

    def on_episode(self, msg: String) -> None:
        try:
            event = json.loads(msg.data)
            boundary = int(event["boundary_ns"])
        except (ValueError, KeyError, TypeError) as exc:
            self.diag.drop("bad_episode", f"episode event {msg.data[:80]!r}: {exc}")
            return
        if self.auto_pairing:
            self.pairing.mode = "next" if event.get("mode") == "lockstep" else "hold"
        if self.episodes and boundary <= self.episodes[-1][0]:
            return  # a repeat (transient-local history)
        same = [key for started, key in self._stored if abs(started - boundary * 1e-9) < 1e-6]
        if same:
            ep = same[0]  # a restarted recorder hears the events it has stored already
        elif self._stored and self._stored[-1][0] > boundary * 1e-9:
            return  # history from before this store's newest episode
        else:
            ep = self._new_episode(boundary * 1e-9, "sim")
        self.episodes = self.episodes[-20:] + [(boundary, ep)]
        self.pairing.add_boundary(boundary)
        self._auto_episode = None
        self.diag.count("episodes")

    def on_command(self, ns: int, action: np.ndarray) -> None:
        task = self.p.task
        action = np.clip(action, task.action_low, task.action_high)
        self.diag.count("commands")
        self._take(self.pairing.add_command(ns, action))

    # ------------------------------------------------------------------ pairing
    def _assemble(self, before: StampedState, after: StampedState):
        """The two state vectors of a pair: message fields, joints and target of that time."""
        target = self.input.target_at(before.ns)
        try:
            s = self.p.layout.assemble({**self.input.joints_at(before.ns), **before.payload,
                                        **target})
            s2 = self.p.layout.assemble({**self.input.joints_at(after.ns), **after.payload,
                                         **target})
        except BadMessage as exc:
            raise Unpairable(exc.reason, str(exc)) from None
        return s, s2

    def _take(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if isinstance(d, Paired):
                self._write(d)
            elif d.skipped:
                self.diag.count(f"skipped/{d.reason}")
            else:
                self.diag.drop(d.reason, d.text)

    def _key(self, store_id: int | None = None) -> int:
        self._next_key += 1
        if store_id is not None:
            self._episode_ids[self._next_key] = store_id
        return self._next_key

    def _new_episode(self, stamp: float, source: str) -> int:
        key = self._key()
        self._stored.append((stamp, key))
        self._backlog.append(_Op(key, stamp, source=source))
        self._flush()
        return key

    def _episode_of(self, ns: int) -> int:
        ep = None
        for boundary, key in self.episodes:
            if boundary < ns:
                ep = key
        if ep is not None:
            return ep
        if self._auto_episode is None or self._auto_steps >= self.episode_steps:
            self._auto_episode = self._new_episode(ns * 1e-9, "recorder")
            self._auto_steps = 0
        self._auto_steps += 1
        return self._auto_episode

    def _write(self, t: Paired) -> None:
        task = self.p.task
        x, u, y = t.state[None], t.action[None], t.next_state[None]
        reward = float(np.asarray(task.reward(x, u, y)).reshape(-1)[0])
        terminated = bool(np.asarray(task.terminated(x, u, y)).reshape(-1)[0])
        if self._backlog_rows >= self.backlog_max:
            self.diag.drop("backlog_overflow", f"the store has refused writes for "
                           f"{time.monotonic() - (self._failing_since or 0):.1f} s and "
                           f"{self._backlog_rows} transitions wait in memory (store_backlog)")
            return
        episode = self._episode_of(t.before_ns)
        self._publish_returns(before=episode)
        if episode > self._returned:  # (a straggler of an episode already reported: skipped)
            sums = self._episode_sums.setdefault(episode, [0, 0.0])
            sums[0] += 1
            sums[1] += reward
        self._backlog.append(_Op(episode, t.stamp_ns * 1e-9,
                                 row=(t.state, t.action, t.next_state, reward, terminated,
                                      t.after_ns * 1e-9)))
        self._backlog_rows += 1
        self._flush()

    def _publish_returns(self, before: int) -> None:
        """Report the episodes older than episode ``before``, which has its first transition
        now (so theirs are all in): their returns and lengths, for plots."""
        for key in sorted(k for k in self._episode_sums if k < before):
            steps, total = self._episode_sums.pop(key)
            self._episode_count += 1
            self._returned = max(self._returned, key)
            self.return_pub.publish(labelled_array(
                {"episode": self._episode_count, "return": total, "steps": steps}))
            self.diag.set("last_return", float(total))

    # ------------------------------------------------------------------ the store
    def _flush_if_due(self) -> None:
        if self._backlog:
            self._flush()

    def _flush(self, force: bool = False) -> None:
        """Write the backlog in order; on a store error keep the rest and retry later."""
        now = time.monotonic()
        if not force and now < self._retry_at:
            return
        written = 0
        while self._backlog:
            op = self._backlog[0]
            try:
                if op.row is None:
                    self._episode_ids[op.episode] = self.store.start_episode(
                        stamp=op.stamp, source=op.source)
                else:
                    s, a, s2, reward, terminated, next_stamp = op.row
                    self.store.append(s, a, s2, episode=self._episode_ids[op.episode],
                                      reward=reward, terminated=terminated, stamp=op.stamp,
                                      next_stamp=next_stamp)
            except (sqlite3.Error, OSError) as exc:
                self._failed(now, exc)
                return
            self._backlog.popleft()
            if op.row is not None:
                self._backlog_rows -= 1
                written += 1
        self.written += written
        if written:
            self.diag.count("transitions", written)
        if self._failing_since is not None:
            self.get_logger().info(
                f"the store takes writes again after {now - self._failing_since:.1f} s; "
                f"wrote the {written} transitions that waited")
            self._failing_since = None
        self._retry_wait, self._retry_at = self.retry_min, 0.0
        self.diag.set("store_backlog", 0)

    def _failed(self, now: float, exc: Exception) -> None:
        if self._failing_since is None:
            self._failing_since = now
        self.diag.count("store_errors")
        self.diag.set("store_backlog", self._backlog_rows)
        self.diag.set("store_last_error", str(exc)[:200])
        self.diag.warn("store_error", f"store write failed ({exc}); {self._backlog_rows} "
                       f"transitions wait in memory, retrying in {self._retry_wait:.2f} s")
        self._retry_at = now + self._retry_wait
        self._retry_wait = min(2 * self._retry_wait, self.retry_max)

    # ------------------------------------------------------------------ housekeeping
    def on_timer(self) -> None:
        # a command whose window never completed (the state stream stopped) is lost
        now = time.monotonic()
        self._take(self.pairing.expire(now))
        self.pairing.prune()
        dt = now - self._rate_t
        if dt >= 2.0:
            self.diag.set("transitions_per_s", (self.written - self._rate_n) / dt)
            self._rate_t, self._rate_n = now, self.written
        try:
            self.diag.set("stored", self.store.count())
        except sqlite3.Error:
            pass  # counted when a write fails; a count can wait for the next tick

    def close(self) -> None:
        if self._backlog:
            self._flush(force=True)
        if self._backlog_rows:
            self.get_logger().error(f"closing with {self._backlog_rows} transitions the store "
                                    f"would not take; they are lost")
        self.store.close()


def main(args=None) -> int:
    return run(Recorder, args)


if __name__ == "__main__":
    raise SystemExit(main())
