"""A SAC actor as bytes that travel inside the policy message (no ROS, no task, no files).

Two encodings, named with their version in the payload's ``encoding`` field:

* ``sym-mbrl/mlp-actor-v1``: the default MLP actor's deterministic path (the trunk's Linear
  layers, the mean head, the action scale and bias, the optional input selection) as a numpy
  ``.npz`` of float32 arrays, read with ``allow_pickle=False``. Only what the controller acts
  with travels: no critics, no log-std head, no optimiser state (Pendulum's 2x128 actor is
  ~70 kB, ~92 kB in base64). Decoding and acting need numpy alone, not torch: a robot computer
  can run the controller without it.
* ``sym-mbrl/torch-actor-v1``: any other actor architecture (ESPL's symbolic network): the
  actor's ``state_dict`` with the SAC config to rebuild it, written by ``torch.save`` and read
  with ``weights_only=True``. Needs torch where it is decoded.

A payload is ``{"encoding", "size" (bytes), "sha256" (of the bytes), "data" (base64)}``. Every
check fails with a :class:`PayloadError` whose ``reason`` says which: ``format`` (unknown
encoding, missing field), ``truncated`` (fewer or more bytes than ``size``, undecodable
base64 or archive), ``hash`` (the bytes are not the ones hashed), ``shape`` (layers that do
not chain, or do not fit the task).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import zipfile
from typing import Any

import numpy as np

from ..errors import UserError

MLP_ACTOR = "sym-mbrl/mlp-actor-v1"
TORCH_ACTOR = "sym-mbrl/torch-actor-v1"
ENCODINGS = (MLP_ACTOR, TORCH_ACTOR)


class PayloadError(UserError):
    """A policy payload that cannot be used; ``reason`` is format, truncated, hash or shape."""

    def __init__(self, reason: str, text: str):
        super().__init__(text)
        self.reason = reason


# ---------------------------------------------------------------------------- encoding
def encode_agent(agent) -> dict[str, Any]:
    """The payload of a :class:`~sym_mbrl_ros.agents.sac.SAC` agent's actor (mlp if it can)."""
    arrays = _mlp_arrays(agent)
    if arrays is not None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return pack(MLP_ACTOR, buf.getvalue())
    return pack(TORCH_ACTOR, _torch_bytes(agent))


def pack(encoding: str, raw: bytes) -> dict[str, Any]:
    """Wrap raw bytes as a payload: encoding, size, sha256, base64 data."""
    return {"encoding": encoding, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
            "data": base64.b64encode(raw).decode("ascii")}


def _mlp_arrays(agent) -> dict[str, np.ndarray] | None:
    from torch import nn

    from ..agents.sac import GaussianMLPActor, base_actor

    actor = base_actor(agent.actor)
    if type(actor) is not GaussianMLPActor:
        return None
    out: dict[str, np.ndarray] = {}
    layer = 0
    for m in actor.trunk:
        if isinstance(m, nn.Linear):
            out[f"w{layer}"] = m.weight.detach().float().numpy().T.copy()
            out[f"b{layer}"] = m.bias.detach().float().numpy().copy()
            layer += 1
        elif not isinstance(m, nn.ReLU):
            return None
    out["w_mean"] = actor.mean.weight.detach().float().numpy().T.copy()
    out["b_mean"] = actor.mean.bias.detach().float().numpy().copy()
    out["action_scale"] = agent.action_scale.detach().float().numpy().copy()
    out["action_bias"] = agent.action_bias.detach().float().numpy().copy()
    out["obs_dim"] = np.array(agent.obs_dim, dtype=np.int64)
    if agent.config.observation_indices is not None:
        out["observation_indices"] = np.asarray(agent.config.observation_indices, np.int64)
    return out


def _torch_bytes(agent) -> bytes:
    from dataclasses import asdict

    import torch

    buf = io.BytesIO()
    torch.save({"config": asdict(agent.config), "obs_dim": agent.obs_dim,
                "action_low": agent.action_low.tolist(),
                "action_high": agent.action_high.tolist(),
                "actor": agent.actor.state_dict()}, buf)
    return buf.getvalue()


