"""sym-mbrl fit: learn a symbolic world model from a transitions file or a transition store.

The held-out rows are the newest ones (the end of the file, the highest store ids): the rows
of a time series next to a training row are nearly copies of it, so a random split would
measure interpolation, not the error on data the model has not seen.
"""

from __future__ import annotations

import shlex
import sys
import warnings
from pathlib import Path

from ..errors import UserError

HELP = "learn one symbolic expression per state coordinate from a transitions file"

SQLITE_MAGIC = b"SQLite format 3\x00"


def load_data(path: str | Path):
    """A transitions file (.npz) or a transition store (the recorder's SQLite file)."""
    from ..data.transitions import load_transitions

    path = Path(path)
    if path.is_file():
        with path.open("rb") as f:
            if f.read(16) == SQLITE_MAGIC:
                return load_store(path)
    return load_transitions(path)


def load_store(path: Path):
    """Every transition of a store, as :class:`Transitions` (angles from the store's task)."""
    import sqlite3

    from ..data.store import TransitionStore
    from ..data.transitions import Transitions, check_transition_arrays
    from ..envs import get_task
    from ..envs.base import TaskError

    try:
        with TransitionStore(path, readonly=True) as store:
            batch = store.read()
            names, actions, dt, task_name = (store.state_names, store.action_names, store.dt,
                                             store.task)
    except sqlite3.Error as exc:
        raise UserError(f"cannot read transition store {path} ({exc}); pass a store written "
                        f"by the recorder or a transitions file (.npz)") from None
    s, a, s2, finite = check_transition_arrays(batch.states, batch.actions, batch.next_states,
                                               what=f"transition store {path}")
    angle: tuple[int, ...] = ()
    static: tuple[int, ...] = ()
    try:
        task = get_task(task_name) if task_name else None
    except TaskError:
        task = None
    if task is not None and tuple(task.state_names) == tuple(names):
        angle, static = tuple(task.angle_coords), tuple(task.static_coords)
    return Transitions(s[finite], a[finite], s2[finite], names, actions, dt,
                       batch.episodes[finite], angle, static, int((~finite).sum()))


def heldout_newest(n: int, fraction: float):
    """Row indices (train, held out): the held-out rows are the newest ``fraction`` of n."""
    import numpy as np

    n_test = int(round(fraction * n))
    return np.arange(n - n_test), np.arange(n - n_test, n)


def add_arguments(parser) -> None:
    parser.add_argument("data", help="transitions file (.npz) written by `sym-mbrl collect` or "
                                     "`import-bag`, or the recorder's transition store (.sqlite)")
    parser.add_argument(
        "--out", default="model.json", help="model file to write (default model.json)"
    )
    parser.add_argument(
        "--backend",
        default="sparse",
        choices=("sparse", "gp", "transformer"),
        help="search backend (default sparse)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the search"
    )
    parser.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="share of transitions held out to report R²: the newest rows (default 0.2)",
    )
    parser.add_argument("--init", default=None, help="previous model file to warm-start from")
    parser.add_argument(
        "--gp-time", type=float, default=None, help="gp backend: seconds per coordinate"
    )
    parser.add_argument(
        "--invariant", default="", metavar="NAMES",
        help="comma-separated state coordinates the dynamics do not depend on, e.g. x,y for a "
             "mobile base on a flat floor: no expression may use them",
    )
    parser.add_argument(
        "--time", default="auto", choices=("auto", "discrete", "continuous"),
        help="continuous: each coordinate's time derivative, integrated over the file's dt "
             "(RK4), the law as a physicist writes it; discrete: the next value per coordinate; "
             "auto (default): continuous when the file has dt, else discrete",
    )
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="print only the equations and R²"
    )


def run(args) -> int:
    from ..data.transitions import DataWarning
    from ..dynamics import SymbolicDynamics
    from ..dynamics.symbolic import format_r2

    if not 0.0 <= args.holdout < 0.9:
        raise UserError(f"--holdout must be between 0 and 0.9, got {args.holdout}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        data = load_data(args.data)
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    train, test = heldout_newest(len(data), args.holdout)
    n_test = len(test)
    config = {} if args.gp_time is None else {"gp_time": args.gp_time}
    if args.time == "auto":
        args.time = "continuous" if data.dt is not None else "discrete"
        if data.dt is None:
            print(f"note: {args.data} has no dt, so the model is discrete-time (next values); "
                  "save dt with the data for a continuous-time law")
    config["time"] = args.time
    if args.time == "continuous" and data.dt is None:
        raise UserError(f"--time continuous needs the step length, and {args.data} has no dt")
    invariant = []
    for name in (x.strip() for x in args.invariant.split(",")):
        if not name:
            continue
        if name not in data.state_names:
            raise UserError(
                f"--invariant: unknown state coordinate {name!r}; the data has: "
                f"{', '.join(data.state_names)}"
            )
        invariant.append(data.state_names.index(name))
    model = SymbolicDynamics(
        data.state_names,
        data.action_names,
        data.angle_coords,
        data.static_coords,
        backend=args.backend,
        seed=args.seed,
        invariant_coords=invariant,
        dt=data.dt,
        **config,
    )
    for old, new in model.renamed.items():
        print(f"note: coordinate {old!r} is called {new!r} in the expressions", file=sys.stderr)
    model.fit(data.states[train], data.actions[train], data.next_states[train], init=args.init)
    heldout = (
        model.score(data.states[test], data.actions[test], data.next_states[test]) if n_test else {}
    )
    model.metrics["heldout_r2"] = heldout
    model.metrics["heldout_fraction"] = args.holdout
    model.metrics["heldout_rows"] = "newest"
    model.metrics["n_dropped_in_file"] = data.n_dropped
    model.provenance = {
        "command": "sym-mbrl " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        if sys.argv[1:2] == ["fit"]
        else None,
        "data": str(Path(args.data)),
        "seed": args.seed,
        "backend": args.backend,
        "holdout": args.holdout,
        "init": args.init,
        "dt": data.dt,
    }
    path = model.save(args.out)

    print(
        f"learned from {len(train)} transitions of {args.data} ({args.backend} backend, "
        f"{model.metrics['fit_seconds']:.2f} s), the newest {n_test} held out"
        + (f", {data.n_dropped} dropped for NaN/inf" if data.n_dropped else "")
    )
    print()
    for line in model.equations():
        print(f"  {line}")
    print()
    width = max(len(s) for s in model.state_names)
    print(f"  {'coordinate':<{width}}  held-out R² (increment)")
    for name in model.state_names:
        text = format_r2(heldout.get(name))
        if model.state_names.index(name) in model.static_coords:
            text += "  (static, copied through)"
        print(f"  {name:<{width}}  {text}")
    if not args.quiet:
        print()
        print("what was chosen and why:")
        for line in model.format_report().splitlines():
            print(f"  {line}")
    print()
    print(f"model written to {path}")
    return 0
