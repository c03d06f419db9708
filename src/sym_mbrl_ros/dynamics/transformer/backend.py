"""The ``transformer`` search backend: a pretrained transformer writes candidate expressions.

For one coordinate, the backend takes the training inputs (the same state and action columns the
other backends use) and the coordinate's *increment* as the target, subsamples ``n_points``
rows, lets the transformer read them, and decodes ``beam_size`` token sequences by beam search
(Kamienny et al. 2022). Every decoded sequence is a complete expression of our grammar (the
decoder is constrained by it); its variables ``x0 ..`` are renamed to the coordinate names. The
caller refines the constants by BFGS and ranks the candidates like any other backend's. When no
candidate could be evaluated, later attempts *sample* sequences at a rising temperature instead,
so that a regeneration searches differently.

Weights are read with ``torch.load(weights_only=True)``; the shipped ones (trained by
``sym-mbrl train-sr --generator mechanics``) are used unless a file is given.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import UserError
from ..expression import BinOp, CompiledExpression, Node, Num, sum_terms, to_string
from ..library import linear_combination
from .model import ROLE_ABSENT, ROLE_ANGLE, ROLE_INPUT, SymbolicTransformer
from .tokenizer import TokenError

if TYPE_CHECKING:
    from ..selection import FitData
    from ..symbolic import SymbolicDynamics, SymbolicDynamicsConfig

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "sr_transformer_mechanics.pt"
FORMAT = "sym-mbrl/sr-transformer-v1"


@dataclass
class TransformerSettings:
    """The transformer backend's knobs (filled from the fit config)."""

    weights: str | None = None
    """Weights file; ``None`` means the shipped mechanics weights."""
    beam_size: int = 32
    """Candidates per coordinate from beam search (the first attempt)."""
    n_points: int = 200
    """Rows the transformer reads (a seeded random subset when there are more)."""
    samples: int = 32
    """Candidates sampled per regeneration attempt."""
    temperature: float = 1.0
    """Sampling temperature of the first regeneration; later ones add 0.25 each."""
    combine_terms: bool = True
    """Also offer sums of the additive terms the decoded expressions contain (see
    :func:`combined_candidates`)."""
    max_terms: int = 16
    """At most this many distinct terms are combined (the most frequent in the decoded set)."""


def weights_path(weights: str | Path | None) -> Path:
    """The weights file to use: ``weights`` or the shipped one."""
    return Path(weights) if weights else DEFAULT_WEIGHTS


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime: float) -> SymbolicTransformer:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(
            f"transformer weights {path} do not exist; train some with `sym-mbrl train-sr` "
            f"or reinstall the package to get the shipped ones"
        ) from None
    except Exception as exc:  # a truncated or foreign file: say which and why, no traceback
        raise UserError(f"cannot read transformer weights {path} ({exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a weights file of the SR transformer (format {FORMAT})")
    try:
        return SymbolicTransformer.from_checkpoint(ckpt)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise UserError(f"transformer weights {path} do not fit the model ({exc})") from None


def load_model(weights: str | Path | None = None) -> SymbolicTransformer:
    """The transformer from a weights file (cached per file and modification time)."""
    path = weights_path(weights)
    mtime = path.stat().st_mtime if path.exists() else 0.0
    return _load_cached(str(path), mtime)


def point_tensors(model: SymbolicTransformer, X: np.ndarray, y: np.ndarray, angle: Sequence[bool]):
    """The model's input tensors for one point set (inputs padded to the model's width)."""
    import torch

    n, d = X.shape
    width = model.tokenizer.max_inputs
    Xp = torch.zeros(1, n, width)
    Xp[0, :, :d] = torch.as_tensor(X, dtype=torch.float32)
    roles = torch.full((1, width), ROLE_ABSENT, dtype=torch.long)
    roles[0, :d] = torch.tensor([ROLE_ANGLE if a else ROLE_INPUT for a in angle])
    return Xp, torch.as_tensor(y, dtype=torch.float32)[None], roles


