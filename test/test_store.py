"""TransitionStore: round trip, episodes, WAL concurrency, restart, and kill -9 of the writer."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sym_mbrl_ros.data.store import TransitionStore
from sym_mbrl_ros.errors import UserError

S, A = ("theta", "theta_dot"), ("torque",)


def _store(path, **kw):
    return TransitionStore(path, S, A, dt=0.05, task="pendulum", **kw)


def test_round_trip_and_since_id(tmp_path):
    rng = np.random.default_rng(0)
    x, u, y = rng.normal(size=(10, 2)), rng.normal(size=(10, 1)), rng.normal(size=(10, 2))
    with _store(tmp_path / "t.sqlite") as st:
        ep = st.start_episode(stamp=1.0, source="test")
        ids = [st.append(x[i], u[i], y[i], episode=ep, reward=-float(i), stamp=1.0 + i)
               for i in range(10)]
        assert ids == sorted(ids) and st.count() == 10 and st.last_id() == ids[-1]
        b = st.read()
        np.testing.assert_array_equal(b.states, x)  # exact: stored as float64 bytes
        np.testing.assert_array_equal(b.actions, u)
        np.testing.assert_array_equal(b.next_states, y)
        assert b.steps.tolist() == list(range(10)) and set(b.episodes.tolist()) == {ep}
        tail = st.read(since_id=ids[6])
        assert tail.ids.tolist() == ids[7:]
        np.testing.assert_array_equal(tail.states, x[7:])
        assert st.read(since_id=ids[1], limit=3).ids.tolist() == ids[2:5]
        assert st.read(last=2).ids.tolist() == ids[-2:]
        empty = st.read(since_id=ids[-1])
        assert len(empty) == 0 and empty.states.shape == (0, 2)
        (e,) = st.episodes()
        assert e.steps == 10 and e.episode_return == pytest.approx(-45.0) and not e.closed
        assert e.ended == pytest.approx(10.0)
        ep2 = st.start_episode(stamp=20.0)
        st.append(x[0], u[0], y[0], reward=-1.0, terminated=True)  # default: the open episode
        e1, e2 = st.episodes()
        assert e1.closed and e2.id == ep2 and e2.steps == 1 and e2.closed  # terminated closes
    mode = sqlite3.connect(tmp_path / "t.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_restart_appends_and_checks_names(tmp_path):
    p = tmp_path / "t.sqlite"
    with _store(p) as st:
        st.start_episode()
        first = st.append([0, 1], [2], [3, 4], reward=-1.0)
    with _store(p) as st:  # the recorder restarts: same file, ids continue, episode stays open
        second = st.append([5, 6], [7], [8, 9], reward=-2.0)
        assert second > first and st.count() == 2
        (e,) = st.episodes()
        assert e.steps == 2 and e.episode_return == pytest.approx(-3.0)
    with pytest.raises(UserError, match="holds states"):
        TransitionStore(p, ("x", "y", "z"), A)
    with pytest.raises(UserError, match="no transition store"):
        TransitionStore(tmp_path / "missing.sqlite", readonly=True)
    ro = TransitionStore(p, readonly=True)
    assert ro.state_names == S and ro.dt == 0.05 and ro.task == "pendulum"
    with pytest.raises(UserError, match="read-only"):
        ro.append([0, 0], [0], [0, 0])
    with _store(p) as st, pytest.raises(UserError, match="has 3 values"):
        st.append([0, 1, 2], [0], [0, 0])
    out = ro.to_npz(tmp_path / "t.npz")
    z = np.load(out)
    assert z["states"].shape == (2, 2) and list(z["state_names"]) == list(S)


def test_open_reader_never_blocks_the_writer(tmp_path):
    p = tmp_path / "t.sqlite"
    writer = _store(p)
    writer.start_episode()
    writer.append([0, 0], [0], [0, 0])
    reader = sqlite3.connect(p, isolation_level=None, timeout=0.1)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM transitions").fetchone()[0] == 1
    # The reader holds a snapshot (an open read transaction) while the writer keeps going.
    for i in range(200):
        writer.append([i, i], [0], [i, i])
    assert reader.execute("SELECT COUNT(*) FROM transitions").fetchone()[0] == 1  # snapshot
    reader.execute("COMMIT")
    assert reader.execute("SELECT COUNT(*) FROM transitions").fetchone()[0] == 201
    ro = TransitionStore(p, readonly=True)
    assert ro.count() == 201 and len(ro.read(since_id=ro.last_id() - 5)) == 5
    writer.close()


WRITER = textwrap.dedent("""
    import sys
    from sym_mbrl_ros.data.store import TransitionStore
    st = TransitionStore(sys.argv[1], ("theta", "theta_dot"), ("torque",))
    st.start_episode()
    i = 0
    while True:
        i += 1
        tid = st.append([i, i], [i], [i + 1, i + 1], reward=-1.0)
        print(tid, flush=True)
""")


def test_kill_9_loses_at_most_the_transition_in_flight(tmp_path):
    p = tmp_path / "t.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(p)], stdout=subprocess.PIPE,
                            text=True)
    committed = 0
    for line in proc.stdout:
        committed = int(line)
        if committed >= 300:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rest = proc.stdout.read().split()
    committed = int(rest[-1]) if rest else committed
    with _store(p) as st:
        n = st.count()
        assert committed <= n <= committed + 1  # every acknowledged append survived
        assert st._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        b = st.read()
        np.testing.assert_array_equal(b.states[:, 0], np.arange(1, n + 1))
        st.append([0, 0], [0], [0, 0])  # and the writer can carry on after the crash
        assert st.count() == n + 1
