"""The pairing rule: a state, the command that answered it and the state after it make a transition.

One implementation, used by the recorder node (live, message by message) and by
``sym-mbrl import-bag`` (a recorded bag, all at once). Plain numpy; docs/ros.md states the rule.

Times are integer nanoseconds. A state's time is its stamp; a command's time is its header stamp
or, for a command without a header, when it was published (live) or recorded (bag). For a
command at time t:

* ``before`` = the newest state stamped at or before t (with ``hold`` pairing, at most
  ``max_state_age_s`` old; a lockstep world waits for its command, so there any age is fine).
* ``next`` pairing (lockstep simulation): ``after`` = the first state stamped after t. A second
  command with the same ``before`` is ambiguous and dropped (``superseded``).
* ``hold`` pairing (real time, hardware): the command is in force until the next command t'
  (or t + (1 + tolerance) dt if none comes); ``after`` = the newest state stamped at or before
  that end of hold. Kept only if |after - before - dt| <= tolerance * dt (else ``bad_period``).
* A command is decided once a state stamped after the end of its window has arrived, so every
  state that could belong to it is in. ``before`` and ``after`` must lie in the same episode:
  an episode boundary b (the new episode holds the states stamped after b) with
  before <= b < after skips the transition (``episode_boundary``).
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODES = ("next", "hold")


class Unpairable(ValueError):
    """Raised by an ``assemble`` function: the pair's state vectors cannot be built."""

    def __init__(self, reason: str, text: str):
        super().__init__(text)
        self.reason = reason


@dataclass
class StampedState:
    """A received state: its stamp and whatever ``assemble`` needs to build the vector."""

    ns: int
    payload: Any
    used: bool = False


@dataclass
class StampedCommand:
    """A received command; ``received`` (monotonic seconds) is for expiring it."""

    ns: int
    action: np.ndarray
    received: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Paired:
    """A kept transition: state, action, next state and the three stamps (ns)."""

    state: np.ndarray
    action: np.ndarray
    next_state: np.ndarray
    stamp_ns: int
    before_ns: int
    after_ns: int


@dataclass(frozen=True)
class Dropped:
    """A command that gave no transition; ``reason`` names its counter.

    ``skipped`` marks the expected case of a transition across an episode boundary, which is
    counted but is not bad input.
    """

    reason: str
    text: str
    skipped: bool = False


Decision = Paired | Dropped
Assemble = Callable[[StampedState, StampedState], "tuple[np.ndarray, np.ndarray]"]


def _payload_arrays(before: StampedState, after: StampedState) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(before.payload, dtype=np.float64),
            np.asarray(after.payload, dtype=np.float64))


