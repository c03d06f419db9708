"""World models: the symbolic one (:class:`SymbolicDynamics`) and the NN-ensemble baseline.

The symbolic model learns one expression per state coordinate, ``s'_i = f_i(s, a)``, with a
search backend (``sparse`` or ``gp``), BFGS refinement of the constants and ranking by held-out
error plus complexity. Models are saved as ``sym-mbrl/dynamics-v1`` JSON and read back through a
whitelisted expression parser.
"""

from .expression import ExpressionError, parse_expression
from .symbolic import (
    FORMAT,
    SymbolicDynamics,
    SymbolicDynamicsConfig,
    expression_names,
    increment_r2,
    wrap_angle,
)

__all__ = [
    "FORMAT",
    "ExpressionError",
    "expression_names",
    "SymbolicDynamics",
    "SymbolicDynamicsConfig",
    "increment_r2",
    "parse_expression",
    "wrap_angle",
]


def __getattr__(name: str):
    # the ensemble imports torch; load it only when asked for
    if name == "EnsembleDynamics":
        from .ensemble import EnsembleDynamics

        return EnsembleDynamics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