def decode_candidates(
    model: SymbolicTransformer,
    X: np.ndarray,
    y: np.ndarray,
    variables: Sequence[str],
    angle: Sequence[bool],
    mode: str = "beam",
    n: int = 16,
    temperature: float = 1.0,
    seed: int = 0,
) -> tuple[list[tuple[Node, float]], int]:
    """Distinct decoded trees over ``variables`` with their log-probabilities, and how many
    sequences could not be read back (0 unless the weights and tokenizer disagree)."""
    import torch

    Xp, yp, roles = point_tensors(model, X, y, angle)
    d = X.shape[1]
    if mode == "beam":
        seqs = model.beam_search(Xp, yp, roles, d, beam=n)
    else:
        gen = torch.Generator().manual_seed(int(seed) % (2**63))
        seqs = model.sample(Xp, yp, roles, d, n=n, temperature=temperature, generator=gen)
    out: list[tuple[Node, float]] = []
    seen: set[str] = set()
    bad = 0
    for ids, logp in seqs:
        try:
            tree = model.tokenizer.decode(model.tokenizer.words(ids), variables)
        except TokenError:
            bad += 1
            continue
        key = to_string(tree)
        if key not in seen:
            seen.add(key)
            out.append((tree, logp))
    return out, bad


def additive_terms(tree: Node) -> list[Node | None]:
    """The additive terms of an expression without their leading constant factor.

    ``0.05*theta_dot - 0.7*sin(theta) + 0.1`` gives ``[theta_dot, sin(theta), None]`` (``None``
    is the constant term, as in the sparse library).
    """
    out: list[Node | None] = []
    for _sign, term in sum_terms(tree):
        while isinstance(term, BinOp) and term.op == "*" and isinstance(term.left, Num):
            term = term.right
        while isinstance(term, BinOp) and term.op in ("*", "/") and isinstance(term.right, Num):
            term = term.left
        out.append(None if isinstance(term, Num) else term)
    return out


def combined_candidates(
    decoded: Sequence[Node], X: np.ndarray, y: np.ndarray, variables: Sequence[str], max_terms: int
) -> list[tuple[Node, int]]:
    """Sums of the terms the transformer wrote, pruned one term at a time.

    The decoded expressions often each hold some of the right terms. This pools their distinct
    additive terms (the most frequent first, at most ``max_terms``), fits their coefficients by
    least squares on ``(X, y)``, then removes, one at a time, the term whose removal raises the
    squared error least, and returns every sum along that path (``(tree, number of terms)``).
    Every term comes from the transformer; BFGS and ranking then judge them like the others.
    """
    counts: dict[str, int] = {}
    first: dict[str, Node | None] = {}
    for tree in decoded:
        for term in additive_terms(tree):
            key = "1" if term is None else to_string(term)
            counts[key] = counts.get(key, 0) + 1
            first.setdefault(key, term)
    keys = sorted(counts, key=lambda k: -counts[k])
    terms, cols = [], []
    for key in keys:
        term = first[key]
        col = np.ones(len(y)) if term is None else CompiledExpression(term, variables).numpy(X)
        if np.all(np.isfinite(col)) and np.std(col) + abs(float(np.mean(col))) > 0:
            terms.append(term)
            cols.append(col)
        if len(terms) >= max_terms:
            break
    if len(terms) < 2:
        return []
    A = np.stack(cols, axis=1)
    scale = np.sqrt(np.mean(A * A, axis=0))
    A = A / scale
    active = list(range(len(terms)))
    out: list[tuple[Node, int]] = []

    def fit(idx: list[int]) -> tuple[np.ndarray, float]:
        coef = np.linalg.lstsq(A[:, idx], y, rcond=None)[0]
        r = A[:, idx] @ coef - y
        return coef, float(r @ r)

    while active:
        coef, _ = fit(active)
        full = np.zeros(len(terms))
        full[active] = coef / scale[active]
        out.append((linear_combination(terms, full), len(active)))
        if len(active) == 1:
            break
        losses = [fit([j for j in active if j != k])[1] for k in active]
        active.remove(active[int(np.argmin(losses))])
    return out


