"""Training objectives: objects built once at setup, called as `objective(model, batch) -> LossOut`.

An objective is built from the recipe (`train.objective`, with its typed `train.objective_args`) and the model it
trains, so it can hold state of its own: a noise schedule, a frozen reference model for preference pairs. The loop
knows only this seam. Objectives return a *sum*, and `count(batch)` says what that sum is normalised by (supervised
tokens, images, pairs), known from the batch before any forward pass, so the trainer can weight gradient
accumulation and ranks by it: a micro-batch with few supervised tokens weighs less, as it should.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mmtune.config import RunConfig, check_choice, from_dict


@dataclass
class LossOut:
    loss_sum: torch.Tensor
    count: int
    """What loss_sum is a sum over (supervised tokens for sft, images for ip2p)."""
    metrics: dict = field(default_factory=dict)


@dataclass
class NoArgs:
    """An objective without settings: any key in train.objective_args is refused."""


class Objective:
    """Base of every objective. `Args` types `train.objective_args`; `kinds` are the model kinds it trains."""
    Args = NoArgs
    kinds: tuple[str, ...] = ("lm",)
    unit = "supervised_tokens"
    """What `count` counts; the metrics.jsonl key of each step's count."""

    def __init__(self, args, cfg: RunConfig, model: torch.nn.Module):
        self.args = args

    def count(self, batch: dict) -> int:
        raise NotImplementedError

    def __call__(self, model, batch: dict) -> LossOut:
        raise NotImplementedError


def sft(model, batch: dict, sparse: bool = True) -> LossOut:
    """Next-token cross-entropy over supervised positions only (labels are -100 elsewhere)."""
    scored = model(batch, sparse=sparse)
    return LossOut(scored.loss_sum(), int(scored.targets.numel()))


class SFT(Objective):
    """Supervised fine-tuning: next-token loss on the assistant turns, normalised by supervised tokens."""

    def __init__(self, args, cfg: RunConfig, model):
        super().__init__(args, cfg, model)
        self.sparse = cfg.train.sparse_lm_head

    def count(self, batch: dict) -> int:
        return batch["supervised_tokens"]

    def __call__(self, model, batch: dict) -> LossOut:
        return sft(model, batch, self.sparse)


def per_sample_loss(model, batch: dict) -> dict[str, float]:
    """Mean loss per sample id; used to check that packing does not change what a sample contributes."""
    scored = model(batch)
    token_loss = scored.token_losses()
    out = {}
    for n, sample_id in enumerate(batch["sample_ids"]):
        mine = scored.seq == n
        out[sample_id] = float(token_loss[mine].mean()) if mine.any() else float("nan")
    return out


@dataclass
class IP2PArgs:
    """Conditioning dropout as in InstructPix2Pix: one draw per sample drops the text only, the image only, or
    both, each with its own probability; the model learns the unconditional inputs guidance needs."""
    drop_text: float = 0.05
    """Probability that a sample trains without its instruction (the empty instruction instead)."""
    drop_image: float = 0.05
    """Probability that a sample trains without its input image (a zero latent instead)."""
    drop_both: float = 0.05
    """Probability that a sample trains with neither."""

    def __post_init__(self):
        from mmtune.errors import ConfigError

        total = self.drop_text + self.drop_image + self.drop_both
        if min(self.drop_text, self.drop_image, self.drop_both) < 0 or total > 1:
            raise ConfigError(f"train.objective_args: dropout probabilities must be >= 0 and sum to <= 1, got "
                              f"text {self.drop_text}, image {self.drop_image}, both {self.drop_both}")


class IP2P(Objective):
    """InstructPix2Pix: mean squared error of the UNet's noise (or v) prediction per image, summed over images.

    Noise, timesteps and dropout are drawn from the global RNG while training (checkpointed, so a resumed run
    draws the same), and from a generator seeded by the batch's first sample id in eval, so every evaluation
    scores the same noise and eval losses compare."""
    Args = IP2PArgs
    kinds = ("image_editor",)
    unit = "images"

    def __init__(self, args: IP2PArgs, cfg: RunConfig, model):
        super().__init__(args, cfg, model)
        self.latent_shape = model.latent_shape
        self.timesteps = cfg.model.editor.train_timesteps

    def count(self, batch: dict) -> int:
        return len(batch["sample_ids"])

    def dropout(self, n: int, device, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(drop text, drop image) per sample from one uniform draw each: text only, both, image only."""
        a = self.args
        u = torch.rand(n, device=device, generator=generator)
        text_only, both = u < a.drop_text, (u >= a.drop_text) & (u < a.drop_text + a.drop_both)
        image_only = (u >= a.drop_text + a.drop_both) & (u < a.drop_text + a.drop_both + a.drop_image)
        return text_only | both, image_only | both

    def __call__(self, model, batch: dict) -> LossOut:
        n, device = len(batch["sample_ids"]), batch["target_pixels"].device
        generator = None
        if not model.training:
            generator = torch.Generator(device).manual_seed(zlib.crc32(batch["sample_ids"][0].encode()))
        noise = torch.randn(n, *self.latent_shape, device=device, generator=generator)
        timesteps = torch.randint(0, self.timesteps, (n,), device=device, generator=generator)
        drop_text, drop_image = self.dropout(n, device, generator)
        pred, target = model(batch, noise, timesteps, drop_text, drop_image)
        per_image = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return LossOut(per_image.sum(), n)


OBJECTIVES: dict[str, type[Objective]] = {"sft": SFT, "ip2p": IP2P}


def objective_args(cfg: RunConfig, where: str = "config"):
    """`train.objective_args` as the objective's typed Args; also checks that it trains `model.kind`. Raises
    ConfigError naming the key."""
    from mmtune.errors import ConfigError

    check_choice(cfg.train.objective, OBJECTIVES, f"{where}: train.objective")
    cls = OBJECTIVES[cfg.train.objective]
    if cfg.model.kind not in cls.kinds:
        raise ConfigError(f"{where}: train.objective={cfg.train.objective} trains model.kind "
                          f"{' or '.join(cls.kinds)}, not {cfg.model.kind}")
    return from_dict(cls.Args, cfg.train.objective_args, where, "train.objective_args.")


def build_objective(cfg: RunConfig, model: torch.nn.Module) -> Objective:
    return OBJECTIVES[cfg.train.objective](objective_args(cfg), cfg, model)
