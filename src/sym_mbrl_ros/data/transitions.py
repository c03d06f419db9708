"""The transitions file (``.npz``): what ``sym-mbrl collect`` writes and ``sym-mbrl fit`` reads.

Arrays (DESIGN.md, "Data formats"): ``states`` (N, n), ``actions`` (N, m), ``next_states``
(N, n), and optionally ``state_names`` (n,), ``action_names`` (m,), ``dt`` (scalar),
``episode`` (N,) episode index of each row, ``angle_coords`` and ``static_coords`` (indices).

Rows that contain NaN or inf are dropped when the file is read, counted in
:attr:`Transitions.n_dropped`, and reported with a :class:`DataWarning`.
"""

from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

REQUIRED = ("states", "actions", "next_states")


class DataWarning(UserWarning):
    """Something in the data was fixed up on the way in (for example NaN rows dropped)."""


@dataclass
class Transitions:
    """Transitions of one system, with names; the in-memory form of a transitions file."""

    states: np.ndarray
    """(N, n) states s."""
    actions: np.ndarray
    """(N, m) actions a."""
    next_states: np.ndarray
    """(N, n) states s' after applying a in s."""
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    dt: float | None = None
    """Control period in seconds, if known."""
    episode: np.ndarray | None = None
    """(N,) episode index of each transition, if known."""
    angle_coords: tuple[int, ...] = ()
    """Indices of periodic state coordinates, kept in [-pi, pi)."""
    static_coords: tuple[int, ...] = ()
    """Indices of state coordinates that never change within an episode."""
    n_dropped: int = 0
    """Rows dropped on reading because they contained NaN or inf."""

    def __len__(self) -> int:
        return self.states.shape[0]

    def subset(self, rows: np.ndarray) -> Transitions:
        """The transitions at the given row indices (or boolean mask)."""
        return Transitions(
            self.states[rows],
            self.actions[rows],
            self.next_states[rows],
            self.state_names,
            self.action_names,
            self.dt,
            None if self.episode is None else self.episode[rows],
            self.angle_coords,
            self.static_coords,
            0,
        )


