"""Training loop of the symbolic-regression transformer (``sym-mbrl train-sr``).

Batches are generated on the fly (:mod:`.generators`), the loss is the cross-entropy of the
next token under teacher forcing, and the run is bounded by wall-clock time: the learning rate
warms up, then follows a cosine over the time budget. Every ``eval_seconds`` the model is scored
on a fixed validation set drawn with another seed; the best weights so far are written to
``out`` (atomically), so a run that is stopped early still leaves usable weights, and a JSON file
``<out>.json`` beside them records the configuration, the command and the progress.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .generators import GENERATORS, Sample, make_generator
from .model import ROLE_ABSENT, ROLE_ANGLE, ROLE_INPUT, ModelConfig, SymbolicTransformer
from .tokenizer import Tokenizer


@dataclass
class TrainConfig:
    """Settings of one training run."""

    generator: str = "mechanics"
    """Which data generator: ``general`` or ``mechanics``."""
    hours: float = 0.5
    """Wall-clock budget of the run."""
    seed: int = 0
    """Seed of the data stream and of the initial weights."""
    max_steps: int = 0
    """Stop after this many steps even if time is left (0: only the time budget counts)."""
    batch_size: int = 32
    """Expressions per optimisation step."""
    min_points: int = 50
    max_points: int = 150
    """Points per expression, drawn per batch in this range."""
    lr: float = 5e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.01
    warmup_steps: int = 300
    """Linear warm-up of the learning rate."""
    final_lr_fraction: float = 0.05
    """The cosine ends at this fraction of the peak rate."""
    grad_clip: float = 1.0
    eval_seconds: float = 180.0
    """How often the validation loss is measured and the best weights saved."""
    n_validation: int = 256
    """Validation expressions (a fixed set, seeded by ``seed + 1``)."""
    threads: int = 1
    """torch threads (the machine is shared; one is the polite choice)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: dict = field(default_factory=lambda: Tokenizer().to_dict())


def collate(samples: list[Sample], tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
    """Pad a list of samples into the model's input tensors and the token targets."""
    b = len(samples)
    n = samples[0].X.shape[0]
    d_max = tokenizer.max_inputs
    X = np.zeros((b, n, d_max), dtype=np.float32)
    y = np.zeros((b, n), dtype=np.float32)
    roles = np.full((b, d_max), ROLE_ABSENT, dtype=np.int64)
    seqs = [tokenizer.ids(s.tokens) for s in samples]
    t = max(len(s) for s in seqs) + 1
    tok_in = np.full((b, t), tokenizer.pad_id, dtype=np.int64)
    tok_out = np.full((b, t), tokenizer.pad_id, dtype=np.int64)
    for i, (s, ids) in enumerate(zip(samples, seqs)):
        d = s.X.shape[1]
        X[i, :, :d] = s.X
        y[i] = s.y
        roles[i, :d] = np.where(s.angle, ROLE_ANGLE, ROLE_INPUT)
        tok_in[i, : len(ids) + 1] = [tokenizer.bos_id] + ids
        tok_out[i, : len(ids) + 1] = ids + [tokenizer.eos_id]
    return {
        "X": torch.from_numpy(X),
        "y": torch.from_numpy(y),
        "roles": torch.from_numpy(roles),
        "tok_in": torch.from_numpy(tok_in),
        "tok_out": torch.from_numpy(tok_out),
    }


def make_batch(gen, rng: np.random.Generator, size: int, n_points: int, tokenizer: Tokenizer):
    return collate([gen.sample(rng, n_points) for _ in range(size)], tokenizer)


def batch_loss(model: SymbolicTransformer, batch: dict) -> tuple[torch.Tensor, dict]:
    """Mean token cross-entropy, token accuracy and whole-sequence accuracy of a batch."""
    logits = model(batch["X"], batch["y"], batch["roles"], batch["tok_in"])
    target = batch["tok_out"]
    pad = model.tokenizer.pad_id
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=pad)
    with torch.no_grad():
        mask = target != pad
        right = (logits.argmax(-1) == target) | ~mask
        stats = {
            "token_acc": float(right[mask].float().mean()) if mask.any() else 0.0,
            "seq_acc": float(right.all(dim=1).float().mean()),
        }
    return loss, stats