# ---------------------------------------------------------------------------- decoding
def unpack(payload: Any) -> tuple[str, bytes]:
    """The encoding and the checked bytes of a payload (size, then sha256)."""
    if not isinstance(payload, dict):
        raise PayloadError("format", "weights policy needs a \"payload\" object (the weights "
                           "travel in the message; a path to a file is not accepted)")
    encoding = payload.get("encoding")
    if encoding not in ENCODINGS:
        raise PayloadError("format", f"unknown payload encoding {encoding!r}; this controller "
                           f"reads {', '.join(ENCODINGS)}")
    size, digest, data = payload.get("size"), payload.get("sha256"), payload.get("data")
    if not isinstance(size, int) or not isinstance(digest, str) or not isinstance(data, str):
        raise PayloadError("format", "payload needs \"size\" (int), \"sha256\" and \"data\" "
                           "(base64) fields")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError("truncated", "payload data is not complete base64 (cut short or "
                           "damaged in transit)") from None
    if len(raw) != size:
        raise PayloadError("truncated", f"payload holds {len(raw)} bytes, its header says "
                           f"{size}: it was cut short or padded")
    if hashlib.sha256(raw).hexdigest() != digest:
        raise PayloadError("hash", "payload bytes do not match their sha256: damaged or "
                           "changed after hashing")
    return encoding, raw


class MLPActor:
    """The deterministic action of an ``mlp-actor-v1`` payload, in numpy float64."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        try:
            n_layers = sum(1 for k in arrays if k.startswith("w") and k[1:].isdigit())
            self.layers = [(np.asarray(arrays[f"w{i}"], np.float64),
                            np.asarray(arrays[f"b{i}"], np.float64)) for i in range(n_layers)]
            self.w_mean = np.asarray(arrays["w_mean"], np.float64)
            self.b_mean = np.asarray(arrays["b_mean"], np.float64)
            self.scale = np.asarray(arrays["action_scale"], np.float64).reshape(-1)
            self.bias = np.asarray(arrays["action_bias"], np.float64).reshape(-1)
            self.obs_dim = int(arrays["obs_dim"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PayloadError("format", f"mlp actor payload lacks an array ({exc})") from None
        select = arrays.get("observation_indices")
        self.select = None if select is None else np.asarray(select, np.int64).reshape(-1)
        self._check()

    def _check(self) -> None:
        width = self.obs_dim if self.select is None else len(self.select)
        if self.select is not None and (self.select.size == 0 or self.select.min() < 0
                                        or self.select.max() >= self.obs_dim):
            raise PayloadError("shape", f"observation_indices {self.select.tolist()} do not fit "
                               f"an observation of {self.obs_dim}")
        for i, (w, b) in enumerate([*self.layers, (self.w_mean, self.b_mean)]):
            if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
                raise PayloadError("shape", f"layer {i} has weights {w.shape} and bias {b.shape} "
                                   f"after {width} inputs: the layers do not chain")
            if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
                raise PayloadError("shape", f"layer {i} holds NaN or inf")
            width = w.shape[1]
        if self.scale.shape != (width,) or self.bias.shape != (width,):
            raise PayloadError("shape", f"action scale/bias have {self.scale.shape}/"
                               f"{self.bias.shape}, the actor has {width} outputs")

    @property
    def action_dim(self) -> int:
        return int(self.b_mean.shape[0])

    def predict(self, obs, deterministic: bool = True) -> np.ndarray:
        """Action(s) for observation(s) (..., obs_dim)."""
        h = np.asarray(obs, dtype=np.float64)
        if self.select is not None:
            h = h[..., self.select]
        for w, b in self.layers:
            h = np.maximum(h @ w + b, 0.0)
        return np.tanh(h @ self.w_mean + self.b_mean) * self.scale + self.bias


class TorchActor:
    """A ``torch-actor-v1`` payload rebuilt as a SAC agent (critics untrained, unused)."""

    def __init__(self, raw: bytes):
        import torch

        from ..agents.sac import SAC, SACConfig

        try:
            d = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
            config = SACConfig.from_dict({**d["config"], "num_threads": 1})
            if config.policy == "espl":
                from ..agents.espl import register_espl

                register_espl()
            self.agent = SAC(d["obs_dim"], d["action_low"], d["action_high"], config)
            self.agent.actor.load_state_dict(d["actor"])
        except (RuntimeError, KeyError, TypeError, ValueError, EOFError, zipfile.BadZipFile,
                UserError) as exc:
            raise PayloadError("shape", f"torch actor payload does not rebuild an actor "
                               f"({type(exc).__name__}: {exc})") from None
        self.obs_dim = self.agent.obs_dim
        self.action_dim = self.agent.action_dim

    def predict(self, obs, deterministic: bool = True) -> np.ndarray:
        return self.agent.predict(obs, deterministic=True)


def decode(payload: Any) -> MLPActor | TorchActor:
    """The actor a payload carries, checked (see the module docstring for the failures)."""
    encoding, raw = unpack(payload)
    if encoding == TORCH_ACTOR:
        return TorchActor(raw)
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise PayloadError("truncated", f"mlp actor payload is not a readable array archive "
                           f"({exc})") from None
    return MLPActor(arrays)