def check_transition_arrays(
    states,
    actions,
    next_states,
    *,
    state_dim: int | None = None,
    action_dim: int | None = None,
    what: str = "transitions",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate three transition arrays; returns them as float64 2-D arrays plus a finite-row mask.

    Raises :class:`UserError` for a missing array, a wrong number of dimensions or columns, or
    arrays with different numbers of rows. Non-finite rows are *not* removed here; the mask says
    which rows are finite so the caller can drop and report them.
    """
    arrays = {"states": states, "actions": actions, "next_states": next_states}
    missing = [k for k, v in arrays.items() if v is None]
    if missing:
        raise UserError(
            f"{what}: missing {', '.join(missing)}; pass states, actions and next_states"
        )
    out = {}
    for key, value in arrays.items():
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{what}: {key} is not a numeric array ({exc})") from None
        if arr.ndim == 1:
            arr = arr.reshape(-1, 1)
        if arr.ndim != 2:
            raise UserError(
                f"{what}: {key} must be a 2-D array (rows, coordinates), got shape {arr.shape}"
            )
        out[key] = arr
    s, a, s2 = out["states"], out["actions"], out["next_states"]
    if not (s.shape[0] == a.shape[0] == s2.shape[0]):
        raise UserError(
            f"{what}: states, actions and next_states have {s.shape[0]}, {a.shape[0]} and "
            f"{s2.shape[0]} rows; they must have one row per transition"
        )
    if s.shape[1] != s2.shape[1]:
        raise UserError(
            f"{what}: states have {s.shape[1]} columns but next_states have {s2.shape[1]}; "
            f"both must hold the same state coordinates"
        )
    if state_dim is not None and s.shape[1] != state_dim:
        raise UserError(
            f"{what}: states have {s.shape[1]} columns, expected {state_dim} (one per state name)"
        )
    if action_dim is not None and a.shape[1] != action_dim:
        raise UserError(
            f"{what}: actions have {a.shape[1]} columns, expected {action_dim} "
            f"(one per action name)"
        )
    finite = np.isfinite(s).all(axis=1) & np.isfinite(a).all(axis=1) & np.isfinite(s2).all(axis=1)
    return s, a, s2, finite


def warn_dropped(n_dropped: int, n_total: int, where: str) -> None:
    """Issue the :class:`DataWarning` for rows dropped because of NaN or inf."""
    if n_dropped:
        warnings.warn(
            f"{where}: dropped {n_dropped} of {n_total} transitions that contain NaN or inf",
            DataWarning,
            stacklevel=3,
        )


def default_names(prefix: str, n: int) -> tuple[str, ...]:
    """``s0, s1, ...``: the names used when a file has none."""
    return tuple(f"{prefix}{k}" for k in range(n))


def save_transitions(
    path: str | Path,
    states,
    actions,
    next_states,
    *,
    state_names=None,
    action_names=None,
    dt: float | None = None,
    episode=None,
    angle_coords=(),
    static_coords=(),
) -> Path:
    """Write a transitions file (compressed ``.npz``); returns its path."""
    s, a, s2, _ = check_transition_arrays(states, actions, next_states)
    state_names = tuple(state_names) if state_names is not None else default_names("s", s.shape[1])
    action_names = (
        tuple(action_names) if action_names is not None else default_names("a", a.shape[1])
    )
    if len(state_names) != s.shape[1] or len(action_names) != a.shape[1]:
        raise UserError(
            f"got {len(state_names)} state names and {len(action_names)} action names for arrays "
            f"with {s.shape[1]} state and {a.shape[1]} action columns"
        )
    arrays = {
        "states": s,
        "actions": a,
        "next_states": s2,
        "state_names": np.array(state_names, dtype=str),
        "action_names": np.array(action_names, dtype=str),
        "angle_coords": np.array(tuple(angle_coords), dtype=np.int64),
        "static_coords": np.array(tuple(static_coords), dtype=np.int64),
    }
    if dt is not None:
        arrays["dt"] = np.float64(dt)
    if episode is not None:
        ep = np.asarray(episode, dtype=np.int64).reshape(-1)
        if ep.shape[0] != s.shape[0]:
            raise UserError(f"episode has {ep.shape[0]} entries for {s.shape[0]} transitions")
        arrays["episode"] = ep
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")  # np.savez would add it anyway
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def load_transitions(path: str | Path) -> Transitions:
    """Read and validate a transitions file; NaN/inf rows are dropped, counted and warned about."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"transitions file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"cannot read transitions file {path} ({reason}); "
            f"it must be an .npz written by `sym-mbrl collect` or numpy.savez"
        ) from None
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise UserError(
            f"transitions file {path} has no {', '.join(missing)} array; it needs states, "
            f"actions and next_states (found: {', '.join(sorted(data)) or 'nothing'})"
        )
    s, a, s2, finite = check_transition_arrays(
        data["states"], data["actions"], data["next_states"], what=f"transitions file {path}"
    )
    state_names = _names(data, "state_names", "s", s.shape[1], path)
    action_names = _names(data, "action_names", "a", a.shape[1], path)
    dt = None
    if "dt" in data:
        dt_arr = np.asarray(data["dt"], dtype=np.float64).reshape(-1)
        if dt_arr.size != 1 or not np.isfinite(dt_arr[0]) or dt_arr[0] <= 0:
            raise UserError(f"transitions file {path}: dt must be one positive number")
        dt = float(dt_arr[0])
    episode = None
    if "episode" in data:
        episode = np.asarray(data["episode"]).reshape(-1)
        if episode.shape[0] != s.shape[0]:
            raise UserError(
                f"transitions file {path}: episode has {episode.shape[0]} entries for "
                f"{s.shape[0]} transitions"
            )
        episode = episode.astype(np.int64)
    angle = _indices(data, "angle_coords", s.shape[1], path)
    static = _indices(data, "static_coords", s.shape[1], path)
    n_dropped = int((~finite).sum())
    warn_dropped(n_dropped, s.shape[0], f"transitions file {path}")
    return Transitions(
        s[finite],
        a[finite],
        s2[finite],
        state_names,
        action_names,
        dt,
        None if episode is None else episode[finite],
        angle,
        static,
        n_dropped,
    )


def _names(data: dict, key: str, prefix: str, n: int, path: Path) -> tuple[str, ...]:
    if key not in data:
        return default_names(prefix, n)
    names = tuple(str(x) for x in np.asarray(data[key]).reshape(-1))
    if len(names) != n:
        raise UserError(f"transitions file {path}: {key} has {len(names)} entries for {n} columns")
    return names


def _indices(data: dict, key: str, n: int, path: Path) -> tuple[int, ...]:
    if key not in data:
        return ()
    arr = np.asarray(data[key]).reshape(-1)
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= n):
        raise UserError(f"transitions file {path}: {key} must be indices between 0 and {n - 1}")
    return tuple(int(k) for k in arr)
