"""recorder: pairs each command with the state before and after it and stores the transition.

Times: a state's time is its header stamp; a command's time is its header stamp
(TwistStamped) or, for Float64MultiArray (no header), the moment the controller published it
(its DDS source timestamp, in ROS time: :class:`~sym_mbrl_ros.nodes.topics.CommandInput`).
All are the node's ROS time: the system clock, or ``/clock`` with ``use_sim_time:=true`` (a
replayed bag, a bridge stamping simulated time). The rule never depends on the order in which
the recorder happens to process messages of different topics.

For a command at time t:
* ``before`` = the newest state stamped at or before t (in real time, not older than
  ``max_state_age_s``; a lockstep world waits for its command, so there any age is fine).
* ``pairing: next`` (lockstep simulation; ``auto`` picks it when the bridge's episode events
  say ``"mode": "lockstep"``, and ``hold`` otherwise): ``after`` = the first state stamped
  after t, the state the simulator published in response. A second command for the same
  ``before`` is ambiguous and dropped (``superseded``); the bridge skips it too.
* ``pairing: hold`` (real time, real hardware): the command is in force until the next
  command t' (or t + (1 + tol)·dt if none comes). ``after`` = the newest state stamped at or
  before that end of hold. The transition is kept only if it spans one control period:
  |after − before − dt| ≤ tol·dt. Otherwise (a missed tick, a doubled command, a gap in the
  state stream) it is dropped as ``bad_period``; no guess is stored.
* A transition is decided once a state stamped after the end of its window has arrived, so
  every state that could belong to it has been received. Its ``before`` and ``after`` must lie
  in the same episode (events on /sym_mbrl/episode give the boundaries: an episode holds
  the states stamped after its ``boundary_ns``).

Without episode events (a robot with no simulator), the recorder starts a new episode every
``episode_steps`` transitions. Rewards and termination come from the task's own functions.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from rclpy.node import Node
from std_msgs.msg import String

from ..data.store import TransitionStore
from .common import (
    EPISODE_TOPIC,
    QOS_EVENTS,
    QOS_RECORD,
    Diagnostics,
    declare,
    run,
)
from .params import TaskParams
from .topics import BadMessage, CommandInput, StateInput


@dataclass
class _State:
    ns: int
    values: dict[str, float]
    used: bool = False


@dataclass
class _Command:
    ns: int
    action: np.ndarray
    received: float = field(default_factory=time.monotonic)


class Recorder(Node):
    """Turns the state and command streams into stored transitions."""

    def __init__(self, **kwargs):
        super().__init__("recorder", **kwargs)
        self.p = TaskParams.declare(self)
        task = self.p.task
        store_name = declare(self, "store", "transitions.sqlite",
                             "transition store file, relative to run_dir")
        self.pairing = declare(self, "pairing", "auto",
                               "next: after = first state after the command (lockstep sim); "
                               "hold: after = last state before the next command (real time); "
                               "auto: next while the sim bridge announces lockstep, else hold")
        self.tol = declare(self, "period_tolerance", 0.25,
                           "hold pairing: allowed |after-before-dt| as a fraction of dt")
        self.max_state_age = int(1e9 * declare(
            self, "max_state_age_s", 0.5,
            "hold pairing: a command's before-state may be at most this old"))
        stamp_age = declare(self, "max_stamp_age_s", 2.0,
                            "drop states whose stamp is further than this from now (stale)")
        self.episode_steps = declare(self, "episode_steps", 0,
                                     "without episode events: transitions per episode "
                                     "(0: the task's episode length)") or task.max_episode_steps
        if self.pairing not in ("next", "hold", "auto"):
            raise SystemExit(f"recorder: pairing must be next, hold or auto, not "
                             f"{self.pairing!r}")
        self.auto_pairing = self.pairing == "auto"
        if self.auto_pairing:
            self.pairing = "hold"
        self.dt_ns = int(round(task.dt * 1e9))
        self.store = TransitionStore(self.p.run_dir / store_name, task.state_names,
                                     task.action_names, dt=task.dt, task=task.name)
        self.diag = Diagnostics(self)
        self.states: deque[_State] = deque(maxlen=2000)
        self.commands: deque[_Command] = deque(maxlen=100)
        self.episodes: list[tuple[int, int]] = []  # (boundary stamp ns, store episode id)
        self._auto_episode: int | None = None
        self._auto_steps = 0
        self.written = 0
        self._rate_t, self._rate_n = time.monotonic(), 0

        # created first: when an event and a state are ready together, the event goes first
        self.create_subscription(String, EPISODE_TOPIC, self.on_episode, QOS_EVENTS)
        self.input = StateInput(self, self.p, self.diag, self.on_state, stamp_age, QOS_RECORD)
        self.command_input = CommandInput(self, self.p, self.diag, self.on_command, QOS_RECORD)
        self.create_timer(0.5, self.on_timer)
        self.get_logger().info(
            f"recording {task.name} ({'auto' if self.auto_pairing else self.pairing} pairing) "
            f"into {self.store.path} "
            f"({self.store.count()} transitions already there)")

    # ------------------------------------------------------------------ inputs
    def on_state(self, ns: int, values: dict[str, float]) -> None:
        self.states.append(_State(ns, values))
        self._decide()

    def on_episode(self, msg: String) -> None:
        try:
            event = json.loads(msg.data)
            boundary = int(event["boundary_ns"])
        except (ValueError, KeyError, TypeError) as exc:
            self.diag.drop("bad_episode", f"episode event {msg.data[:80]!r}: {exc}")
            return
        if self.auto_pairing:
            self.pairing = "next" if event.get("mode") == "lockstep" else "hold"
        if self.episodes and boundary <= self.episodes[-1][0]:
            return  # a repeat (transient-local history)
        stored = self.store.episodes()
        same = [e.id for e in stored if abs(e.started - boundary * 1e-9) < 1e-6]
        if same:
            ep = same[0]  # a restarted recorder hears the events it has stored already
        elif stored and stored[-1].started > boundary * 1e-9:
            return  # history from before this store's newest episode
        else:
            ep = self.store.start_episode(stamp=boundary * 1e-9, source="sim")
        self.episodes = self.episodes[-20:] + [(boundary, ep)]
        self._auto_episode = None
        self.diag.count("episodes")

    def on_command(self, ns: int, action: np.ndarray) -> None:
        task = self.p.task
        action = np.clip(action, task.action_low, task.action_high)
        self.diag.count("commands")
        self.commands.append(_Command(ns, action))
        self._decide()

    # ------------------------------------------------------------------ pairing
    def _decide(self) -> None:
        """Decide every pending command whose window is complete, oldest first."""
        while self.commands and self.states:
            cmd = self.commands[0]
            if self.pairing == "next":
                end = cmd.ns
            else:
                nxt = self.commands[1].ns if len(self.commands) > 1 else None
                end = min(nxt, cmd.ns + int(self.dt_ns * (1 + self.tol))) if nxt else (
                    cmd.ns + int(self.dt_ns * (1 + self.tol)))
            if self.states[-1].ns <= end:
                return  # a state of this window may still be on its way
            self.commands.popleft()
            self._pair(cmd, end)

    def _pair(self, cmd: _Command, end: int) -> None:
        before = after = None
        later = None  # the state right after the newest one checked (walking back in time)
        for st in reversed(self.states):  # stamps increase; the window is at the end
            if after is None and self.pairing == "hold" and st.ns <= end:
                after = st
            if st.ns <= cmd.ns:
                before = st
                if self.pairing == "next":
                    after = later
                break
            later = st
        if before is None:
            self.diag.drop("no_state_before", "command with no state before it")
            return
        # (a lockstep world waits for its command, so there a state of any age is fine)
        if self.pairing == "hold" and cmd.ns - before.ns > self.max_state_age:
            self.diag.drop("no_state_before", "command with no recent state before it")
            return
        if after is None or after.ns <= before.ns:
            self.diag.drop("no_state_after", "command with no state after it")
            return
        if self.pairing == "next" and before.used:
            self.diag.drop("superseded", "two commands for one state (lockstep pairing)")
            return
        span = after.ns - before.ns
        if self.pairing == "hold" and abs(span - self.dt_ns) > self.tol * self.dt_ns:
            self.diag.drop("bad_period", f"transition spans {span * 1e-6:.1f} "
                           f"ms, not one control period ({self.dt_ns * 1e-6:.1f} ms)")
            return
        if any(before.ns <= boundary < after.ns for boundary, _ in self.episodes):
            self.diag.count("skipped/episode_boundary")
            return
        target = self.input.target_at(before.ns)
        try:
            s = self.p.layout.assemble({**self.input.joints_at(before.ns), **before.values,
                                        **target})
            s2 = self.p.layout.assemble({**self.input.joints_at(after.ns), **after.values,
                                         **target})
        except BadMessage as exc:
            self.diag.drop(exc.reason, str(exc))
            return
        before.used = True
        self._write(cmd, s, s2, before.ns, after.ns)

    def _episode_of(self, ns: int) -> int:
        ep = None
        for boundary, eid in self.episodes:
            if boundary < ns:
                ep = eid
        if ep is not None:
            return ep
        if self._auto_episode is None or self._auto_steps >= self.episode_steps:
            self._auto_episode = self.store.start_episode(stamp=ns * 1e-9, source="recorder")
            self._auto_steps = 0
        self._auto_steps += 1
        return self._auto_episode

    def _write(self, cmd: _Command, s: np.ndarray, s2: np.ndarray, b_ns: int, a_ns: int) -> None:
        task = self.p.task
        x, u, y = s[None], cmd.action[None], s2[None]
        reward = float(np.asarray(task.reward(x, u, y)).reshape(-1)[0])
        terminated = bool(np.asarray(task.terminated(x, u, y)).reshape(-1)[0])
        self.store.append(s, cmd.action, s2, episode=self._episode_of(b_ns), reward=reward,
                          terminated=terminated, stamp=cmd.ns * 1e-9, next_stamp=a_ns * 1e-9)
        self.written += 1
        self.diag.count("transitions")

    # ------------------------------------------------------------------ housekeeping
    def on_timer(self) -> None:
        # a command whose window never completed (the state stream stopped) is lost
        now = time.monotonic()
        while self.commands and now - self.commands[0].received > 2.0:
            self.commands.popleft()
            self.diag.drop("unpaired", "command with no later state (state stream stopped?)")
        if self.states and self.commands:
            oldest = self.commands[0].ns - self.max_state_age
            while len(self.states) > 2 and self.states[1].ns < oldest:
                self.states.popleft()
        dt = now - self._rate_t
        if dt >= 2.0:
            self.diag.set("transitions_per_s", (self.written - self._rate_n) / dt)
            self._rate_t, self._rate_n = now, self.written
        self.diag.set("stored", self.store.count())

    def close(self) -> None:
        self.store.close()


def main(args=None) -> int:
    return run(Recorder, args)


if __name__ == "__main__":
    raise SystemExit(main())
