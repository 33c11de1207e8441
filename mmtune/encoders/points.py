"""Point clouds as tokens: a PointNet++-style set abstraction, optionally followed by a small transformer (Point-BERT).

M centres are chosen by farthest-point sampling (started at the point farthest from the centroid, so the choice
does not depend on the order of the points), each groups its k nearest neighbours, a shared MLP embeds every
neighbour relative to its centre and a max-pool makes one token per centre, plus an embedding of the centre's
position. Pure torch, built from scratch (there are no packaged point-cloud weights).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmtune.data.points import PointsLoader
from mmtune.errors import ConfigError

KEY = "model.media.points.encoder.args"


@dataclass
class PointNetArgs:
    points: int = 1024
    """N, points sampled from each cloud (after centring and scaling into the unit sphere)."""
    tokens: int = 32
    """M, centres (tokens per cloud)."""
    neighbours: int = 16
    """k, points grouped around each centre."""
    width: int = 128
    """D, the token width."""
    layers: int = 0
    """Transformer layers over the tokens (0: the set abstraction alone)."""
    heads: int = 4
    """Attention heads of those layers; must divide width."""

    def __post_init__(self):
        for name in ("points", "tokens", "neighbours", "width", "heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{KEY}.{name} must be >= 1, got {getattr(self, name)}")
        if self.tokens > self.points or self.neighbours > self.points:
            raise ConfigError(f"{KEY}: tokens ({self.tokens}) and neighbours ({self.neighbours}) must not exceed "
                              f"points ({self.points})")
        if self.layers < 0 or self.width % self.heads:
            raise ConfigError(f"{KEY}: layers must be >= 0 and heads ({self.heads}) must divide width ({self.width})")


class PointNetEncoder(nn.Module):
    """[n, points, 6] (xyz, rgb) -> [n, tokens, width]."""

    Args = PointNetArgs

    def __init__(self, args: PointNetArgs):
        super().__init__()
        self.tokens, self.neighbours = args.tokens, args.neighbours
        self.mlp = nn.Sequential(nn.Linear(6, args.width // 2), nn.GELU(), nn.Linear(args.width // 2, args.width))
        self.position = nn.Linear(3, args.width)
        layer = nn.TransformerEncoderLayer(args.width, args.heads, 2 * args.width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, args.layers, enable_nested_tensor=False) if args.layers else None
        self.out_dim, self.num_tokens = args.width, args.tokens
        self.item_shape = (args.points, 6)
        self.preprocess = PointsLoader(args.points)
        self.from_scratch = True

    def forward(self, clouds: torch.Tensor) -> torch.Tensor:
        xyz = clouds[..., :3]
        centres = _gather(xyz, farthest_points(xyz, self.tokens))  # [n, M, 3]
        near = torch.cdist(centres, xyz).topk(self.neighbours, largest=False).indices  # [n, M, k]
        groups = _gather(clouds, near.flatten(1)).unflatten(1, near.shape[1:])  # [n, M, k, 6]
        local = torch.cat([groups[..., :3] - centres[:, :, None], groups[..., 3:]], dim=-1)
        tokens = self.mlp(local).amax(dim=2) + self.position(centres)
        return self.blocks(tokens) if self.blocks is not None else tokens


def farthest_points(xyz: torch.Tensor, m: int) -> torch.Tensor:
    """[n, N, 3] -> [n, m] indices; the first is the point farthest from the centroid."""
    first = (xyz - xyz.mean(1, keepdim=True)).norm(dim=-1).argmax(1)
    chosen = [first]
    nearest = (xyz - _gather(xyz, first[:, None])).norm(dim=-1)  # distance to the closest chosen point
    for _ in range(m - 1):
        nxt = nearest.argmax(1)
        chosen.append(nxt)
        nearest = torch.minimum(nearest, (xyz - _gather(xyz, nxt[:, None])).norm(dim=-1))
    return torch.stack(chosen, dim=1)


def _gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [n, N, C], index [n, K] -> [n, K, C]."""
    return values.gather(1, index[..., None].expand(-1, -1, values.shape[-1]))
