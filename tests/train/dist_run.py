"""Launched by test_distributed.py under torchrun (or in-process): train a recipe, then save the trained model's
logits on a probe batch, so a test can compare them with the checkpoint loaded into a fresh model."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import mmtune
from mmtune.config import RunConfig, load_config


def probe_batch(cfg: RunConfig, model, tokenizer) -> dict:
    """The first batch of the training shards, in file order (images included)."""
    from mmtune.data.packing import DataState
    from mmtune.train.trainer import make_batches, sample_encoder

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches, _ = make_batches(cfg, cfg.data.train, sample_encoder(cfg, model, tokenizer), pad_id, DataState(),
                              train=False)
    return next(batches)[0]


def train_and_probe(cfg: RunConfig) -> None:
    def probe(event, model, tokenizer, **_):
        if event != "end":
            return None
        model.eval()
        with torch.no_grad():
            logits = model(probe_batch(cfg, model, tokenizer)).logits
        if int(os.environ.get("RANK", 0)) == 0:
            torch.save(logits, Path(cfg.train.out_dir) / "probe_logits.pt")
        return None

    mmtune.finetune(cfg, callbacks=[probe])


if __name__ == "__main__":
    train_and_probe(load_config(sys.argv[1], sys.argv[2:]))