class Pairing:
    """The pairing rule over streams of states and commands, fed in arrival order.

    ``add_state`` and ``add_command`` return the decisions they complete, oldest command first.
    ``assemble(before, after)`` builds the two state vectors from the states' payloads (default:
    the payloads are the vectors) and may raise :class:`Unpairable`.
    """

    def __init__(
        self,
        mode: str,
        dt: float,
        *,
        tolerance: float = 0.25,
        max_state_age_s: float = 0.5,
        assemble: Assemble | None = None,
        max_states: int = 2000,
        max_commands: int = 100,
    ):
        if mode not in MODES:
            raise ValueError(f"pairing must be next or hold, not {mode!r}")
        self.mode = mode
        self.dt_ns = int(round(dt * 1e9))
        self.tol = float(tolerance)
        self.max_state_age = int(1e9 * max_state_age_s)
        self.assemble = assemble or _payload_arrays
        self.states: deque[StampedState] = deque(maxlen=max_states)
        self.commands: deque[StampedCommand] = deque(maxlen=max_commands)
        self.boundaries: list[int] = []

    # ------------------------------------------------------------------ inputs
    def add_boundary(self, ns: int) -> bool:
        """An episode boundary (later states belong to a new episode); False if not newer."""
        if self.boundaries and ns <= self.boundaries[-1]:
            return False
        self.boundaries.append(int(ns))
        return True

    def add_state(self, ns: int, payload: Any) -> list[Decision]:
        """A state stamped ``ns``; stamps must increase (the caller drops out-of-order ones)."""
        self.states.append(StampedState(int(ns), payload))
        return self._decide()

    def add_command(self, ns: int, action: np.ndarray) -> list[Decision]:
        """A command at time ``ns``."""
        self.commands.append(StampedCommand(int(ns), np.asarray(action, dtype=np.float64)))
        return self._decide()

    # ------------------------------------------------------------------ housekeeping
    def expire(self, now: float | None = None, max_wait_s: float = 2.0) -> list[Dropped]:
        """Drop commands received more than ``max_wait_s`` ago whose window never completed."""
        now = time.monotonic() if now is None else now
        out = []
        while self.commands and now - self.commands[0].received > max_wait_s:
            self.commands.popleft()
            out.append(Dropped("unpaired", "command with no later state (state stream stopped?)"))
        return out

    def prune(self) -> None:
        """Forget states no pending command can pair with, and boundaries before them."""
        if self.states and self.commands:
            oldest = self.commands[0].ns - self.max_state_age
            while len(self.states) > 2 and self.states[1].ns < oldest:
                self.states.popleft()
        if self.states:
            first = self.states[0].ns
            while len(self.boundaries) > 1 and self.boundaries[0] < first:
                self.boundaries.pop(0)

    def finish(self) -> list[Dropped]:
        """End of the streams: every command still waiting for its window is unpaired."""
        out = [Dropped("unpaired", "command with no later state (the recording ends)")
               for _ in self.commands]
        self.commands.clear()
        return out

    # ------------------------------------------------------------------ the rule
    def window_end(self, cmd: StampedCommand, next_cmd: StampedCommand | None) -> int:
        """The stamp up to which ``cmd``'s ``after`` state may lie."""
        if self.mode == "next":
            return cmd.ns
        end = cmd.ns + int(self.dt_ns * (1 + self.tol))
        return min(next_cmd.ns, end) if next_cmd is not None else end

    def _decide(self) -> list[Decision]:
        out: list[Decision] = []
        while self.commands and self.states:
            cmd = self.commands[0]
            end = self.window_end(cmd, self.commands[1] if len(self.commands) > 1 else None)
            if self.states[-1].ns <= end:
                break  # a state of this window may still be on its way
            self.commands.popleft()
            out.append(self._pair(cmd, end))
        return out

    def _pair(self, cmd: StampedCommand, end: int) -> Decision:
        hold = self.mode == "hold"
        before = after = None
        later = None  # the state right after the newest one checked (walking back in time)
        for st in reversed(self.states):  # stamps increase; the window is at the end
            if after is None and hold and st.ns <= end:
                after = st
            if st.ns <= cmd.ns:
                before = st
                if not hold:
                    after = later
                break
            later = st
        if before is None:
            return Dropped("no_state_before", "command with no state before it")
        if hold and cmd.ns - before.ns > self.max_state_age:
            return Dropped("no_state_before", "command with no recent state before it")
        if after is None or after.ns <= before.ns:
            return Dropped("no_state_after", "command with no state after it")
        if not hold and before.used:
            return Dropped("superseded", "two commands for one state (lockstep pairing)")
        span = after.ns - before.ns
        if hold and abs(span - self.dt_ns) > self.tol * self.dt_ns:
            return Dropped("bad_period", f"transition spans {span * 1e-6:.1f} ms, not one "
                           f"control period ({self.dt_ns * 1e-6:.1f} ms)")
        k = bisect.bisect_left(self.boundaries, before.ns)
        if k < len(self.boundaries) and self.boundaries[k] < after.ns:
            return Dropped("episode_boundary", "transition across an episode boundary",
                           skipped=True)
        try:
            s, s2 = self.assemble(before, after)
        except Unpairable as exc:
            return Dropped(exc.reason, str(exc))
        before.used = True
        return Paired(s, cmd.action, s2, cmd.ns, before.ns, after.ns)