def train(config: TrainConfig, out: str | Path, command: str = "", log=print) -> dict:
    """Run one training; returns the summary also written to ``<out>.json``."""
    if config.generator not in GENERATORS:
        raise ValueError(f"unknown generator {config.generator!r}")
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(**config.tokenizer)
    model = SymbolicTransformer(config.model, tokenizer)
    gen = make_generator(config.generator, tokenizer, max_tokens=config.model.max_len - 1)
    rng = np.random.default_rng(config.seed)
    val_rng = np.random.default_rng(config.seed + 1)
    val_batches = []
    for k in range(0, config.n_validation, 64):
        size = min(64, config.n_validation - k)
        val_batches.append(make_batch(gen, val_rng, size, 100, tokenizer))
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    budget = config.hours * 3600.0
    t0 = time.perf_counter()
    last_eval = t0
    step = 0
    best = math.inf
    history: list[dict] = []
    summary: dict = {}
    running = []

    def lr_at(step: int, frac: float) -> float:
        warm = min(1.0, (step + 1) / config.warmup_steps)
        lo = config.final_lr_fraction
        return config.lr * warm * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))

    def evaluate() -> dict:
        model.eval()
        losses, tok, seq = [], [], []
        with torch.no_grad():
            for vb in val_batches:
                loss, stats = batch_loss(model, vb)
                losses.append(float(loss))
                tok.append(stats["token_acc"])
                seq.append(stats["seq_acc"])
        model.train()
        return {
            "val_loss": float(np.mean(losses)),
            "val_token_acc": float(np.mean(tok)),
            "val_seq_acc": float(np.mean(seq)),
        }

    def write_summary(final: bool) -> None:
        summary.update(
            {
                "command": command,
                "train_config": asdict(config),
                "generator": config.generator,
                "parameters": model.n_parameters(),
                "steps": step,
                "samples": step * config.batch_size,
                "seconds": round(time.perf_counter() - t0, 1),
                "best_val_loss": best,
                "history": history,
                "finished": final,
                "torch": torch.__version__,
                "python": sys.version.split()[0],
                "machine": platform.platform(),
            }
        )
        tmp = out.with_name(out.name + ".json.tmp")
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        tmp.replace(config_path(out))

    model.train()
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= budget or (config.max_steps and step >= config.max_steps):
            break
        n_points = int(rng.integers(config.min_points, config.max_points + 1))
        batch = make_batch(gen, rng, config.batch_size, n_points, tokenizer)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, elapsed / budget)
        loss, stats = batch_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        step += 1
        running.append((float(loss.detach()), stats["token_acc"]))
        now = time.perf_counter()
        if now - last_eval >= config.eval_seconds or now - t0 >= budget:
            last_eval = now
            ev = evaluate()
            tr = np.mean(running, axis=0)
            running = []
            rec = {
                "step": step,
                "seconds": round(now - t0, 1),
                "train_loss": float(tr[0]),
                "train_token_acc": float(tr[1]),
                **ev,
            }
            history.append(rec)
            improved = ev["val_loss"] < best
            if improved:
                best = ev["val_loss"]
                tmp = out.with_name(out.name + ".tmp")
                torch.save(model.checkpoint({"step": step, **ev}), tmp)
                tmp.replace(out)
            write_summary(final=False)
            log(
                f"step {step:6d}  {rec['seconds']:7.0f} s  train loss {tr[0]:.3f}  "
                f"val loss {ev['val_loss']:.3f}  token acc {ev['val_token_acc']:.3f}  "
                f"seq acc {ev['val_seq_acc']:.3f}" + ("  saved" if improved else "")
            )
    if not history or history[-1]["step"] != step:
        ev = evaluate()
        history.append({"step": step, "seconds": round(time.perf_counter() - t0, 1), **ev})
        if ev["val_loss"] < best:
            best = ev["val_loss"]
            torch.save(model.checkpoint({"step": step, **ev}), out)
    write_summary(final=True)
    return summary


def config_path(weights: str | Path) -> Path:
    """The JSON file written beside a weights file: ``weights.pt`` -> ``weights.json``."""
    weights = Path(weights)
    return weights.with_suffix(".json")
