"""Bridges: encoder features [B, N, D] -> LLM input embeddings [B, M, H], spliced in at the media placeholders.

`BRIDGES` maps `model.media.<kind>.bridge.name` to a class built as `cls(in_dim, out_dim)`: D comes from the encoder and H from
the LLM, so a projector needs no arguments. `mlp<N>x_gelu` builds an N-layer MLP for any N; as in LLaVA, the name
is the whole configuration.
"""
from __future__ import annotations

import re
from typing import Protocol

import torch

from mmtune.bridges.projector import LinearProjector, MLPProjector
from mmtune.config import ComponentConfig, check_choice
from mmtune.errors import ConfigError


class Bridge(Protocol):
    """What the multimodal model relies on; every registered bridge is an nn.Module with these."""

    def num_tokens(self, n_in: int) -> int:
        """M, the LLM tokens per media item for N encoder tokens (the row layout is planned before the forward)."""

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, M, H]."""


BRIDGES: dict[str, type] = {
    "linear": LinearProjector,
    "mlp2x_gelu": MLPProjector,
}
MLP_NAME = re.compile(r"mlp([1-9][0-9]*)x_gelu")


def check_bridge(cfg: ComponentConfig, key: str = "model.media.image.bridge") -> None:
    """A known name (or mlp<N>x_gelu) and no arguments; ConfigError names the bad `key.*` (the kind's bridge)."""
    if not MLP_NAME.fullmatch(cfg.name):
        check_choice(cfg.name, BRIDGES, f"{key}.name", extra="or mlp<N>x_gelu for any N")
    if cfg.args:
        raise ConfigError(f"{key}.args.{next(iter(cfg.args))}: unknown argument; {cfg.name} takes none "
                          "(its widths come from the encoder and the LLM)")


def build_bridge(cfg: ComponentConfig, in_dim: int, out_dim: int, key: str = "model.media.image.bridge") -> Bridge:
    """The bridge `cfg.name` from encoder width `in_dim` to LLM width `out_dim`; ConfigError names the bad key."""
    check_bridge(cfg, key)
    if mlp := MLP_NAME.fullmatch(cfg.name):
        return MLPProjector(in_dim, out_dim, depth=int(mlp[1]))
    return BRIDGES[cfg.name](in_dim, out_dim)
