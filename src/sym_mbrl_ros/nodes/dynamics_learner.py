"""dynamics_learner: refits the symbolic world model as transitions arrive, in its own process.

Every ``refit_every`` new transitions in the store it fits :class:`SymbolicDynamics` on the
stored transitions (at most the newest ``max_fit_transitions``; in a fleet, of every robot's
store, ``stores``, pooled in time order), warm-started from the
previous model, holding out the newest ``holdout_fraction`` of them to report the error on
data the model has not seen (a random split of a time series would score each held-out row
next to its near-copy in the training rows).
Each model is written to ``<run_dir>/models/dynamics_NNNN.json`` (and ``latest.json``),
published on ``sym_mbrl/dynamics_model`` (transient-local; the message is the model file's
JSON, with ``provenance.version``), and its equations and held-out error are logged. For
plots: ``sym_mbrl/model/heldout_r2`` (Float64MultiArray labelled ``version,<state names>``)
and ``sym_mbrl/model/equations`` (String, the equations as text for a text panel), both
transient-local.

Restarting resumes: the newest model file is loaded, republished and used as the warm start,
and the store says how many transitions that model had seen. Fits run on a worker thread so
the node keeps answering (diagnostics) while operon/BFGS work.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from pathlib import Path

import numpy as np
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray, String

from ..bringup import latest_version
from ..data.store import StoreGroup
from ..errors import UserError
from .common import (
    ERROR,
    MODEL_SCORE_TOPIC,
    MODEL_TEXT_TOPIC,
    MODEL_TOPIC,
    QOS_LATCHED,
    Diagnostics,
    declare,
    labelled_array,
    run,
)
from .params import TaskParams


class DynamicsLearner(Node):
    """Fits and publishes the world model; see the module docstring."""

    def __init__(self, **kwargs):
        super().__init__("dynamics_learner", **kwargs)
        self.p = TaskParams.declare(self)
        self.refit_every = declare(self, "refit_every", 200,
                                   "refit after this many new transitions")
        self.min_transitions = declare(self, "min_transitions", 200,
                                       "first fit once the store holds this many")
        self.max_fit = declare(self, "max_fit_transitions", 4000,
                               "fit on at most the newest N transitions (0: all)")
        self.holdout = declare(self, "holdout_fraction", 0.2,
                               "share of transitions held out to measure the model's error: "
                               "the newest ones")
        self.backend = declare(self, "backend", "sparse",
                               "symbolic regression backend: sparse (fast) or gp (pyoperon)")
        options = declare(self, "model_options", "{}",
                          "JSON object of further SymbolicDynamics settings")
        self.seed = declare(self, "seed", 0, "seed of the search")
        store_name = declare(self, "store", "transitions.sqlite",
                             "transition store file, relative to run_dir")
        stores = declare(self, "stores", ("str", []),
                         "a fleet: every robot's store, relative to run_dir, fitted on together "
                         "(empty: store)")
        self.poll_s = declare(self, "poll_s", 1.0, "how often to look at the store")
        try:
            self.options = json.loads(options)
            assert isinstance(self.options, dict)
        except (ValueError, AssertionError):
            raise SystemExit("dynamics_learner: model_options must be a JSON object") from None
        self.store_paths = [self.p.run_dir / name for name in (stores or [store_name])]
        self.model_dir = self.p.run_dir / "models"
        self.diag = Diagnostics(self)
        self.pub = self.create_publisher(String, MODEL_TOPIC, QOS_LATCHED)
        self.score_pub = self.create_publisher(Float64MultiArray, MODEL_SCORE_TOPIC, QOS_LATCHED)
        self.text_pub = self.create_publisher(String, MODEL_TEXT_TOPIC, QOS_LATCHED)
        self.store = StoreGroup(self.store_paths)
        self.model = None
        self.fitted_on = 0
        self.version, last = latest_version(self.model_dir, "dynamics_", ".json")
        if last is not None:
            self._resume(last)
        self._worker: threading.Thread | None = None
        self.create_timer(self.poll_s, self.on_poll)

    def _resume(self, path: Path) -> None:
        from ..dynamics.symbolic import SymbolicDynamics

        try:
            self.model = SymbolicDynamics.load(path)
        except UserError as exc:
            self.get_logger().warning(f"not resuming from {path}: {exc}")
            return
        self.fitted_on = int(self.model.provenance.get("transitions", 0))
        self.pub.publish(String(data=path.read_text()))
        self._publish_progress(self.model)
        self.get_logger().info(f"resumed from {path.name} (fitted on {self.fitted_on} "
                               f"transitions); republished it")

    def on_poll(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            return
        try:
            opened = self.store.open()
        except UserError as exc:  # stores of different tasks in one group
            self.diag.condition("stores", ERROR, str(exc))
            return
        if not opened:
            self.diag.set("waiting_for", ", ".join(map(str, self.store_paths)))
            return
        n = self.store.count()
        self.diag.set("stored", n)
        due = n - self.fitted_on >= self.refit_every if self.model is not None else (
            n >= self.min_transitions)
        if due:
            self._worker = threading.Thread(target=self._fit_safely, args=(n,), daemon=True)
            self._worker.start()

    def _fit_safely(self, n: int) -> None:
        try:
            self._fit(n)
        except Exception as exc:  # a failed fit must not take the learner down
            self.diag.count("fit_errors")
            self.get_logger().error(f"fit failed: {exc}\n{traceback.format_exc(limit=3)}")
            self.fitted_on = n  # wait for refit_every more transitions before trying again

    def _fit(self, n: int) -> None:
        from ..dynamics.symbolic import SymbolicDynamics

        task = self.p.task
        batch = self.store.read_last(self.max_fit if self.max_fit > 0 else None)
        n_held = min(len(batch) - 1, max(1, int(round(self.holdout * len(batch)))))
        held = np.zeros(len(batch), dtype=bool)
        held[len(batch) - n_held:] = True  # the newest rows
        train = ~held
        t0 = time.perf_counter()
        model = SymbolicDynamics.for_task(task, backend=self.backend,
                                          seed=self.seed + self.version, **self.options)
        fitted = model.fit(batch.states[train], batch.actions[train], batch.next_states[train],
                           init=self.model)
        model = fitted if fitted is not None else model
        fit_s = time.perf_counter() - t0
        r2 = model.score(batch.states[held], batch.actions[held], batch.next_states[held])
        pred = model.predict(batch.states[held], batch.actions[held])
        err = pred - batch.next_states[held]
        for i in task.angle_coords:
            err[:, i] = (err[:, i] + np.pi) % (2 * np.pi) - np.pi
        rmse = {name: float(np.sqrt(np.mean(err[:, i] ** 2)))
                for i, name in enumerate(task.state_names)}
        self.version += 1
        model.provenance.update({
            "version": self.version, "transitions": int(n), "last_id": int(batch.ids[-1]),
            "fit_samples": int(train.sum()), "heldout_samples": int(held.sum()),
            "heldout_r2": {k: float(v) for k, v in r2.items()}, "heldout_rmse": rmse,
            "fit_s": fit_s, "created": time.time(), "task": task.name,
        })
        path = model.save(self.model_dir / f"dynamics_{self.version:04d}.json")
        text = path.read_text()
        (self.model_dir / "latest.json.tmp").write_text(text)
        (self.model_dir / "latest.json.tmp").replace(self.model_dir / "latest.json")
        self.model, self.fitted_on = model, n
        self.pub.publish(String(data=text))
        self._publish_progress(model)
        self.diag.count("fits")
        self.diag.set("version", self.version)
        self.diag.set("fit_s", fit_s)
        for k, v in r2.items():
            self.diag.set(f"heldout_r2/{k}", float(v))
        self.get_logger().info(
            f"model v{self.version} from {int(train.sum())} transitions in {fit_s:.1f} s; "
            f"held-out R² (increments) " + ", ".join(f"{k} {v:.4f}" for k, v in r2.items())
            + "\n  " + "\n  ".join(model.equations()))

    def _publish_progress(self, model) -> None:
        """The model's version and held-out R² per coordinate as numbers, its equations as
        text (rviz / Foxglove text panels)."""
        prov = model.provenance
        r2 = prov.get("heldout_r2", {})
        self.score_pub.publish(labelled_array(
            {"version": float(prov.get("version", 0)),
             **{name: float(r2.get(name, float("nan"))) for name in model.state_names}}))
        head = (f"model v{prov.get('version')} ({prov.get('transitions')} transitions); "
                f"held-out R² " + ", ".join(f"{k} {float(v):.4f}" for k, v in r2.items()))
        self.text_pub.publish(String(data="\n".join([head, *model.equations()])))

    def close(self) -> None:
        self.store.close()


def main(args=None) -> int:
    return run(DynamicsLearner, args)


if __name__ == "__main__":
    raise SystemExit(main())
