"""Perceiver resampler (Flamingo; the design of OpenFlamingo's `PerceiverResampler`): any number of encoder tokens
-> a fixed number of learned latents, [n, N, D] -> [n, latents, H].

Each of `depth` layers lets the latents attend to the item's features concatenated with the latents themselves
(keys and values from both, LayerNorm on each), then applies a feed-forward layer, both as residuals; a final
LayerNorm and a Linear(D, H) map the latents to the LLM's width. For a video, the encoder lays out its tokens frame
after frame (frames encoder, `time: frames`); a learned embedding per frame is added to that frame's tokens
before the first layer, so the latents can tell the frames apart (attention alone is blind to token order).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmtune.errors import ConfigError
from mmtune.models.attention import Attention, feed_forward

@dataclass
class ResamplerArgs:
    latents: int = 64
    """Learned queries, i.e. tokens per item whatever the encoder gives (OpenFlamingo: 64)."""
    depth: int = 6
    """Perceiver layers (OpenFlamingo: 6)."""
    heads: int = 8
    """Attention heads."""
    dim_head: int = 64
    """Width of each head."""
    ff_mult: int = 4
    """Feed-forward width as a multiple of the encoder's."""

    def __post_init__(self):
        for name in ("latents", "depth", "heads", "dim_head", "ff_mult"):
            if getattr(self, name) < 1:
                raise ConfigError(f"args.{name} must be >= 1, got {getattr(self, name)}")


class PerceiverLayer(nn.Module):
    def __init__(self, dim: int, args: ResamplerArgs):
        super().__init__()
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, dim, args.heads, args.dim_head)
        self.ff = feed_forward(dim, args.ff_mult)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        normed = self.norm_latents(latents)
        latents = latents + self.attn(normed, torch.cat([self.norm_media(media), normed], dim=1))
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """[n, frames * P, D] -> [n, latents, H]; `frames` (the encoder's time steps, 1 for images) get one learned
    time embedding each."""

    Args = ResamplerArgs
    context = None
    uses_frames = True
    """build_bridge passes the encoder's time steps as `frames`."""

    def __init__(self, in_dim: int, out_dim: int, args: ResamplerArgs | None = None, frames: int = 1):
        super().__init__()
        args = args or ResamplerArgs()
        self.frames = frames
        self.latents = nn.Parameter(torch.randn(args.latents, in_dim))
        if frames > 1:
            self.time_embeddings = nn.Parameter(torch.randn(frames, in_dim))
        self.layers = nn.ModuleList(PerceiverLayer(in_dim, args) for _ in range(args.depth))
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)

    def num_tokens(self, n_in: int) -> int:
        return self.latents.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.frames > 1:
            if features.shape[1] % self.frames:
                raise ValueError(f"resampler: {features.shape[1]} tokens do not split into {self.frames} frames")
            features = (features.unflatten(1, (self.frames, -1)) + self.time_embeddings[:, None]).flatten(1, 2)
        latents = self.latents.expand(features.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(features, latents)
        return self.proj(self.norm(latents))
