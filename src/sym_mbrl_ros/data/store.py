"""The transition store: an SQLite file that the recorder appends to while learners read it.

Why SQLite: one file, crash-safe transactions, and in WAL mode readers see a consistent snapshot
without ever blocking the writer (and the writer never blocks them). The recorder is the only
writer; the dynamics learner, the policy trainer and ``sym-mbrl up`` open the same file
read-only, from other processes.

Durability: every :meth:`TransitionStore.append` is one transaction. A committed transaction
survives ``kill -9`` of the writer (WAL with ``synchronous=NORMAL``: a commit is in the OS page
cache before ``append`` returns), so a crashed recorder loses at most the transition it was
writing. Only a power failure can roll back the last few commits, never corrupt the file.

Schema (``format = sym-mbrl/store-v1`` in ``meta``)::

    meta(key TEXT PRIMARY KEY, value TEXT)
        format, state_names, action_names (JSON lists), dt, task
    episodes(id INTEGER PRIMARY KEY,      -- increasing, never reused
             started REAL,                -- its states are stamped after this (s)
             ended REAL,                  -- stamp of its last stored next_state; NULL if empty
             closed INTEGER,              -- 1 once a later episode started or it terminated
             steps INTEGER,               -- stored transitions
             episode_return REAL,         -- sum of their rewards
             source TEXT)                 -- who opened it ('sim', 'recorder', 'bench', ...)
    transitions(id INTEGER PRIMARY KEY AUTOINCREMENT,  -- increasing, never reused
                episode INTEGER REFERENCES episodes(id),
                step INTEGER,             -- index inside the episode
                stamp REAL,               -- command time (s)
                state BLOB, action BLOB, next_state BLOB,  -- float64, little-endian
                reward REAL,              -- NULL if unknown
                terminated INTEGER)       -- 1 if next_state is terminal

Arrays are stored as raw little-endian float64 bytes (exact, and ~10x faster than text).

A fleet keeps one store per robot (``robot1/transitions.sqlite``, ...; ``meta.robot`` names
the robot, absent in single-robot stores): each file keeps exactly one writer, the robot's
recorder, and the learners read them together through :class:`StoreGroup`, whose batches
carry a ``robots`` column. A single store is a group of one, so stores written before fleets
existed read unchanged.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import UserError

FORMAT = "sym-mbrl/store-v1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS episodes (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    ended REAL,
    closed INTEGER NOT NULL DEFAULT 0,
    steps INTEGER NOT NULL DEFAULT 0,
    episode_return REAL NOT NULL DEFAULT 0.0,
    source TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    episode INTEGER NOT NULL REFERENCES episodes(id),
    step INTEGER NOT NULL,
    stamp REAL NOT NULL,
    state BLOB NOT NULL,
    action BLOB NOT NULL,
    next_state BLOB NOT NULL,
    reward REAL,
    terminated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS transitions_by_episode ON transitions(episode);
"""

_F64 = np.dtype("<f8")


class TransitionBatch(NamedTuple):
    """Transitions read from the store, one row per transition (``ids`` increasing)."""

    ids: np.ndarray  # (N,) int64
    episodes: np.ndarray  # (N,) int64
    steps: np.ndarray  # (N,) int64
    stamps: np.ndarray  # (N,) float64, command time in seconds
    states: np.ndarray  # (N, n)
    actions: np.ndarray  # (N, m)
    next_states: np.ndarray  # (N, n)
    rewards: np.ndarray  # (N,), NaN where unknown
    terminated: np.ndarray  # (N,) bool
    robots: np.ndarray | None = None  # (N,) int64: index into StoreGroup.robots (groups only)

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class Episode:
    """One row of the ``episodes`` table."""

    id: int
    started: float
    ended: float | None
    closed: bool
    steps: int
    episode_return: float
    source: str


def _blob(x, size: int, what: str) -> bytes:
    a = np.asarray(x, dtype=_F64).reshape(-1)
    if a.shape[0] != size:
        raise UserError(f"{what} has {a.shape[0]} values but the store holds {size}; "
                        f"pass one value per coordinate")
    return a.tobytes()


