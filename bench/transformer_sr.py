"""Transformer SR backend benchmark: the shipped transformer weights against `sparse` and `gp`.

All three backends run inside the same SymbolicDynamics pipeline (BFGS on the constants,
ranking on an internal validation split, regeneration when nothing can be evaluated); only the
candidate generator differs.

1. **Held-out generated expressions.** Fresh samples of the two training generators (seeds
   never used in training): ``mechanics`` (increments of random mechanical systems, the
   distribution the shipped weights were trained on) and ``general`` (random expressions after
   Kamienny et al. 2022, which the shipped weights never saw). Each expression gets 200 points
   to fit and 200 fresh points from the same distribution to test. Reported: the share whose
   *exact structure* is recovered (same set of additive terms after ``sympy.expand`` of both
   expressions with trig sums expanded, coefficients ignored; for ``general`` the expressions
   are compared with every number replaced by a symbol, which is strict), the share with test
   R² >= 0.99 and >= 0.999, the median test R², and candidates per second.
2. **Tasks.** MuJoCo Pendulum (and, without ``--quick``, Reacher and Car2d) transitions under
   random actions, the same data as ``bench/dynamics.py``: 200 training transitions; held-out
   R² on fresh episodes; extrapolation R² trained inside the central 60 % box of the key
   coordinates and tested outside it. For Pendulum the benchmark also checks the structure:
   the theta increment uses theta_dot, the theta_dot increment uses sin(theta) and the torque.
3. **Speed.** Candidates per second end to end (generated, refined by BFGS and scored, divided
   by the coordinate's fit time) and, for the transformer, decoding alone.

    python bench/transformer_sr.py [--seed 0] [--quick] [--n-expressions 60] [--weights W]

Writes bench/results/transformer_sr.md and bench/results/transformer_sr.json (``--quick``:
transformer_sr_quick.*).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import sympy
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dynamics import make_system  # noqa: E402

from sym_mbrl_ros.dynamics import increment_r2  # noqa: E402
from sym_mbrl_ros.dynamics.expression import (  # noqa: E402
    CompiledExpression,
    increment_tree,
    node_count,
    to_string,
    to_sympy,
)
from sym_mbrl_ros.dynamics.transformer.backend import (  # noqa: E402
    load_model,
    symbolic_dynamics,
    weights_path,
)
from sym_mbrl_ros.dynamics.transformer.generators import make_generator  # noqa: E402
from sym_mbrl_ros.dynamics.transformer.train import config_path  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("transformer", "transformer-beam", "sparse", "gp")
# transformer-beam: the decoded expressions only, without pooling their terms


def backend_kwargs(backend: str, gp_time: float) -> tuple[str, dict]:
    """(backend name for SymbolicDynamics, extra settings) of a benchmark row."""
    if backend == "transformer-beam":
        return "transformer", {"tf_combine": False}
    if backend == "gp":
        return "gp", {"gp_time": gp_time}
    return backend, {}


HELDOUT_SEED = 10_000  # training used seeds 0 (data) and 1 (validation)


# --- structure ---------------------------------------------------------------------------------


def _canonical(expr) -> sympy.Expr:
    return sympy.expand(sympy.expand_trig(expr))


def term_set(tree, tol: float = 1e-9) -> frozenset:
    """The additive terms of an expression with coefficients dropped (constant term as 1)."""
    expr = _canonical(to_sympy(tree))
    terms = expr.as_coefficients_dict()
    return frozenset(str(k) for k, v in terms.items() if abs(float(v)) > tol)


def skeleton(tree) -> str:
    """The expression with every number replaced by the symbol c (after sympy's canonical form)."""
    expr = sympy.expand(to_sympy(tree))
    c = sympy.Symbol("c")
    return str(expr.replace(lambda e: e.is_Number and e not in (1, -1), lambda e: c))


def same_structure(true_tree, found_tree, kind: str) -> bool:
    try:
        if kind == "mechanics":
            return term_set(true_tree) == term_set(found_tree)
        return skeleton(true_tree) == skeleton(found_tree)
    except (TypeError, ValueError, RecursionError):
        return False


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    if not np.all(np.isfinite(pred)):
        return -np.inf
    ss = float(np.sum((y - np.mean(y)) ** 2))
    return 1.0 - float(np.sum((y - pred) ** 2)) / ss if ss > 0 else 0.0


# --- generated expressions ---------------------------------------------------------------------


def fit_generated(X, y, angle, backend: str, seed: int, gp_time: float):
    """Fit y = f(X) with one backend through SymbolicDynamics: the inputs are the states, the
    target is the increment of one non-angle state (the others do not change)."""
    d = X.shape[1]
    names = [f"x{k}" for k in range(d)]
    angles = [k for k in range(d) if angle[k]]
    plain = [k for k in range(d) if not angle[k]]
    target = plain[0] if plain else 0
    nxt = X.copy()
    nxt[:, target] = X[:, target] + y
    name, config = backend_kwargs(backend, gp_time)
    model = symbolic_dynamics(names, [], angles, backend=name, seed=seed, **config)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, np.zeros((len(X), 0)), nxt)
    seconds = time.perf_counter() - t0
    rep = model.report()[target]
    tree = increment_tree(names[target], model.trees()[target])
    n_cand = rep.get("n_candidates", 0) + rep.get("n_rejected", 0)
    decode = (rep.get("backend_info") or {}).get("decode_seconds")
    return tree, names, seconds, n_cand, decode


