"""Held-out loss and perplexity: the loss per supervised token the training objective computes, over shards.

`mean_loss` is the loop the trainer's periodic evaluation uses too, so `mmtune eval --task loss` and the eval_loss
in metrics.jsonl are the same number for the same batches.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from typing import Callable, Iterable

import torch

from mmtune.config import RunConfig
from mmtune.data.packing import Batcher, DataState, to_device
from mmtune.data.pipeline import iterate_batches
from mmtune.models.kinds import sample_encoder
from mmtune.models.objectives import build_objective


@torch.no_grad()
def mean_loss(model, batches: Iterable[tuple[dict, object]], objective: Callable, *, max_batches: int | None = None,
              precision: Callable = contextlib.nullcontext) -> dict:
    """Summed objective over (the first `max_batches` of) `batches` divided by what it counts (supervised tokens
    for sft, images for an editor).

    Returns {"loss", "perplexity", "supervised_tokens", "batches"} ("supervised_tokens" holds that count); loss is
    0 and perplexity 1 when nothing was counted. `precision` makes the context each forward runs in (autocast for
    bf16 training)."""
    dev = next(model.parameters()).device
    total, count, n = 0.0, 0, 0
    for batch, _ in itertools.islice(batches, max_batches):
        with precision():
            out = objective(model, to_device(batch, dev))
        total, count, n = total + float(out.loss_sum), count + out.count, n + 1
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(loss), "supervised_tokens": count, "batches": n}


def heldout_loss(model, tokenizer, cfg: RunConfig, shards: list[str], max_batches: int | None = None) -> dict:
    """Loss and perplexity of a checkpoint's model on shards, one pass in stored order, encoded and batched as its
    run's config says (template, max_len, packing, data.on_error). Skipped and truncated samples are counted in the
    result's "counts"."""
    encoder = sample_encoder(cfg, model, tokenizer)
    d = cfg.data
    batcher = Batcher(cfg.train.batch_size, d.max_len, packing=d.packing and not encoder.seq2seq,
                      group_by_length=False, on_error=d.on_error, seed=cfg.train.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = iterate_batches(shards, encoder, batcher, pad_id, DataState(), shuffle=False, epochs=1)
    result = mean_loss(model.eval(), batches, build_objective(cfg, model), max_batches=max_batches)
    return {**result, "counts": dict(batcher.counts)}
