"""The search backends of :class:`~sym_mbrl_ros.dynamics.symbolic.SymbolicDynamics`, behind
one registry.

A backend turns one coordinate's fit data into candidate expressions. Each lives in its own
module, with its own settings dataclass filled from the fit config, and exposes
``generate(model, i, data, attempt) -> (candidates, info)``:

* ``model``: the :class:`SymbolicDynamics` being fitted (its config, names and caches);
* ``i``: the coordinate; ``data``: its :class:`~sym_mbrl_ros.dynamics.selection.FitData`;
* ``attempt``: 0, then 1, 2 ... when no candidate of the previous round could be evaluated
  (a later attempt searches differently);
* ``candidates``: ``[(tree, source)]``; ``info``: what the backend did, for the fit report.

The registry names a backend's module and function and imports it on first use, so the
transformer (PyTorch) and pyoperon load only for fits that use them, and no backend module
imports :mod:`.symbolic` (the cycle between ``symbolic.py`` and ``transformer/backend.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from .expression import Node
    from .selection import FitData
    from .symbolic import SymbolicDynamics

Generate = Callable[["SymbolicDynamics", int, "FitData", int],
                    tuple[list[tuple["Node", str]], dict[str, Any]]]


@dataclass(frozen=True)
class Backend:
    """One registered backend: where its ``generate`` lives, and what it is."""

    name: str
    module: str
    """Module of ``generate``, relative to this package (``.sparse``) or absolute."""
    function: str
    summary: str

    def load(self) -> Generate:
        """The backend's ``generate`` function (its module imported on first use)."""
        module = importlib.import_module(self.module, __package__)
        return getattr(module, self.function)

    def generate(self, model: SymbolicDynamics, i: int, data: FitData, attempt: int):
        return self.load()(model, i, data, attempt)


_REGISTRY: dict[str, Backend] = {}


def register(name: str, module: str, function: str = "generate", summary: str = "") -> Backend:
    """Add (or replace) a backend; returns it."""
    backend = Backend(name, module, function, summary)
    _REGISTRY[name] = backend
    return backend


def names() -> tuple[str, ...]:
    """Registered backend names, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> Backend:
    """The backend called ``name``; a one-sentence UserError names the others."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(_REGISTRY)}") from None


register("sparse", ".sparse", summary="library + STLSQ, term families, pyoperon fallback (default)")
register("gp", ".gp", summary="pyoperon genetic programming")
register("transformer", ".transformer.backend",
         summary="a pretrained transformer decodes expressions (shipped mechanics weights)")