class TransitionStore:
    """Append-only SQLite store of ``(state, action, next_state)`` transitions with episode ids.

    Open it for writing with the coordinate names (the first writer fixes them), or read-only
    from another process with ``readonly=True``. ``with TransitionStore(p) as s: ...`` closes it.
    ``busy_timeout_s``: how long a call waits for a lock another connection holds before it
    raises ``sqlite3.OperationalError`` (the recorder waits briefly and retries later itself).
    """

    def __init__(
        self,
        path: str | Path,
        state_names: Sequence[str] | None = None,
        action_names: Sequence[str] | None = None,
        *,
        dt: float | None = None,
        task: str | None = None,
        robot: str | None = None,
        readonly: bool = False,
        busy_timeout_s: float = 10.0,
    ):
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        if readonly:
            if not self.path.exists():
                raise UserError(f"no transition store at {self.path}; start the recorder "
                                f"(or `sym-mbrl up`) first, or pass the right path")
            # A plain connection (not ``mode=ro``): a WAL reader needs the -shm file, which a
            # read-only open cannot create after the writer has exited. Reads only, by contract.
            self._db = sqlite3.connect(str(self.path), timeout=busy_timeout_s,
                                       check_same_thread=False,
                                       isolation_level=None)
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            self.meta = self._read_meta()
            if not self.meta:
                raise UserError(f"{self.path} is not a transition store yet (no meta table); "
                                f"wait for the recorder to create it")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is
            # exactly one append and nothing is left open between calls.
            self._db = sqlite3.connect(str(self.path), timeout=busy_timeout_s,
                                       check_same_thread=False,
                                       isolation_level=None)
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise UserError(f"could not put {self.path} in WAL mode (got {mode}); "
                                f"put the store on a local file system")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self.meta = self._init_meta(state_names, action_names, dt, task, robot)
        if self.meta.get("format") != FORMAT:
            raise UserError(f"{self.path} has format {self.meta.get('format')!r}, expected "
                            f"{FORMAT!r}; it was not written by this version of sym_mbrl_ros")
        self.state_names: tuple[str, ...] = tuple(json.loads(self.meta["state_names"]))
        self.action_names: tuple[str, ...] = tuple(json.loads(self.meta["action_names"]))
        self.dt: float | None = float(self.meta["dt"]) if self.meta.get("dt") else None
        self.task: str | None = self.meta.get("task") or None
        self.robot: str = self.meta.get("robot", "")
        """The fleet robot whose transitions these are ("" for a single robot's store)."""
        self._open_episode: int | None = None

    # ---------------------------------------------------------------- set-up
    def _read_meta(self) -> dict[str, str]:
        try:
            return dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError:
            return {}

    def _init_meta(self, state_names, action_names, dt, task, robot=None) -> dict[str, str]:
        meta = self._read_meta()
        if meta:
            if state_names is not None and tuple(json.loads(meta["state_names"])) != tuple(
                state_names
            ):
                raise UserError(
                    f"{self.path} holds states {json.loads(meta['state_names'])}, not "
                    f"{list(state_names)}; use a new store (another --out) for another task")
            if action_names is not None and tuple(json.loads(meta["action_names"])) != tuple(
                action_names
            ):
                raise UserError(
                    f"{self.path} holds actions {json.loads(meta['action_names'])}, not "
                    f"{list(action_names)}; use a new store (another --out) for another task")
            return meta
        if state_names is None or action_names is None:
            raise UserError(f"{self.path} is a new store: pass state_names and action_names "
                            f"so that it knows what it holds")
        meta = {
            "format": FORMAT,
            "state_names": json.dumps(list(state_names)),
            "action_names": json.dumps(list(action_names)),
            "dt": "" if dt is None else repr(float(dt)),
            "task": task or "",
        }
        if robot:
            meta["robot"] = robot
        with self._transaction():
            self._db.executemany("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)",
                                 list(meta.items()))
        return self._read_meta()

    def _transaction(self):
        return _Transaction(self._db, self._lock)

    def set_busy_timeout(self, seconds: float) -> None:
        """How long later calls wait for a lock held by another connection."""
        with self._lock:
            self._db.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    # ---------------------------------------------------------------- episodes
    def start_episode(self, stamp: float | None = None, source: str = "") -> int:
        """Close the open episode (if any) and open a new one; returns its id."""
        self._writable()
        stamp = time.time() if stamp is None else float(stamp)
        with self._transaction():
            self._db.execute("UPDATE episodes SET closed = 1 WHERE closed = 0")
            cur = self._db.execute("INSERT INTO episodes(started, source) VALUES (?, ?)",
                                   (stamp, source))
        self._open_episode = int(cur.lastrowid)
        return self._open_episode

    def end_episode(self, episode: int | None = None) -> None:
        """Mark an episode (default: the open one) as complete."""
        self._writable()
        with self._transaction():
            if episode is None:
                self._db.execute("UPDATE episodes SET closed = 1 WHERE closed = 0")
            else:
                self._db.execute("UPDATE episodes SET closed = 1 WHERE id = ?", (int(episode),))
        if episode is None or episode == self._open_episode:
            self._open_episode = None

    def episodes(self, since_id: int = 0) -> list[Episode]:
        """All episodes with ``id > since_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, started, ended, closed, steps, episode_return, source FROM episodes "
                "WHERE id > ? ORDER BY id", (int(since_id),)).fetchall()
        return [Episode(int(r[0]), float(r[1]), r[2], bool(r[3]), int(r[4]), float(r[5]), r[6])
                for r in rows]

    def _current_episode(self) -> int:
        if self._open_episode is None:
            with self._lock:
                row = self._db.execute(
                    "SELECT id FROM episodes WHERE closed = 0 ORDER BY id DESC LIMIT 1"
                ).fetchone()
            self._open_episode = int(row[0]) if row else self.start_episode()
        return self._open_episode

    # ---------------------------------------------------------------- writing
    def _writable(self) -> None:
        if self.readonly:
            raise UserError(f"{self.path} was opened read-only; only the recorder writes to it")

    def append(
        self,
        state,
        action,
        next_state,
        *,
        episode: int | None = None,
        reward: float | None = None,
        terminated: bool = False,
        stamp: float | None = None,
        next_stamp: float | None = None,
    ) -> int:
        """Append one transition atomically; returns its id.

        ``episode`` defaults to the open episode (one is started if there is none); the
        episode's step count and return are updated in the same transaction.
        """
        self._writable()
        row = (
            _blob(state, self.state_dim, "state"),
            _blob(action, self.action_dim, "action"),
            _blob(next_state, self.state_dim, "next_state"),
        )
        ep = self._current_episode() if episode is None else int(episode)
        stamp = time.time() if stamp is None else float(stamp)
        r = None if reward is None or not math.isfinite(float(reward)) else float(reward)
        with self._transaction():
            cur = self._db.execute(
                "INSERT INTO transitions(episode, step, stamp, state, action, next_state, reward,"
                " terminated) VALUES (?, (SELECT steps FROM episodes WHERE id = ?), ?, ?, ?, ?,"
                " ?, ?)", (ep, ep, stamp, *row, r, int(bool(terminated))))
            self._db.execute(
                "UPDATE episodes SET steps = steps + 1, episode_return = episode_return + ?,"
                " ended = ?, closed = MAX(closed, ?) WHERE id = ?",
                (r or 0.0, stamp if next_stamp is None else float(next_stamp),
                 int(bool(terminated)), ep))
        return int(cur.lastrowid)

    def extend(self, states, actions, next_states, *, rewards=None, episode: int | None = None,
               stamps=None) -> int:
        """Append many transitions of one episode in a single transaction; returns the last id."""
        self._writable()
        states = np.asarray(states, dtype=_F64)
        n = states.shape[0]
        rewards = np.full(n, np.nan) if rewards is None else np.asarray(rewards, dtype=float)
        stamps = np.full(n, time.time()) if stamps is None else np.asarray(stamps, dtype=float)
        ep = self._current_episode() if episode is None else int(episode)
        actions = np.asarray(actions, dtype=_F64)
        next_states = np.asarray(next_states, dtype=_F64)
        with self._transaction():
            (step0,) = self._db.execute("SELECT steps FROM episodes WHERE id = ?",
                                        (ep,)).fetchone()
            rows = [
                (ep, step0 + i, float(stamps[i]), _blob(states[i], self.state_dim, "state"),
                 _blob(actions[i], self.action_dim, "action"),
                 _blob(next_states[i], self.state_dim, "next_state"),
                 None if not np.isfinite(rewards[i]) else float(rewards[i]), 0)
                for i in range(n)
            ]
            self._db.executemany(
                "INSERT INTO transitions(episode, step, stamp, state, action, next_state, reward,"
                " terminated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.execute(
                "UPDATE episodes SET steps = steps + ?, episode_return = episode_return + ?,"
                " ended = ? WHERE id = ?",
                (n, float(np.nansum(rewards)), float(stamps[-1]) if n else None, ep))
            (last,) = self._db.execute("SELECT MAX(id) FROM transitions").fetchone()
        return int(last or 0)

    # ---------------------------------------------------------------- reading
    def count(self) -> int:
        """Number of stored transitions."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM transitions").fetchone()[0])

    def last_id(self) -> int:
        """Id of the newest transition (0 if the store is empty)."""
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM transitions")
                       .fetchone()[0])

    def read(self, since_id: int = 0, limit: int | None = None, *,
             last: int | None = None) -> TransitionBatch:
        """Transitions with ``id > since_id`` (oldest first, at most ``limit``), or the newest
        ``last`` transitions."""
        cols = "id, episode, step, stamp, state, action, next_state, reward, terminated"
        with self._lock:
            if last is not None:
                rows = self._db.execute(
                    f"SELECT {cols} FROM (SELECT {cols} FROM transitions WHERE id > ? "
                    f"ORDER BY id DESC LIMIT ?) ORDER BY id", (int(since_id), int(last))
                ).fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT {cols} FROM transitions WHERE id > ? ORDER BY id LIMIT ?",
                    (int(since_id), -1 if limit is None else int(limit))).fetchall()
        n, sd, ad = len(rows), self.state_dim, self.action_dim

        def arr(i: int, d: int) -> np.ndarray:
            if not rows:
                return np.zeros((0, d))
            return np.frombuffer(b"".join(r[i] for r in rows), dtype=_F64).reshape(n, d).copy()

        return TransitionBatch(
            ids=np.array([r[0] for r in rows], dtype=np.int64),
            episodes=np.array([r[1] for r in rows], dtype=np.int64),
            steps=np.array([r[2] for r in rows], dtype=np.int64),
            stamps=np.array([r[3] for r in rows], dtype=float),
            states=arr(4, sd),
            actions=arr(5, ad),
            next_states=arr(6, sd),
            rewards=np.array([np.nan if r[7] is None else r[7] for r in rows], dtype=float),
            terminated=np.array([bool(r[8]) for r in rows], dtype=bool),
        )

    def to_npz(self, path: str | Path) -> Path:
        """Export every transition in the public transitions-file format (``.npz``)."""
        batch = self.read()
        path = Path(path)
        np.savez(path, states=batch.states, actions=batch.actions,
                 next_states=batch.next_states, state_names=np.array(self.state_names),
                 action_names=np.array(self.action_names),
                 dt=np.array(np.nan if self.dt is None else self.dt))
        return path

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> TransitionStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TransitionStore({str(self.path)!r}, states={list(self.state_names)})"


