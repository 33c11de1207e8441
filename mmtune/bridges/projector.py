"""Projectors: per-token maps from encoder features to LLM embeddings, [B, N, D] -> [B, N, H] (M == N).

MLPProjector names its layers linear_1, act, linear_2 like transformers' LlavaMultiModalProjector, so a trained
mlp2x_gelu is copied into LlavaForConditionalGeneration's `multi_modal_projector` as is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class NoArgs:
    """Projectors take no arguments: their widths come from the encoder and the LLM."""


class LinearProjector(nn.Linear):
    """LLaVA-1's projector: one Linear(D, H)."""

    Args = NoArgs
    context = None

    def __init__(self, in_dim: int, out_dim: int, args: NoArgs | None = None):
        super().__init__(in_dim, out_dim)

    def num_tokens(self, n_in: int) -> int:
        return n_in


class MLPProjector(nn.Module):
    """`depth` Linear layers with GELU between them: Linear(D, H), then (GELU, Linear(H, H)) * (depth - 1).
    depth 2 is LLaVA-1.5's mlp2x_gelu."""

    Args = NoArgs
    context = None

    def __init__(self, in_dim: int, out_dim: int, args: NoArgs | None = None, depth: int = 2):
        super().__init__()
        if depth < 1:
            raise ValueError(f"MLPProjector depth must be >= 1, got {depth}")
        self.depth = depth
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU()  # exact (erf) GELU, as transformers' "gelu"
        for i in range(2, depth + 1):
            self.add_module(f"linear_{i}", nn.Linear(out_dim, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.linear_1(features)  # [B, N, H]
        for i in range(2, self.depth + 1):
            x = self.get_submodule(f"linear_{i}")(self.act(x))
        return x

    def num_tokens(self, n_in: int) -> int:
        return n_in
