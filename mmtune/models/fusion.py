"""Fusions: how media features reach the LLM (`model.fusion`).

`FUSIONS` maps `model.fusion.name` to a class built as `cls(args, llm, kinds)`: `args` is the class's typed `Args`
(from `model.fusion.args`, checked when the recipe loads), `llm` the (tuned) Hugging Face model, `kinds` the media
kinds the model takes. A fusion decides how many row positions one media item occupies (`item_tokens`, known before
the forward pass, so rows are planned and packed as usual) and, called with the token embeddings, the row ids and
each kind's bridge features, returns the embeddings the LLM reads.

`splice` (LLaVA) writes an item's M bridge tokens over the M sentinel positions of its placeholder.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from mmtune.config import ComponentConfig, check_choice, from_dict
from mmtune.data.templates import MEDIA_TOKEN_IDS
from mmtune.errors import ConfigError, DataError

KEY = "model.fusion"


class Fusion(Protocol):
    """What MultimodalLM relies on; every registered fusion is an nn.Module with these (weights under `fusion.`)."""

    Args: type
    """Typed arguments (a dataclass) read from model.fusion.args."""

    def item_tokens(self, bridge_tokens: int) -> int:
        """Row positions one media item occupies, for a bridge that makes `bridge_tokens` tokens of it."""

    def __call__(self, embeds: torch.Tensor, input_ids: torch.Tensor, seq_ids: torch.Tensor | None,
                 features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token embeddings [B, T, H] (sentinel positions hold a placeholder row), ids [B, T], sample ids [B, T]
        (None: one sample per row) and {kind: [n, M, H]} bridge features in row order -> the LLM's input [B, T, H]."""


@dataclass
class NoArgs:
    """splice takes no arguments: an item occupies as many positions as its bridge makes tokens."""


class Splice(nn.Module):
    """Bridge tokens written into the row where the placeholder stood; no parameters."""

    Args = NoArgs

    def __init__(self, args: NoArgs | None = None, llm: nn.Module | None = None, kinds: tuple[str, ...] = ()):
        super().__init__()

    def item_tokens(self, bridge_tokens: int) -> int:
        return bridge_tokens

    def forward(self, embeds, input_ids, seq_ids, features):
        for kind, feats in features.items():
            slots = media_slots(input_ids, kind, feats)
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), feats.reshape(-1, feats.shape[-1]))
        return embeds


def media_slots(input_ids: torch.Tensor, kind: str, feats: torch.Tensor, per_item: int | None = None) -> torch.Tensor:
    """[B, T] mask of `kind`'s sentinel positions; DataError unless there are `per_item` (default: the bridge's M)
    of them for each of the n items."""
    slots = input_ids == MEDIA_TOKEN_IDS[kind]
    n, m = feats.shape[0], feats.shape[1] if per_item is None else per_item
    if int(slots.sum()) != n * m:
        raise DataError(f"batch has {int(slots.sum())} {kind} positions but {n} {kind} items x {m} tokens = {n * m}")
    return slots


FUSIONS: dict[str, type] = {"splice": Splice}


def fusion_args(cfg: ComponentConfig):
    """`model.fusion.args` as the fusion's typed Args; ConfigError names the bad key."""
    check_choice(cfg.name, FUSIONS, f"{KEY}.name")
    cls = FUSIONS[cfg.name]
    if cfg.args and not dataclasses.fields(cls.Args):
        raise ConfigError(f"{KEY}.args.{next(iter(cfg.args))}: unknown argument; {cfg.name} takes none")
    return from_dict(cls.Args, cfg.args, where=f"fusion {cfg.name!r}", prefix=f"{KEY}.args.")


def build_fusion(cfg: ComponentConfig, llm: nn.Module, kinds: tuple[str, ...]) -> Fusion:
    return FUSIONS[cfg.name](fusion_args(cfg), llm, kinds)
