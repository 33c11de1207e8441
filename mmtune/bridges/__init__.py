"""Bridges: encoder features [B, N, D] -> LLM input embeddings [B, M, H], spliced in at the media placeholders.

`BRIDGES` maps `model.media.<kind>.bridge.name` to a class built as `cls(in_dim, out_dim, args)`: D comes from the
encoder, H from the LLM, and `args` is the class's typed `Args` dataclass read from `model.media.<kind>.bridge.args`
(unknown or mistyped keys are named before anything is built). `mlp<N>x_gelu` builds an N-layer MLP for any N; as
in LLaVA, the name is the whole configuration.

A bridge may read a per-item context besides the features: `context = "instruction"` asks for the text of the user
turn the item's placeholder sits in (InstructBLIP's Q-Former reads it with its queries). The bridge's
`context_encoder()` turns that text into fixed-length arrays in the DataLoader workers; batches carry them as
`media_context[kind]`, and the model passes them as `bridge(features, context)`.

`resampler` (a perceiver resampler, Flamingo's) maps any number of encoder tokens to a fixed number of latents, with
a time embedding per frame for videos.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Protocol

import numpy as np
import torch

from mmtune.bridges.projector import LinearProjector, MLPProjector
from mmtune.bridges.resampler import PerceiverResampler
from mmtune.bridges.qformer import QFormer
from mmtune.config import ComponentConfig, check_choice, from_dict
from mmtune.errors import ConfigError


class Bridge(Protocol):
    """What the multimodal model relies on; every registered bridge is an nn.Module with these."""

    Args: type
    """Typed arguments (a dataclass) read from model.media.<kind>.bridge.args."""
    context: str | None
    """None, or "instruction": the bridge also reads the instruction its item comes with."""
    uses_frames: bool
    """Optional: built with `frames=`, the encoder's time steps (the resampler's time embeddings)."""

    def num_tokens(self, n_in: int) -> int:
        """M, the LLM tokens per media item for N encoder tokens (the row layout is planned before the forward)."""

    def context_encoder(self) -> Callable[[str], dict[str, np.ndarray]]:
        """Only when `context` is set: a picklable text -> {name: fixed-length array} run in DataLoader workers."""

    def __call__(self, features: torch.Tensor, context: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """[B, N, D] (and, for a context bridge, its context arrays stacked [B, ...], or None) -> [B, M, H]."""


BRIDGES: dict[str, type] = {
    "linear": LinearProjector,
    "mlp2x_gelu": MLPProjector,
    "resampler": PerceiverResampler,
    "qformer": QFormer,
}
MLP_NAME = re.compile(r"mlp([1-9][0-9]*)x_gelu")


def bridge_class(cfg: ComponentConfig, key: str = "model.media.image.bridge") -> type:
    if MLP_NAME.fullmatch(cfg.name):
        return MLPProjector
    check_choice(cfg.name, BRIDGES, f"{key}.name", extra="or mlp<N>x_gelu for any N")
    return BRIDGES[cfg.name]


def bridge_args(cfg: ComponentConfig, key: str = "model.media.image.bridge"):
    """`cfg.args` as the bridge's typed Args; ConfigError names the bad `key.args.*`."""
    cls = bridge_class(cfg, key)
    if cfg.args and not dataclasses.fields(cls.Args):
        raise ConfigError(f"{key}.args.{next(iter(cfg.args))}: unknown argument; {cfg.name} takes none "
                          "(its widths come from the encoder and the LLM)")
    return from_dict(cls.Args, cfg.args, where=f"bridge {cfg.name!r}", prefix=f"{key}.args.")


def check_bridge(cfg: ComponentConfig, key: str = "model.media.image.bridge") -> None:
    """A known name (or mlp<N>x_gelu) with valid arguments; ConfigError names the bad `key.*` (the kind's bridge)."""
    bridge_args(cfg, key)


def build_bridge(cfg: ComponentConfig, in_dim: int, out_dim: int, key: str = "model.media.image.bridge",
                 frames: int = 1) -> Bridge:
    """The bridge `cfg.name` from encoder width `in_dim` to LLM width `out_dim`; ConfigError names the bad key.
    A bridge class with `uses_frames` also gets the encoder's time steps (`frames`: its tokens are that many
    frames' tokens, one after the other; 1 for images)."""
    args = bridge_args(cfg, key)
    if mlp := MLP_NAME.fullmatch(cfg.name):
        return MLPProjector(in_dim, out_dim, args, depth=int(mlp[1]))
    cls = BRIDGES[cfg.name]
    if getattr(cls, "uses_frames", False):
        return cls(in_dim, out_dim, args, frames=frames)
    return cls(in_dim, out_dim, args)
