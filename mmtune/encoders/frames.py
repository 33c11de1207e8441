"""Video as frames: N sampled frames through an image tower, spatial pooling, then per-frame tokens or their mean.

As LLaVA-Video: every frame's patch grid is average-pooled `pool` x `pool` (2x2 there), and the frames' tokens are
either kept in order (`time: frames`) or averaged over time (`time: mean`). The tokens a video costs are fixed by
the config, and `max_tokens` caps them (fewer frames are sampled), so a video's memory is bounded and known before
the forward pass. The tower is the image kind's encoder unless `tower` names one of its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmtune.data.media import VideoLoader
from mmtune.errors import ConfigError

KEY = "model.media.video.encoder.args"


@dataclass
class FramesArgs:
    frames: int = 8
    """N, frames sampled per video: uniformly over the whole video (linspace), or at `fps` from the start."""
    fps: float = 0.0
    """> 0: take frames at this rate (at most `frames`, spread uniformly when there are more); 0: uniform."""
    pool: int = 2
    """Side of the average pooling over each frame's patch grid (1: none); LLaVA-Video uses 2."""
    time: Literal["frames", "mean"] = "frames"
    """frames: every frame's pooled tokens, in order; mean: the pooled tokens averaged over the frames."""
    max_tokens: int = 0
    """Per-video token budget (0: none); with time=frames, fewer frames are sampled to stay within it."""
    time_encoding: float = 0.0
    """> 0 (time: frames): add this multiple of a fixed sinusoidal encoding of each frame's index to its tokens, so
    the features themselves say which frame they come from; 0: order is left to the LLM's positions alone, which a
    small LLM trained from scratch learns slowly. No parameters: it works with a frozen tower and changes no
    checkpoint."""
    tower: dict = field(default_factory=dict)
    """An image encoder of its own, {name, args} as model.media.image.encoder; empty: share the image kind's."""

    def __post_init__(self):
        for name in ("frames", "pool"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{KEY}.{name} must be >= 1, got {getattr(self, name)}")
        if self.fps < 0 or self.max_tokens < 0 or self.time_encoding < 0:
            raise ConfigError(f"{KEY}.fps, {KEY}.max_tokens and {KEY}.time_encoding must be >= 0")
        if self.time_encoding and self.time == "mean":
            raise ConfigError(f"{KEY}.time_encoding: the mean over time is the same for every video; use time: frames")


class FramesEncoder(nn.Module):
    """[n, frames, 3, H, W] -> [n, tokens, D]."""

    Args = FramesArgs
    uses_image_encoder = True

    def __init__(self, args: FramesArgs, image_encoder: nn.Module | None = None):
        super().__init__()
        if args.tower:
            from mmtune.config import ComponentConfig
            from mmtune.encoders import build_encoder

            self.own_tower = build_encoder(ComponentConfig(**args.tower), "image")
        elif image_encoder is None:
            raise ConfigError(f"{KEY}.tower: empty, and there is no image encoder to share; set model.media.image "
                              "or give the video encoder a tower of its own")
        else:  # not registered here: the image part owns, tunes and saves it
            object.__setattr__(self, "shared_tower", image_encoder)
        self.pool, self.time, self.time_encoding = args.pool, args.time, args.time_encoding
        self.grid = math.isqrt(self.tower.num_tokens)
        if args.pool > 1 and self.grid ** 2 != self.tower.num_tokens:
            raise ConfigError(f"{KEY}.pool: the tower gives {self.tower.num_tokens} tokens, not a square patch grid "
                              "(use tokens: patch, or pool: 1)")
        per_frame = math.ceil(self.grid / args.pool) ** 2 if args.pool > 1 else self.tower.num_tokens
        self.frames = _frames_within_budget(args, per_frame)
        self.time_steps = self.frames if self.time == "frames" else 1
        """Frames whose tokens follow one another in the output (bridges with time embeddings read it)."""
        self.num_tokens = per_frame * self.time_steps
        self.out_dim = self.tower.out_dim
        size = self.tower.image_size
        self.item_shape = (self.frames, 3, size, size)
        self.preprocess = VideoLoader(self.tower.transform, self.frames, args.fps)
        self.from_scratch = bool(args.tower) and self.tower.from_scratch

    @property
    def tower(self) -> nn.Module:
        return self.own_tower if "own_tower" in self._modules else self.shared_tower

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        n, frames = videos.shape[:2]
        tokens = self.tower(videos.flatten(0, 1))  # [n * frames, P, D]
        if self.pool > 1:
            grid = tokens.unflatten(1, (self.grid, self.grid)).permute(0, 3, 1, 2)  # [n * frames, D, g, g]
            tokens = F.avg_pool2d(grid, self.pool, ceil_mode=True).flatten(2).transpose(1, 2)
        tokens = tokens.unflatten(0, (n, frames))  # [n, frames, P', D]
        if self.time_encoding:
            tokens = tokens + self.time_encoding * time_encoding(frames, tokens.shape[-1]).to(tokens)[:, None]
        return tokens.mean(1) if self.time == "mean" else tokens.flatten(1, 2)


def time_encoding(frames: int, width: int) -> torch.Tensor:
    """[frames, width]: the transformer's sinusoidal position encoding of frame indices 0..frames-1."""
    position = torch.arange(frames, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    out = torch.zeros(frames, width)
    out[:, 0::2] = torch.sin(position * rate)
    out[:, 1::2] = torch.cos(position * rate[: width // 2])
    return out


def _frames_within_budget(args: FramesArgs, per_frame: int) -> int:
    if args.max_tokens and per_frame > args.max_tokens:
        raise ConfigError(f"{KEY}.max_tokens: {args.max_tokens} is below one frame's {per_frame} tokens; raise it "
                          "or pool more")
    if args.max_tokens and args.time == "frames":
        return min(args.frames, args.max_tokens // per_frame)
    return args.frames