def bench_generated(kind: str, n: int, seed: int, gp_time: float, backends, log) -> dict:
    tok = load_model().tokenizer
    gen = make_generator(kind, tok)
    rng = np.random.default_rng(HELDOUT_SEED + seed + (0 if kind == "mechanics" else 1))
    rows: dict[str, list] = {b: [] for b in backends}
    examples = []
    for k in range(n):
        sample = gen.sample(rng, 400)
        X, y = sample.X, sample.y
        Xtr, ytr, Xte, yte = X[:200], y[:200], X[200:], y[200:]
        if sample.angle.all() and np.max(np.abs(ytr)) >= np.pi:
            continue  # the target would be an angle whose increment gets wrapped
        ex = {"true": to_string(sample.tree, 4)}
        for b in backends:
            tree, names, seconds, n_cand, decode = fit_generated(
                Xtr, ytr, sample.angle, b, seed + k, gp_time
            )
            pred = CompiledExpression(tree, names).numpy(Xte)
            rows[b].append(
                {
                    "structure": same_structure(sample.tree, tree, kind),
                    "r2": r2(yte, pred),
                    "seconds": seconds,
                    "candidates": n_cand,
                    "decode_seconds": decode,
                    "size": node_count(tree),
                }
            )
            ex[b] = to_string(tree, 4)
        examples.append(ex)
        if (k + 1) % 10 == 0:
            log(f"  {kind}: {k + 1}/{n} expressions")
    out = {}
    for b in backends:
        rs = rows[b]
        r2s = np.array([r["r2"] for r in rs])
        dec = [r["decode_seconds"] for r in rs if r["decode_seconds"]]
        out[b] = {
            "n": len(rs),
            "structure": float(np.mean([r["structure"] for r in rs])),
            "r2_099": float(np.mean(r2s >= 0.99)),
            "r2_0999": float(np.mean(r2s >= 0.999)),
            "median_r2": float(np.median(r2s)),
            "median_size": float(np.median([r["size"] for r in rs])),
            "seconds": float(np.mean([r["seconds"] for r in rs])),
            "candidates_per_s": float(
                sum(r["candidates"] for r in rs) / max(sum(r["seconds"] for r in rs), 1e-9)
            ),
            "decode_per_s": float(
                sum(r["candidates"] for r in rs if r["decode_seconds"]) / sum(dec)
            )
            if dec
            else None,
        }
    return {"summary": out, "examples": examples[:8]}


# --- tasks -------------------------------------------------------------------------------------


