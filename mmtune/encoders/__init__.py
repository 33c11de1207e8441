"""Media encoders, one registry per media kind: bytes -> items (in DataLoader workers) -> features [n, N, D].

`ENCODERS[kind]` maps `model.media.<kind>.encoder.name` to a class; each class declares a typed `Args` dataclass,
so `build_encoder` rejects unknown or mistyped `model.media.<kind>.encoder.args.*` keys (through mmtune.config)
before anything is built. An encoder owns the decoding and transform of its kind (`preprocess`) and declares its
tokens per item, so row lengths are known before the forward pass.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
import torch

from mmtune.config import ComponentConfig, check_choice, from_dict
from mmtune.encoders.clip import HFClipEncoder, OpenClipEncoder
from mmtune.encoders.frames import FramesEncoder
from mmtune.encoders.points import PointNetEncoder


class Encoder(Protocol):
    """What the multimodal model and the data pipeline rely on; every registered encoder is an nn.Module with these."""

    out_dim: int
    """D, the feature width."""
    num_tokens: int
    """N, tokens per item: fixed for an encoder, so row lengths are known before the forward pass."""
    item_shape: tuple[int, ...]
    """Shape of one preprocessed item ([3, H, W] for an image)."""
    preprocess: Callable[[bytes, str], np.ndarray]
    """Bytes of one shard member (and where they come from, for errors) -> float32 array of `item_shape`;
    picklable, as it runs in DataLoader workers."""
    time_steps: int
    """Optional (1 when absent): the N tokens are this many frames' tokens, one frame after the other."""
    from_scratch: bool
    """Built with random weights: checkpoints save it whole, as it cannot be re-read from a source."""

    def __call__(self, items: torch.Tensor) -> torch.Tensor:
        """[n, *item_shape] -> [n, N, D]."""


ENCODERS: dict[str, dict[str, type]] = {
    "image": {"clip": OpenClipEncoder, "hf_clip": HFClipEncoder},
    "video": {"frames": FramesEncoder},
    "points": {"pointnet": PointNetEncoder},
}
"""Media kind -> encoder name -> class."""


def encoder_key(kind: str) -> str:
    """The config key errors name for the encoder of `kind`."""
    return f"model.media.{kind}.encoder"


def build_encoder(cfg: ComponentConfig, kind: str = "image", image_encoder: Encoder | None = None) -> Encoder:
    """The encoder `cfg.name` of media `kind` built from `cfg.args`; ConfigError names the bad key. Encoders of
    other kinds may reuse `image_encoder` (video frames go through the image tower by default)."""
    cls = encoder_class(cfg, kind)
    args = encoder_args(cfg, kind)
    return cls(args, image_encoder) if getattr(cls, "uses_image_encoder", False) else cls(args)


def encoder_class(cfg: ComponentConfig, kind: str = "image") -> type:
    check_choice(cfg.name, ENCODERS[kind], f"{encoder_key(kind)}.name")
    return ENCODERS[kind][cfg.name]


def encoder_args(cfg: ComponentConfig, kind: str = "image", where: str = ""):
    """`model.media.<kind>.encoder.args` as the encoder's typed Args; unknown or mistyped keys are named."""
    return from_dict(encoder_class(cfg, kind).Args, cfg.args, where=where or f"encoder {cfg.name!r}",
                     prefix=f"{encoder_key(kind)}.args.")