class StoreGroup:
    """The stores of a fleet's robots read as one pool (a single store: a group of one).

    Stores that do not exist yet (a robot still starting) are opened when they appear. Each
    store keeps its own cursor for :meth:`read_new`. Rows of every batch carry ``robots``, the
    index of their store in :attr:`robots`. All stores must hold the same coordinates.
    """

    def __init__(self, paths: Sequence[str | Path]):
        if not paths:
            raise UserError("a store group needs at least one store path")
        self.paths = [Path(p) for p in paths]
        self._stores: list[TransitionStore | None] = [None] * len(self.paths)
        self._since = [0] * len(self.paths)

    def open(self) -> int:
        """Open the stores that exist now; returns how many are open."""
        for i, path in enumerate(self.paths):
            if self._stores[i] is None and path.exists():
                try:
                    store = TransitionStore(path, readonly=True)
                except UserError:
                    continue  # created but empty: the recorder is still writing its meta
                first = next((s for s in self._stores if s is not None), None)
                if first is not None and (store.state_names, store.action_names) != (
                        first.state_names, first.action_names):
                    store.close()
                    raise UserError(f"{path} holds {list(store.state_names)}, "
                                    f"{list(store.action_names)}; the other stores of the group "
                                    f"hold {list(first.state_names)}, "
                                    f"{list(first.action_names)}")
                self._stores[i] = store
        return sum(s is not None for s in self._stores)

    @property
    def robots(self) -> list[str]:
        """Each store's robot name (its ``meta.robot``, else the folder it is in)."""
        return [s.robot if s is not None and s.robot else p.parent.name
                for s, p in zip(self._stores, self.paths)]

    def _open_stores(self) -> list[tuple[int, TransitionStore]]:
        self.open()
        return [(i, s) for i, s in enumerate(self._stores) if s is not None]

    def count(self) -> int:
        """Transitions stored over all robots."""
        return sum(s.count() for _, s in self._open_stores())

    def counts(self) -> list[int]:
        """Transitions stored per robot (0 for a store not there yet)."""
        self.open()
        return [0 if s is None else s.count() for s in self._stores]

    def read_new(self) -> TransitionBatch:
        """Every transition not read by an earlier ``read_new``, store by store."""
        parts = []
        for i, store in self._open_stores():
            batch = store.read(since_id=self._since[i])
            if len(batch):
                self._since[i] = int(batch.ids[-1])
                parts.append((i, batch))
        return self._merge(parts)

    def read_last(self, n: int | None = None) -> TransitionBatch:
        """The newest ``n`` transitions over all robots by command time (None: all), oldest
        first."""
        parts = [(i, store.read() if n is None else store.read(last=n))
                 for i, store in self._open_stores()]
        batch = self._merge(parts)
        if n is not None and len(batch) > n:
            batch = _rows(batch, np.arange(len(batch) - n, len(batch)))
        return batch

    def _merge(self, parts: list[tuple[int, TransitionBatch]]) -> TransitionBatch:
        stores = self._open_stores()
        sd = stores[0][1].state_dim if stores else 0
        ad = stores[0][1].action_dim if stores else 0
        if not parts:
            e = np.zeros(0, dtype=np.int64)
            return TransitionBatch(e, e, e, np.zeros(0), np.zeros((0, sd)), np.zeros((0, ad)),
                                   np.zeros((0, sd)), np.zeros(0), np.zeros(0, dtype=bool), e)
        fields = [np.concatenate([getattr(b, f) for _, b in parts])
                  for f in TransitionBatch._fields[:-1]]
        robots = np.concatenate([np.full(len(b), i, dtype=np.int64) for i, b in parts])
        batch = TransitionBatch(*fields, robots)
        if len(parts) > 1:  # one pool in time order (a stable sort keeps each store's order)
            batch = _rows(batch, np.argsort(batch.stamps, kind="stable"))
        return batch

    def close(self) -> None:
        """Close every open store."""
        for s in self._stores:
            if s is not None:
                s.close()
        self._stores = [None] * len(self.paths)


def _rows(batch: TransitionBatch, index: np.ndarray) -> TransitionBatch:
    return TransitionBatch(*(None if a is None else a[index] for a in batch))


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) under the store's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock):
        self._db, self._lock = db, lock

    def __enter__(self):
        self._lock.acquire()
        try:
            if self._db.in_transaction:  # a failed ROLLBACK (disk full, I/O error) left one open
                self._db.execute("ROLLBACK")
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._db

    def __exit__(self, exc_type, exc, tb):
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()
        return False