def pendulum_structure(model) -> dict:
    """Which of the expected terms the Pendulum model's increments use."""
    theta, theta_dot = sympy.symbols("theta theta_dot", real=True)
    torque = sympy.Symbol("torque", real=True)
    trees = model.trees()
    inc_theta = sympy.expand(to_sympy(increment_tree("theta", trees[0])))
    inc_w = sympy.expand(to_sympy(increment_tree("theta_dot", trees[1])))
    terms_theta = inc_theta.as_coefficients_dict()
    terms_w = inc_w.as_coefficients_dict()
    checks = {
        "theta' has a c*theta_dot term": theta_dot in terms_theta,
        "theta_dot' has a c*sin(theta) term": sympy.sin(theta) in terms_w,
        "theta_dot' has a c*torque term": torque in terms_w,
    }
    checks["all"] = all(checks.values())
    return checks


def bench_task(name: str, n_train: int, seed: int, gp_time: float, backends, log) -> dict:
    sizes = {"train": {name: n_train}, "test": 1000, "pool": 6000}
    system = make_system(name, sizes, seed)
    out = {}
    for b in backends:
        res = {}
        for label, train, test in (
            ("heldout", system.train, system.test),
            ("extrap", system.extrap_train, system.extrap_test),
        ):
            backend, config = backend_kwargs(b, gp_time)
            model = symbolic_dynamics(
                system.state_names,
                system.action_names,
                system.angle_coords,
                system.static_coords,
                backend=backend,
                seed=seed,
                **config,
            )
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(train["states"], train["actions"], train["next_states"])
            seconds = time.perf_counter() - t0
            pred = model.predict(test["states"], test["actions"])
            scores = {
                system.state_names[i]: increment_r2(
                    test["states"][:, i],
                    test["next_states"][:, i],
                    pred[:, i],
                    i in system.angle_coords,
                )
                for i in system.dynamic
            }
            res[label] = {"r2": scores, "seconds": seconds}
            if label == "heldout":
                reps = [r for r in model.report() if r.get("kind") == "learned"]
                n_cand = sum(r.get("n_candidates", 0) + r.get("n_rejected", 0) for r in reps)
                res["candidates_per_s"] = n_cand / max(sum(r["seconds"] for r in reps), 1e-9)
                res["equations"] = model.equations(4)
                if name == "pendulum":
                    res["structure"] = pendulum_structure(model)
        out[b] = res
        log(f"  {name} {b}: held-out min R² {min(res['heldout']['r2'].values()):.6f}")
    return out


# --- report ------------------------------------------------------------------------------------


def fmt_r2(x: float) -> str:
    if x is None or not np.isfinite(x):
        return "-inf" if x is not None and x < 0 else "n/a"
    if 0.9999995 <= x < 1.0:
        return f"1-{1.0 - x:.0e}"
    return f"{x:.6f}" if x > -1e3 else f"{x:.2e}"


