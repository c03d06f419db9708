"""The pairing rule of data/pairing.py (no ROS): next and hold pairing, drops, episodes, order."""

from __future__ import annotations

import numpy as np
import pytest

from sym_mbrl_ros.data.pairing import Paired, Pairing, Unpairable, pair_recording

DT = 0.05
MS = 1_000_000


def _hold_stream(n_cmds: int, rng, state_hz: int = 100, latency_ms=(0.5, 3.0)):
    """A real-time loop: states at ``state_hz`` from t0, a command ``latency`` after every
    state that starts a control period. Returns states, commands and the expected triples."""
    per = int(round(DT * state_hz))
    t0 = 1_700_000_000 * 10**9
    n_states = n_cmds * per + 1  # the last command has no state after its window
    values = rng.normal(size=(n_states, 2))
    states = [(t0 + k * (10**9 // state_hz), values[k]) for k in range(n_states)]
    actions = rng.uniform(-2, 2, (n_cmds, 1))
    commands, expected = [], []
    for j in range(n_cmds):
        k = j * per
        lat = int(rng.uniform(*latency_ms) * MS)
        commands.append((states[k][0] + lat, actions[j]))
        expected.append((values[k], actions[j], values[min(k + per, n_states - 1)]))
    return states, commands, expected


def test_hold_pairing_gives_the_control_periods_of_a_100_hz_state_stream():
    states, commands, expected = _hold_stream(40, np.random.default_rng(0))
    rec = pair_recording(states, commands, mode="hold", dt=DT)
    # the last command has no state after its window (the stream ends): unpaired
    assert len(rec) == 39 and rec.dropped == {"unpaired": 1}
    for k, (s, a, s2) in enumerate(expected[:39]):
        np.testing.assert_array_equal(rec.states[k], s)  # copies of the inputs: exact
        np.testing.assert_array_equal(rec.actions[k], a)
        np.testing.assert_array_equal(rec.next_states[k], s2)
    assert np.all(rec.after_ns - rec.before_ns == 50 * MS)
    assert not rec.segment.any() and not rec.episode.any()  # one unbroken run (ids all 0)


def test_next_pairing_and_a_second_command_for_one_state():
    p = Pairing("next", DT)
    s = np.eye(3)
    out = p.add_state(100, s[0]) + p.add_command(110, [1.0]) + p.add_command(120, [2.0])
    assert out == []  # nothing decided until a state after the commands arrives
    out = p.add_state(200, s[1])
    assert isinstance(out[0], Paired) and out[1].reason == "superseded"
    np.testing.assert_array_equal(out[0].next_state, s[1])
    assert out[0].action.tolist() == [1.0] and out[0].stamp_ns == 110
    out = p.add_command(210, [3.0]) + p.add_state(300, s[2])
    assert [type(d) for d in out] == [Paired] and out[0].before_ns == 200


def test_hold_drops_half_periods_gaps_and_old_states():
    p = Pairing("hold", DT, max_state_age_s=0.5)
    out = []
    for k in range(12):  # states every 10 ms
        out += p.add_state(k * 10 * MS, np.array([k, 0.0]))
        if k == 0:
            out += p.add_command(1 * MS, [0.5])
        if k == 2:
            out += p.add_command(21 * MS, [0.6])  # the first was held for 20 ms only
    first, second = out
    assert first.reason == "bad_period"
    # no command after the second: it holds to 21 + 62.5 ms, so after = the 80 ms state
    assert isinstance(second, Paired) and (second.before_ns, second.after_ns) == (20 * MS,
                                                                                 80 * MS)
    q = Pairing("hold", DT, max_state_age_s=0.5)
    q.add_state(0, np.zeros(2))
    assert q.add_command(600 * MS, [0.0]) == []
    (d,) = q.add_state(700 * MS, np.ones(2))
    assert d.reason == "no_state_before"  # its newest state is 600 ms old
    r = Pairing("hold", DT)
    r.add_state(0, np.zeros(2))
    r.add_command(1 * MS, [0.0])
    (d,) = r.add_state(200 * MS, np.ones(2))  # a gap in the state stream
    assert d.reason == "no_state_after"


def test_hold_pairing_of_the_second_command_ends_at_one_and_a_quarter_periods():
    p = Pairing("hold", DT)
    for k in range(4):
        p.add_state(k * 10 * MS, np.array([k, 0.0]))
    p.add_command(31 * MS, [0.7])
    decided = []
    for k in range(4, 12):
        decided += p.add_state(k * 10 * MS, np.array([k, 0.0]))
    (d,) = decided  # decided by the first state after 31 + 62.5 ms
    assert isinstance(d, Paired) and d.before_ns == 30 * MS and d.after_ns == 90 * MS


def test_episode_boundaries_skip_and_number_transitions():
    states, commands, _ = _hold_stream(30, np.random.default_rng(1))
    boundary = states[50][0]  # the episode after it holds the states stamped after 0.5 s
    rec = pair_recording(states, commands, mode="hold", dt=DT, boundaries=[boundary])
    assert rec.skipped == {"episode_boundary": 1}  # the command at state 50 spans 50..55
    assert len(rec) == 28
    assert np.all(rec.episode == (rec.before_ns > boundary))
    assert rec.segment.max() == 1 and rec.episode.max() == 1


def test_assemble_can_refuse_a_pair_and_next_pairing_keeps_the_state():
    def assemble(before, after):
        if before.payload is None:
            raise Unpairable("no_target", "no target yet")
        return np.asarray(before.payload), np.asarray(after.payload)

    p = Pairing("next", DT, assemble=assemble)
    p.add_state(0, None)
    p.add_command(5, [1.0])
    (d,) = p.add_state(10, [1.0, 2.0])
    assert d.reason == "no_target"
    p.add_command(15, [0.5])
    (d,) = p.add_state(20, [3.0, 4.0])
    assert isinstance(d, Paired) and d.state.tolist() == [1.0, 2.0]


def test_expire_and_prune_bound_the_memory():
    p = Pairing("hold", DT)
    p.add_state(0, np.zeros(2))
    p.add_command(1 * MS, [0.0])
    (d,) = p.expire(now=p.commands[0].received + 3.0)
    assert d.reason == "unpaired" and not p.commands
    for k in range(1, 200):
        p.add_state(k * 10 * MS, np.zeros(2))
    p.add_command(1990 * MS, [0.0])
    p.prune()
    assert len(p.states) <= 52  # at most max_state_age (0.5 s) of 100 Hz states, plus one


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_live_rule_does_not_depend_on_which_topic_is_processed_first(seed):
    """Messages delivered late (up to 0.2 dt, per topic in order) give the transitions of the
    recording replayed in stamp order."""
    rng = np.random.default_rng(seed)
    states, commands, _ = _hold_stream(60, rng)
    reference = pair_recording(states, commands, mode="hold", dt=DT)
    events = []
    for kind, stream in enumerate((states, commands)):
        # arrival = stamp + a delay up to 0.2 dt, first in first out within a topic
        arrival = np.maximum.accumulate([ns + rng.uniform(0, 0.2 * DT * 1e9) for ns, _ in stream])
        events += [(t, kind, ns, v) for t, (ns, v) in zip(arrival, stream)]
    events.sort(key=lambda e: e[0])
    p = Pairing("hold", DT)
    live = []
    for _, kind, ns, value in events:
        live += p.add_state(ns, value) if kind == 0 else p.add_command(ns, value)
    kept = [d for d in live if isinstance(d, Paired)]
    assert [d.before_ns for d in kept] == reference.before_ns.tolist()
    assert [d.after_ns for d in kept] == reference.after_ns.tolist()
    np.testing.assert_array_equal(np.array([d.action for d in kept]), reference.actions)


def test_pair_recording_drops_out_of_order_states_and_counts_segments():
    states, commands, _ = _hold_stream(20, np.random.default_rng(3))
    states = list(states)
    states.insert(30, (states[29][0], np.zeros(2)))  # a second state with the same stamp
    del states[62:67]  # a 50 ms hole: the command at state 55 finds no state a period later
    rec = pair_recording(states, commands, mode="hold", dt=DT)
    assert rec.dropped["out_of_order"] == 1
    assert sum(rec.dropped.values()) + len(rec) == 20 + 1
    assert rec.segment.max() >= 1  # the hole breaks the chain of next states
    same = rec.segment[1:] == rec.segment[:-1]
    np.testing.assert_array_equal(rec.states[1:][same], rec.next_states[:-1][same])