@dataclass
class PairedRecording:
    """The transitions a whole recording gives, in command order, and what was dropped."""

    states: np.ndarray
    actions: np.ndarray
    next_states: np.ndarray
    stamps_ns: np.ndarray
    """(N,) command times."""
    before_ns: np.ndarray
    after_ns: np.ndarray
    episode: np.ndarray
    """(N,) episode index: how many boundaries lie before the transition's first state."""
    segment: np.ndarray
    """(N,) index of the unbroken run of transitions (each next state is the next state)."""
    dropped: dict[str, int]
    skipped: dict[str, int]

    def __len__(self) -> int:
        return int(self.states.shape[0])


def pair_recording(
    states: Iterable[tuple[int, Any]],
    commands: Iterable[tuple[int, np.ndarray]],
    *,
    mode: str,
    dt: float,
    tolerance: float = 0.25,
    max_state_age_s: float = 0.5,
    boundaries: Sequence[int] = (),
    assemble: Assemble | None = None,
    state_dim: int | None = None,
    action_dim: int | None = None,
) -> PairedRecording:
    """Pair recorded ``(stamp_ns, payload)`` states and ``(stamp_ns, action)`` commands.

    The messages are replayed in stamp order (at equal stamps: boundary, state, command), the
    order in which a recorder with no transport delay would have received them. A state with
    the stamp of the state before it is dropped (``out_of_order``, as the nodes count it).
    """
    pairing = Pairing(mode, dt, tolerance=tolerance, max_state_age_s=max_state_age_s,
                      assemble=assemble, max_states=1_000_000, max_commands=1_000_000)
    events: list[tuple[int, int, int, Any]] = [(int(b), 0, i, None)
                                               for i, b in enumerate(sorted(boundaries))]
    events += [(int(ns), 1, i, p) for i, (ns, p) in enumerate(states)]
    events += [(int(ns), 2, i, a) for i, (ns, a) in enumerate(commands)]
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    kept: list[Paired] = []
    dropped: dict[str, int] = {}
    skipped: dict[str, int] = {}

    def take(decisions: Iterable[Decision]) -> None:
        for d in decisions:
            if isinstance(d, Paired):
                kept.append(d)
            else:
                into = skipped if d.skipped else dropped
                into[d.reason] = into.get(d.reason, 0) + 1

    last_state = None
    for ns, kind, _, payload in events:
        if kind == 0:
            pairing.add_boundary(ns)
        elif kind == 1:
            if last_state is not None and ns <= last_state:
                dropped["out_of_order"] = dropped.get("out_of_order", 0) + 1
                continue
            last_state = ns
            take(pairing.add_state(ns, payload))
        else:
            take(pairing.add_command(ns, payload))
            pairing.prune()
    take(pairing.finish())

    n = len(kept)
    sd = state_dim if state_dim is not None else (kept[0].state.shape[0] if n else 0)
    ad = action_dim if action_dim is not None else (kept[0].action.shape[0] if n else 0)
    before = np.array([p.before_ns for p in kept], dtype=np.int64)
    after = np.array([p.after_ns for p in kept], dtype=np.int64)
    bounds = np.array(sorted(int(b) for b in boundaries), dtype=np.int64)
    episode = np.searchsorted(bounds, before, side="left").astype(np.int64)
    breaks = np.ones(n, dtype=bool)
    if n:
        breaks[1:] = (before[1:] != after[:-1]) | (episode[1:] != episode[:-1])
    segment = np.cumsum(breaks) - 1
    return PairedRecording(
        states=np.array([p.state for p in kept]).reshape(n, sd),
        actions=np.array([p.action for p in kept]).reshape(n, ad),
        next_states=np.array([p.next_state for p in kept]).reshape(n, sd),
        stamps_ns=np.array([p.stamp_ns for p in kept], dtype=np.int64),
        before_ns=before,
        after_ns=after,
        episode=episode,
        segment=segment.astype(np.int64),
        dropped=dropped,
        skipped=skipped,
    )