def report(results: dict, args, command: str) -> str:
    lines = ["# Transformer SR backend benchmark", ""]
    cfg = results["config"]
    lines += [
        f"`{command}`: seed {args.seed}; weights `{cfg['weights']}` "
        f"({cfg['weights_mb']:.1f} MB, {cfg['parameters']:,} parameters, trained by "
        f"`{cfg['weights_command']}`). CPU only, one torch thread, 2 shared cores: times are "
        f"indicative. gp runs pyoperon for {args.gp_time:g} s per coordinate.",
        "",
        "## Held-out generated expressions (200 points to fit, 200 to test)",
        "",
        "| generator | backend | n | exact structure | R² >= 0.99 | R² >= 0.999 | median R² "
        "| median size | s per expression | candidates/s | decoding only, candidates/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, res in results["generated"].items():
        for b, s in res["summary"].items():
            dec = f"{s['decode_per_s']:.0f}" if s["decode_per_s"] else "-"
            lines.append(
                f"| {kind} | {b} | {s['n']} | {s['structure']:.0%} | {s['r2_099']:.0%} | "
                f"{s['r2_0999']:.0%} | {fmt_r2(s['median_r2'])} | {s['median_size']:.0f} | "
                f"{s['seconds']:.2f} | {s['candidates_per_s']:.1f} | {dec} |"
            )
    lines += [
        "",
        "Exact structure: mechanics, same set of additive terms after expansion (coefficients "
        "ignored); general, the same expression with every number replaced by one symbol "
        "(strict: an equivalent form with other constants counts as a miss).",
        "",
        "## Tasks (200 training transitions, random actions)",
        "",
        "| task | backend | coordinate | held-out R² | extrap. R² | fit s | candidates/s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for task, res in results["tasks"].items():
        for b, r in res.items():
            first = True
            for coord, v in r["heldout"]["r2"].items():
                lines.append(
                    f"| {task if first else ''} | {b if first else ''} | {coord} | {fmt_r2(v)} | "
                    f"{fmt_r2(r['extrap']['r2'][coord])} | "
                    f"{r['heldout']['seconds']:.2f} | {r['candidates_per_s']:.1f} |"
                    if first
                    else f"|  |  | {coord} | {fmt_r2(v)} | {fmt_r2(r['extrap']['r2'][coord])} "
                    f"|  |  |"
                )
                first = False
    for task, why in results.get("skipped_tasks", {}).items():
        lines.append(f"| {task} | - | skipped: its data could not be made ({why}) | | | | |")
    if "pendulum" in results["tasks"]:
        lines += [
            "",
            "### Pendulum structure (target: theta' from theta_dot; theta_dot' from "
            "sin(theta) and torque)",
            "",
        ]
        for b, r in results["tasks"]["pendulum"].items():
            st = r.get("structure", {})
            lines.append(
                f"- **{b}**: {'RECOVERED' if st.get('all') else 'not recovered'} "
                f"({', '.join(k for k, v in st.items() if k != 'all' and v) or 'none'})"
            )
            for eq in r["equations"]:
                lines.append(f"  - `{eq}`")
    lines += ["", "## Examples (mechanics, held out)", ""]
    for ex in results["generated"].get("mechanics", {}).get("examples", [])[:5]:
        lines.append(f"- true `{ex['true']}`")
        for b in BACKENDS:
            if b in ex:
                lines.append(f"  - {b}: `{ex[b]}`")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer expressions, Pendulum only")
    parser.add_argument(
        "--n-expressions",
        type=int,
        default=None,
        help="held-out expressions per generator (default 60, quick 20)",
    )
    parser.add_argument("--gp-time", type=float, default=3.0)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument(
        "--tasks", default=None, help="default pendulum,reacher,car2d (quick: pendulum)"
    )
    parser.add_argument("--weights", default=None, help="transformer weights (default: shipped)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    backends = [b for b in args.backends.split(",") if b]
    n = args.n_expressions or (20 if args.quick else 60)
    tasks = (args.tasks or ("pendulum" if args.quick else "pendulum,reacher,car2d")).split(",")
    if args.weights:
        import sym_mbrl_ros.dynamics.transformer.backend as tb

        tb.DEFAULT_WEIGHTS = Path(args.weights).resolve()
    wpath = weights_path(None)
    model = load_model()
    wcfg = json.loads(config_path(wpath).read_text()) if config_path(wpath).exists() else {}
    command = "python bench/transformer_sr.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = {
        "config": {
            "seed": args.seed,
            "quick": args.quick,
            "n_expressions": n,
            "gp_time": args.gp_time,
            "backends": backends,
            "tasks": tasks,
            "weights": wpath.name,
            "weights_mb": wpath.stat().st_size / 1e6,
            "parameters": model.n_parameters(),
            "weights_command": wcfg.get("command", "?"),
            "weights_training": {k: wcfg.get(k) for k in ("steps", "samples", "seconds")},
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "machine": platform.platform(),
        },
        "generated": {},
        "tasks": {},
        "skipped_tasks": {},
    }
    log = lambda s: print(s, flush=True)  # noqa: E731
    for kind in ("mechanics", "general"):
        log(f"generated expressions: {kind}")
        results["generated"][kind] = bench_generated(
            kind, n, args.seed, args.gp_time, backends, log
        )
    for task in tasks:
        log(f"task {task}")
        try:
            results["tasks"][task] = bench_task(task, 200, args.seed, args.gp_time, backends, log)
        except (ValueError, KeyError) as exc:  # bench/dynamics.py and the tasks change together
            log(f"  {task}: skipped, its data could not be made ({exc!r})")
            results["skipped_tasks"][task] = repr(exc)
    text = report(results, args, command)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stem = "transformer_sr_quick" if args.quick else "transformer_sr"
    (RESULTS / f"{stem}.md").write_text(text)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
