"""Multi-head attention and feed-forward layers shared by the perceiver resampler (bridges/resampler.py) and the
gated cross-attention blocks (models/fusion.py), in OpenFlamingo's layout: bias-free projections, a fused key/value
projection, LayerNorm inside the feed-forward layer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Queries from one sequence, keys and values from another (both already normalised by the caller)."""

    def __init__(self, dim: int, kv_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, inner = heads, heads * dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(kv_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, Tq, dim], [B, Tk, kv_dim] and a boolean mask broadcastable to [B, heads, Tq, Tk] (True: may attend)
        -> [B, Tq, dim]."""
        q = self._split(self.to_q(queries))
        k, v = (self._split(t) for t in self.to_kv(keys).chunk(2, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).flatten(2))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, heads, T, dim_head]


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """LayerNorm, then Linear(dim, mult * dim), GELU, Linear back (no biases)."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, mult * dim, bias=False), nn.GELU(),
                         nn.Linear(mult * dim, dim, bias=False))
