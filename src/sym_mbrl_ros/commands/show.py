"""sym-mbrl show: print a model file's equations as text and as LaTeX."""

from __future__ import annotations

HELP = "print the equations of a model file, as text and as LaTeX"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model file (.json) written by `sym-mbrl fit`")
    parser.add_argument(
        "--precision", type=int, default=4, help="significant digits of constants (default 4)"
    )
    parser.add_argument("--report", action="store_true", help="also print what was chosen and why")


def run(args) -> int:
    from ..dynamics import SymbolicDynamics
    from ..dynamics.symbolic import format_r2
    from ..errors import UserError

    if not 1 <= args.precision <= 17:
        raise UserError(f"--precision must be between 1 and 17, got {args.precision}")
    model = SymbolicDynamics.load(args.model)
    print(
        f"{args.model}: {model.state_dim} state and {model.action_dim} action coordinates, "
        f"{model.backend} backend"
    )
    if model.is_continuous and model.integrator is not None:
        k = model.integrator.substeps
        print(
            f"continuous time: the laws below are integrated over dt = {model.dt:g} s by "
            f"{model.integrator.method.upper()} in {k} substep{'s' if k != 1 else ''}"
        )
    print()
    for line in model.equations(args.precision):
        print(f"  {line}")
    print()
    print("LaTeX:")
    for line in model.latex(args.precision):
        print(f"  {line}")
    heldout = model.metrics.get("heldout_r2") or {}
    if isinstance(heldout, dict) and heldout:
        print()
        print("held-out R² (on the increment):")
        for name, value in heldout.items():
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            print(f"  {name}: {format_r2(float(value)) if ok else 'n/a'}")
    if args.report and model.report():
        print()
        print(model.format_report())
    return 0
