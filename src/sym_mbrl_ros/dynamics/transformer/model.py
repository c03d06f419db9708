"""The transformer: an encoder over a set of (x, y) points and a decoder writing prefix tokens.

Sized for training and inference on a CPU thread:

* **point embedding.** Every value ``v`` of a point (the D inputs and the target y) is
  described by its sign, decimal exponent (an embedding, as the paper's exponent token), its
  mantissa, ``asinh(v)`` and ``v`` divided by the RMS of its column over the point set. An
  embedding of the slot's role (absent input, input, angle input, target) is added, the slots of
  a point are concatenated and an MLP maps them to one vector per point;
* **encoder.** A small set of learned latent vectors reads the points by cross-attention and
  refines itself by self-attention, twice (Perceiver-style; the cost is linear in the number of
  points and the result does not depend on their order);
* **decoder.** A causal transformer decoder over the token prefix that cross-attends to the
  latents, with a key/value cache so that beam search costs one token per step.

Decoding (:meth:`SymbolicTransformer.beam_search`, :meth:`SymbolicTransformer.sample`) is
constrained by the prefix grammar, so every returned sequence is one complete expression.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .tokenizer import BINARY, UNARY, Tokenizer

MIN_EXP, MAX_EXP = -9, 6
ROLE_ABSENT, ROLE_INPUT, ROLE_ANGLE, ROLE_TARGET = range(4)


@dataclass
class ModelConfig:
    """Architecture of :class:`SymbolicTransformer` (stored beside the weights)."""

    d_model: int = 128
    """Width of the encoder latents and of the decoder."""
    n_heads: int = 4
    """Attention heads."""
    value_dim: int = 24
    """Embedding width of one value of a point."""
    point_hidden: int = 256
    """Hidden width of the per-point MLP."""
    n_latents: int = 32
    """Learned latent vectors that summarise the point set."""
    encoder_rounds: int = 2
    """Rounds of (cross-attention to the points, ``encoder_self_layers`` self-attention)."""
    encoder_self_layers: int = 1
    decoder_layers: int = 3
    max_len: int = 64
    """Longest token sequence, end token included."""
    dropout: float = 0.0


def value_features(v: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-value numeric features (..., 5) and exponent indices (...) of points ``v`` (B, N, S).

    ``present`` (B, S) marks the slots in use. The RMS used for the relative value is taken over
    the points of each sample and slot.
    """
    a = v.abs()
    nonzero = a > 0
    expo = torch.floor(torch.log10(torch.where(nonzero, a, torch.ones_like(a))))
    expo = expo.clamp(MIN_EXP, MAX_EXP)
    mant = torch.where(nonzero, a / torch.pow(10.0, expo), torch.zeros_like(a))
    rms = torch.sqrt((v * v).mean(dim=1, keepdim=True)).clamp_min(1e-30)
    feats = torch.stack(
        [
            torch.sign(v),
            (mant.clamp(0, 10) - 5.5) / 4.5,
            torch.asinh(v) / 3.0,
            (v / rms).clamp(-10, 10) / 2.0,
            expo / 5.0,
        ],
        dim=-1,
    )
    feats = feats * present[:, None, :, None]
    index = torch.where(nonzero, expo - MIN_EXP + 1, torch.zeros_like(expo)).long()
    index = index * present[:, None, :].long()
    return feats, index


class Attention(nn.Module):
    """Multi-head attention with an optional key/value cache for incremental decoding."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def forward(self, x, kv=None, causal=False, mask=None):
        q = self.split(self.q(x))
        k, v = kv if kv is not None else self.keys_values(x)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        b, h, n, dh = y.shape
        return self.out(y.transpose(1, 2).reshape(b, n, h * dh))


def _ffn(d: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * d, d))


class SelfBlock(nn.Module):
    """Pre-norm self-attention + feed-forward."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.ffn = _ffn(d, dropout)

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        return x + self.ffn(self.n2(x))


