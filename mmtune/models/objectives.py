"""Training objectives: batch -> summed loss and the count it is normalised by.

Objectives return a sum, not a mean, so the trainer can weight gradient accumulation (and ranks) by supervised
tokens: a micro-batch with few supervised tokens weighs less, as it should.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mmtune.config import check_choice


@dataclass
class LossOut:
    loss_sum: torch.Tensor
    count: int
    """Supervised tokens (sft)."""
    metrics: dict = field(default_factory=dict)


def sft(model, batch: dict, sparse: bool = True) -> LossOut:
    """Next-token cross-entropy over supervised positions only (labels are -100 elsewhere)."""
    scored = model(batch, sparse=sparse)
    loss_sum = F.cross_entropy(scored.logits.float(), scored.targets, reduction="sum")
    return LossOut(loss_sum, int(scored.targets.numel()))


def per_sample_loss(model, batch: dict) -> dict[str, float]:
    """Mean loss per sample id; used to check that packing does not change what a sample contributes."""
    scored = model(batch)
    token_loss = F.cross_entropy(scored.logits.float(), scored.targets, reduction="none")
    out = {}
    for n, sample_id in enumerate(batch["sample_ids"]):
        mine = scored.seq == n
        out[sample_id] = float(token_loss[mine].mean()) if mine.any() else float("nan")
    return out


OBJECTIVES = {"sft": sft}


def get_objective(name: str):
    check_choice(name, OBJECTIVES, "train.objective")
    return OBJECTIVES[name]
