"""Media encoders: pixels -> per-token features [B, N, D] that a bridge maps into the LLM.

`ENCODERS` maps `model.encoder.name` to a class; each class declares a typed `Args` dataclass, so `build_encoder`
rejects unknown or mistyped `model.encoder.args.*` keys (through mmtune.config) before anything is built.
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch
from PIL import Image

from mmtune.config import ComponentConfig, check_choice, from_dict
from mmtune.encoders.clip import HFClipEncoder, OpenClipEncoder


class Encoder(Protocol):
    """What the multimodal model and the data pipeline rely on; every registered encoder is an nn.Module with these."""

    out_dim: int
    """D, the feature width."""
    num_tokens: int
    """N, tokens per image: fixed for an encoder, so row lengths are known before the forward pass."""
    image_size: int
    """Side of the square input that `transform` produces."""
    transform: Callable[[Image.Image], torch.Tensor]
    """RGB PIL image -> float [3, H, W], normalised; picklable, as it runs in DataLoader workers."""

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, N, D]."""


ENCODERS: dict[str, type] = {
    "clip": OpenClipEncoder,
    "hf_clip": HFClipEncoder,
}


def build_encoder(cfg: ComponentConfig) -> Encoder:
    """The encoder `cfg.name` built from `cfg.args`; ConfigError names the bad `model.encoder.*` key."""
    return encoder_class(cfg)(encoder_args(cfg))


def encoder_class(cfg: ComponentConfig) -> type:
    check_choice(cfg.name, ENCODERS, "model.encoder.name")
    return ENCODERS[cfg.name]


def encoder_args(cfg: ComponentConfig, where: str = ""):
    """`model.encoder.args` as the encoder's typed Args; unknown or mistyped keys are named."""
    return from_dict(encoder_class(cfg).Args, cfg.args, where=where or f"encoder {cfg.name!r}",
                     prefix="model.encoder.args.")