def transformer_candidates(
    X: np.ndarray,
    y: np.ndarray,
    variables: Sequence[str],
    settings: TransformerSettings,
    seed: int,
    angle_inputs: Sequence[str] = (),
    attempt: int = 0,
) -> tuple[list[tuple[Node, str]], dict]:
    """Candidate increment expressions for one coordinate, plus facts for the report.

    ``X`` (n, d) holds the inputs named ``variables`` and ``y`` (n,) the increment; inputs named
    in ``angle_inputs`` are wrapped angles. ``attempt`` 0 decodes by beam search, later attempts
    sample (see the module docstring).
    """
    import torch

    t0 = time.perf_counter()
    model = load_model(settings.weights)
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    d = X.shape[1]
    if d > model.tokenizer.max_inputs:
        raise UserError(
            f"the transformer backend reads at most {model.tokenizer.max_inputs} inputs, but this "
            f"model has {d} (state and action coordinates); use the sparse or gp backend"
        )
    rng = np.random.default_rng(seed)
    if X.shape[0] > settings.n_points:
        rows = np.sort(rng.choice(X.shape[0], settings.n_points, replace=False))
        X, y = X[rows], y[rows]
    angle = [v in set(angle_inputs) for v in variables]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if attempt == 0:
            mode, n, temp = "beam", settings.beam_size, 1.0
        else:
            mode, n = "sample", settings.samples
            temp = settings.temperature + 0.25 * (attempt - 1)
        decoded, bad = decode_candidates(
            model, X, y, variables, angle, mode=mode, n=n, temperature=temp, seed=seed
        )
    finally:
        torch.set_num_threads(threads)
    what = f"beam {n}" if mode == "beam" else f"sampled at T={temp:g}"
    out = [
        (tree, f"transformer: {what}, #{k + 1} (log p {logp:.2f})")
        for k, (tree, logp) in enumerate(decoded)
    ]
    n_combined = 0
    if settings.combine_terms and decoded:
        combined = combined_candidates(
            [tree for tree, _ in decoded], X, y, variables, settings.max_terms
        )
        seen = {to_string(tree) for tree, _ in out}
        for tree, k in combined:
            if to_string(tree) not in seen:
                out.append((tree, f"transformer: {k} pooled terms of the {what} candidates"))
                n_combined += 1
    info = {
        "weights": weights_path(settings.weights).name,
        "decoding": what,
        "points_read": int(X.shape[0]),
        "decoded": len(decoded),
        "combined": n_combined,
        "unreadable": bad,
        "decode_seconds": round(time.perf_counter() - t0, 4),
    }
    return out, info


def settings_from(cfg: SymbolicDynamicsConfig) -> TransformerSettings:
    """The transformer backend's settings from the fit config (``tf_*`` fields)."""
    return TransformerSettings(weights=cfg.tf_weights, beam_size=cfg.tf_beam,
                               n_points=cfg.tf_points, combine_terms=cfg.tf_combine)


def generate(model: SymbolicDynamics, i: int, data: FitData, attempt: int
             ) -> tuple[list[tuple[Node, str]], dict[str, Any]]:
    """The backend (:mod:`..backends`): candidates for coordinate ``i`` decoded from the
    training rows."""
    poly, angles = model._inputs()
    cols = [model.variables.index(v) for v in poly + angles]
    names = [model.variables[c] for c in cols]
    seed = model.seed * 7919 + 101 * i + attempt
    return transformer_candidates(
        data.X_train[:, cols], data.y_train, names, settings_from(model.config), seed,
        angle_inputs=angles, attempt=attempt,
    )


def symbolic_dynamics(*args, backend: str = "transformer", **kwargs) -> SymbolicDynamics:
    """``SymbolicDynamics(*args, backend=backend, **kwargs)``, kept for callers of this module.

    ``tf_weights``, ``tf_beam``, ``tf_points`` and ``tf_combine`` (config fields) set the
    transformer's weights file, beam width, points read and whether decoded terms are pooled.
    """
    from ..symbolic import SymbolicDynamics  # at call time: symbolic loads backends lazily

    return SymbolicDynamics(*args, backend=backend, **kwargs)
