"""sym-mbrl predict: a model's next states for the states and actions of a transitions file."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from ..errors import UserError

HELP = "predict next states with a dynamics model (symbolic .json or ensemble .pt)"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model file: symbolic (.json, from `sym-mbrl fit`) or the "
                                      "NN ensemble (.pt)")
    parser.add_argument("data", help="transitions file (.npz) or transition store (.sqlite) "
                                     "whose states and actions to predict from")
    parser.add_argument("--out", default="predictions.npz",
                        help="transitions file to write: the data's states and actions with "
                             "the model's next states (default predictions.npz)")


def load_model(path: str | Path):
    """A symbolic model (any format SymbolicDynamics.load reads) or an ensemble (.pt)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    if path.suffix == ".pt":
        from ..dynamics.ensemble import EnsembleDynamics

        try:
            return EnsembleDynamics.load(path)
        except UserError:
            raise
        except Exception as exc:  # torch raises many types for a file that is not its own
            raise UserError(f"cannot read ensemble model {path} ({type(exc).__name__}); "
                            f"pass a file written by EnsembleDynamics.save") from None
    from ..dynamics import SymbolicDynamics

    return SymbolicDynamics.load(path)


def _check_names(kind: str, data_names, model_names, prefix: str, data_path, model_path) -> None:
    from ..data.transitions import default_names

    if len(data_names) != len(model_names):
        raise UserError(f"{data_path} has {len(data_names)} {kind} columns but the model "
                        f"{model_path} takes {len(model_names)} ({', '.join(model_names)})")
    unnamed = tuple(data_names) == default_names(prefix, len(data_names))
    if not unnamed and tuple(data_names) != tuple(model_names):
        raise UserError(f"{data_path} has {kind}s {list(data_names)} but the model "
                        f"{model_path} has {list(model_names)}; use data of the model's system")


def run(args) -> int:
    import numpy as np

    from ..data.transitions import DataWarning, save_transitions
    from ..dynamics.symbolic import format_r2, increment_r2
    from .fit import load_data

    model = load_model(args.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        data = load_data(args.data)
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    _check_names("state", data.state_names, model.state_names, "s", args.data, args.model)
    _check_names("action", data.action_names, model.action_names, "a", args.data, args.model)
    if len(data) == 0:
        raise UserError(f"{args.data} holds no transitions to predict from")
    pred = np.asarray(model.predict(data.states, data.actions), dtype=np.float64)
    path = save_transitions(
        args.out, data.states, data.actions, pred, state_names=model.state_names,
        action_names=model.action_names, dt=data.dt, episode=data.episode,
        angle_coords=model.angle_coords, static_coords=model.static_coords,
    )
    print(f"predicted {len(data)} next states of {args.data} with {args.model}")
    width = max(len(s) for s in model.state_names)
    print(f"  {'coordinate':<{width}}  R² against the data's next states (increment)")
    for i, name in enumerate(model.state_names):
        r2 = increment_r2(data.states[:, i], data.next_states[:, i], pred[:, i],
                          i in model.angle_coords)
        print(f"  {name:<{width}}  {format_r2(r2)}")
    print(f"written to {path}")
    return 0