class CrossBlock(nn.Module):
    """Pre-norm cross-attention (queries ``x``, keys/values ``ctx``) + feed-forward."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.nq, self.nc, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.ffn = _ffn(d, dropout)

    def forward(self, x, ctx):
        x = x + self.attn(self.nq(x), kv=self.attn.keys_values(self.nc(ctx)))
        return x + self.ffn(self.n2(x))


class DecoderLayer(nn.Module):
    """Causal self-attention (cached), cross-attention to the latents, feed-forward."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.n1, self.n2, self.n3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = Attention(d, heads)
        self.cross = Attention(d, heads)
        self.ffn = _ffn(d, dropout)

    def forward(self, x, memory_kv, cache=None):
        h = self.n1(x)
        if cache is None:
            x = x + self.self_attn(h, causal=True)
        else:
            k, v = self.self_attn.keys_values(h)
            if cache:
                k = torch.cat([cache[0], k], dim=2)
                v = torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
            x = x + self.self_attn(h, kv=(k, v))
        x = x + self.cross(self.n2(x), kv=memory_kv)
        return x + self.ffn(self.n3(x))


class SymbolicTransformer(nn.Module):
    """Point set in, prefix tokens out (see the module docstring)."""

    def __init__(self, config: ModelConfig, tokenizer: Tokenizer):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        c = config
        slots = tokenizer.max_inputs + 1
        self.slots = slots
        self.value_proj = nn.Linear(5, c.value_dim)
        self.exp_embed = nn.Embedding(MAX_EXP - MIN_EXP + 2, c.value_dim)
        self.role_embed = nn.Embedding(4, c.value_dim)
        self.slot_embed = nn.Parameter(torch.randn(slots, c.value_dim) * 0.02)
        self.point_mlp = nn.Sequential(
            nn.Linear(slots * c.value_dim, c.point_hidden),
            nn.GELU(),
            nn.Linear(c.point_hidden, c.point_hidden),
            nn.GELU(),
            nn.Linear(c.point_hidden, c.d_model),
        )
        self.latents = nn.Parameter(torch.randn(c.n_latents, c.d_model) * 0.02)
        self.rounds = nn.ModuleList()
        for _ in range(c.encoder_rounds):
            layers = [CrossBlock(c.d_model, c.n_heads, c.dropout)]
            layers += [
                SelfBlock(c.d_model, c.n_heads, c.dropout) for _ in range(c.encoder_self_layers)
            ]
            self.rounds.append(nn.ModuleList(layers))
        self.enc_norm = nn.LayerNorm(c.d_model)
        self.tok_embed = nn.Embedding(tokenizer.size, c.d_model)
        self.pos_embed = nn.Parameter(torch.randn(c.max_len + 1, c.d_model) * 0.02)
        self.layers = nn.ModuleList(
            [DecoderLayer(c.d_model, c.n_heads, c.dropout) for _ in range(c.decoder_layers)]
        )
        self.dec_norm = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, tokenizer.size)
        self._grammar = _GrammarTables(tokenizer)

    # --- encoder -------------------------------------------------------------------------------

    def encode(self, X: torch.Tensor, y: torch.Tensor, roles: torch.Tensor) -> torch.Tensor:
        """Latents (B, L, d) of points ``X`` (B, N, S-1), ``y`` (B, N) and input roles (B, S-1).

        ``roles`` holds ROLE_ABSENT / ROLE_INPUT / ROLE_ANGLE per input slot.
        """
        b = X.shape[0]
        v = torch.cat([X, y[..., None]], dim=-1)
        roles = torch.cat([roles, torch.full_like(roles[:, :1], ROLE_TARGET)], dim=1)
        present = (roles != ROLE_ABSENT).to(v.dtype)
        v = v * present[:, None, :]
        feats, expo = value_features(v, present)
        e = self.value_proj(feats) + self.exp_embed(expo)
        e = e + (self.role_embed(roles) + self.slot_embed)[:, None]
        h = self.point_mlp(e.flatten(2))
        z = self.latents.expand(b, -1, -1)
        for layers in self.rounds:
            z = layers[0](z, h)
            for layer in layers[1:]:
                z = layer(z)
        return self.enc_norm(z)

    # --- decoder -------------------------------------------------------------------------------

    def memory_kv(self, z: torch.Tensor) -> list:
        return [layer.cross.keys_values(z) for layer in self.layers]

    def decode_logits(self, tokens: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) for every prefix of ``tokens`` (B, T) (teacher forcing)."""
        x = self.tok_embed(tokens) + self.pos_embed[: tokens.shape[1]]
        for layer, kv in zip(self.layers, self.memory_kv(z)):
            x = layer(x, kv)
        return self.head(self.dec_norm(x))

    def forward(self, X, y, roles, tokens):
        """Logits for teacher-forced training: ``tokens`` starts with the start token."""
        return self.decode_logits(tokens, self.encode(X, y, roles))

    def _step(self, last: torch.Tensor, pos: int, mem: list, caches: list) -> torch.Tensor:
        x = self.tok_embed(last)[:, None] + self.pos_embed[pos]
        for layer, kv, cache in zip(self.layers, mem, caches):
            x = layer(x, kv, cache)
        return F.log_softmax(self.head(self.dec_norm(x[:, 0])).float(), dim=-1)

    @torch.no_grad()
    def beam_search(
        self, X, y, roles, n_inputs: int, beam: int = 16, max_len: int | None = None
    ) -> list[tuple[list[int], float]]:
        """Up to ``beam`` complete token sequences for one point set, best log-probability first.

        ``X`` (1, N, S-1), ``y`` (1, N), ``roles`` (1, S-1); ``n_inputs`` is how many variables
        the expression may use.
        """
        max_len = min(max_len or self.config.max_len, self.config.max_len)
        z = self.encode(X, y, roles)
        g = self._grammar
        mem = self.memory_kv(z)
        caches: list = [[] for _ in self.layers]
        seqs = torch.full((1, 1), self.tokenizer.bos_id, dtype=torch.long)
        scores = torch.zeros(1)
        state = g.initial(1)
        done: list[tuple[list[int], float]] = []
        for t in range(max_len):
            logp = self._step(seqs[:, -1], t, mem, caches)
            logp = g.greedy_constants(logp + g.mask(state, t, max_len, n_inputs), state)
            total = (scores[:, None] + logp).flatten()
            k = min(beam, int(torch.isfinite(total).sum()))
            if k == 0:
                break
            top, idx = total.topk(k)
            src, tok = idx // logp.shape[1], idx % logp.shape[1]
            keep = []
            for j in range(k):
                if int(tok[j]) == self.tokenizer.eos_id:
                    done.append((seqs[src[j], 1:].tolist(), float(top[j])))
                else:
                    keep.append(j)
            if len(done) >= beam or not keep:
                break
            keep_t = torch.tensor(keep)
            src, tok, scores = src[keep_t], tok[keep_t], top[keep_t]
            seqs = torch.cat([seqs[src], tok[:, None]], dim=1)
            state = g.advance({k2: v[src] for k2, v in state.items()}, tok)
            for cache in caches:
                cache[:] = [c[src] for c in cache]
            mem = [
                (k_[:1].expand(len(keep), -1, -1, -1), v_[:1].expand(len(keep), -1, -1, -1))
                for k_, v_ in mem
            ]
        done.sort(key=lambda s: -s[1])
        return done[:beam]

    @torch.no_grad()
    def sample(
        self,
        X,
        y,
        roles,
        n_inputs: int,
        n: int = 16,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        max_len: int | None = None,
    ) -> list[tuple[list[int], float]]:
        """``n`` sequences sampled at ``temperature`` for one point set, with log-probabilities."""
        max_len = min(max_len or self.config.max_len, self.config.max_len)
        z = self.encode(X, y, roles).expand(n, -1, -1)
        g = self._grammar
        mem = self.memory_kv(z)
        caches: list = [[] for _ in self.layers]
        last = torch.full((n,), self.tokenizer.bos_id, dtype=torch.long)
        state = g.initial(n)
        seqs: list[list[int]] = [[] for _ in range(n)]
        scores = torch.zeros(n)
        finished = torch.zeros(n, dtype=torch.bool)
        for t in range(max_len):
            logp = self._step(last, t, mem, caches) + g.mask(state, t, max_len, n_inputs)
            probs = torch.softmax(logp / temperature, dim=-1)
            tok = torch.multinomial(probs, 1, generator=generator)[:, 0]
            scores = scores + torch.where(finished, 0.0, logp.gather(1, tok[:, None])[:, 0])
            for i in range(n):
                if not finished[i] and int(tok[i]) != self.tokenizer.eos_id:
                    seqs[i].append(int(tok[i]))
            finished |= tok == self.tokenizer.eos_id
            if bool(finished.all()):
                break
            state = g.advance(state, tok)
            last = tok
        return [(s, float(sc)) for s, sc, f in zip(seqs, scores, finished) if f]

    # --- persistence ---------------------------------------------------------------------------

    def checkpoint(self, extra: dict | None = None) -> dict:
        """A dict of tensors and plain values that ``torch.load(weights_only=True)`` reads."""
        return {
            "format": "sym-mbrl/sr-transformer-v1",
            "model_config": asdict(self.config),
            "tokenizer": self.tokenizer.to_dict(),
            "state_dict": {k: v.detach().clone() for k, v in self.state_dict().items()},
            "extra": dict(extra or {}),
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> SymbolicTransformer:
        """Rebuild a model from :meth:`checkpoint`'s dict."""
        model = cls(ModelConfig(**ckpt["model_config"]), Tokenizer(**ckpt["tokenizer"]))
        model.load_state_dict(ckpt["state_dict"])
        model.eval()
        return model

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class _GrammarTables:
    """Which tokens may follow a prefix, so that decoding only writes complete expressions.

    State per sequence: ``open`` (sub-expressions still to write) and ``const`` (0 outside a
    constant, 1 after its sign, 2 after its mantissa).
    """

    def __init__(self, tok: Tokenizer):
        v = tok.size
        words = tok.vocab

        def ids(pred) -> torch.Tensor:
            m = torch.zeros(v, dtype=torch.bool)
            for k, w in enumerate(words):
                m[k] = pred(w)
            return m

        self.binary = ids(lambda w: w in BINARY)
        self.unary = ids(lambda w: w in UNARY)
        self.sign = ids(lambda w: w in ("+", "-"))
        self.mantissa = ids(lambda w: w.startswith("M"))
        self.exponent = ids(lambda w: w.startswith("E"))
        self.var_index = torch.tensor(
            [int(w[1:]) if w.startswith("x") and w[1:].isdigit() else -1 for w in words]
        )
        self.eos = tok.eos_id
        self.delta_open = torch.tensor(
            [
                1 if w in BINARY else -1 if (w in ("+", "-") or w.startswith("x")) else 0
                for w in words
            ]
        )
        self.const_next = torch.zeros(v, dtype=torch.long)
        self.const_next[self.sign] = 1
        self.const_next[self.mantissa] = 2

    def initial(self, n: int) -> dict:
        return {"open": torch.ones(n, dtype=torch.long), "const": torch.zeros(n, dtype=torch.long)}

    def mask(self, state: dict, t: int, max_len: int, n_inputs: int) -> torch.Tensor:
        """Additive mask (n, V): 0 where a token is allowed, -inf where not."""
        open_, const = state["open"], state["const"]
        n = open_.shape[0]
        variables = (self.var_index >= 0) & (self.var_index < n_inputs)
        # tokens still needed after this one, at the least: one per open slot (a variable),
        # plus the end token
        left = max_len - t
        allow_bin = (open_ + 2 <= left - 1)[:, None] & self.binary
        allow_un = (open_ + 1 <= left - 1)[:, None] & self.unary
        allow_const = (open_ + 2 <= left - 1)[:, None] & self.sign
        expr = allow_bin | allow_un | allow_const | variables[None].expand(n, -1)
        allowed = torch.where((const == 0)[:, None] & (open_ > 0)[:, None], expr, False)
        allowed = allowed | ((const == 1)[:, None] & self.mantissa)
        allowed = allowed | ((const == 2)[:, None] & self.exponent)
        eos = torch.zeros_like(allowed)
        eos[:, self.eos] = True
        allowed = allowed | ((const == 0) & (open_ == 0))[:, None] & eos
        out = torch.zeros(allowed.shape)
        out[~allowed] = -math.inf
        return out

    def greedy_constants(self, logp: torch.Tensor, state: dict) -> torch.Tensor:
        """Keep only the most likely sign, mantissa and exponent of a constant.

        Beam search then branches on structure only: BFGS refines the constants anyway, and
        beams that differ in a constant's digits would crowd out other expressions.
        """
        logp = logp.clone()
        in_const = state["const"] > 0
        if in_const.any():
            rows = logp[in_const]
            best = rows.argmax(dim=1, keepdim=True)
            kept = rows.gather(1, best)
            rows.fill_(-math.inf)
            rows.scatter_(1, best, kept)
            logp[in_const] = rows
        signs = self.sign.nonzero()[:, 0]
        worse = logp[:, signs].argmin(dim=1)
        logp[torch.arange(logp.shape[0]), signs[worse]] = -math.inf
        return logp

    def advance(self, state: dict, tok: torch.Tensor) -> dict:
        return {
            "open": state["open"] + self.delta_open[tok],
            "const": self.const_next[tok],
        }
