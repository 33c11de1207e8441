"""Shards -> encoded batches: the per-sample transform (media decode + chat template) and the epoch loop.

The transform runs in DataLoader workers and must stay picklable and free of global state. Samples that fail are
returned as errors (never dropped inside a worker), so the batcher sees every stream position and can count them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from mmtune.data.packing import Batcher, DataState, collate, collate_seq2seq
from mmtune.data.sample import Sample, media_instructions
from mmtune.data.stream import ShardStream
from mmtune.data.templates import encode, encode_seq2seq, has_target
from mmtune.data.workers import die_with
from mmtune.errors import DataError, SampleSkip


@dataclass
class SampleEncoder:
    """Sample -> dict(id, input_ids, labels, media, modality). Raises DataError naming the sample.

    `media_loaders[kind]` is that kind's encoder `preprocess` (bytes -> array); `media` holds one array
    [n, *item_shape] per kind present in the sample, items in placeholder order. `context_encoders[kind]`, for a
    kind whose bridge reads its item's instruction, encodes that text; `media_context[kind]` holds the arrays
    stacked [n, ...] like the items."""
    tokenizer: object
    template: str
    max_len: int
    system_prompt: str | None = None
    media_tokens: dict | None = None
    media_loaders: dict[str, Callable[[bytes, str], np.ndarray]] | None = None
    context_encoders: dict[str, Callable[[str], dict[str, np.ndarray]]] | None = None
    overlong: str = "truncate"
    seq2seq: bool = False

    def __call__(self, sample: Sample) -> dict:
        where = sample.where
        fn = encode_seq2seq if self.seq2seq else encode
        enc = fn(sample.messages, self.tokenizer, self.template, system_prompt=self.system_prompt,
                 media_tokens=self.media_tokens or None, max_len=None if self.overlong == "error" else self.max_len,
                 where=where)
        length = len(enc.input_ids)
        if self.overlong == "error" and length > self.max_len:
            raise DataError(f"{where}: {length} tokens (media included) exceed data.max_len={self.max_len}; "
                            f"raise max_len or set data.overlong=truncate|skip")
        if enc.truncated and self.overlong == "skip":
            raise SampleSkip(f"{where}: longer than data.max_len={self.max_len}", "overlong")
        if not has_target(enc):
            raise SampleSkip(f"{where}: no supervised token left after truncation to {self.max_len}", "no_target")
        expected = sum((self.media_tokens or {}).get(m.kind, 0) for m in sample.media)
        if enc.truncated and sum(1 for i in enc.input_ids if i < 0) != expected:
            raise SampleSkip(f"{where}: truncation to data.max_len={self.max_len} would cut media", "overlong")
        return {"id": sample.id, "input_ids": enc.input_ids, "labels": enc.labels, "media": self._media(sample, where),
                "media_context": self._context(sample), "modality": "+".join(sorted({m.kind for m in sample.media})) or "text", "truncated": enc.truncated}

    @property
    def collate_fn(self) -> Callable[[list, int], dict]:
        """(rows, pad_id) -> batch tensors for what this encoder produces."""
        return collate_seq2seq if self.seq2seq else collate

    @property
    def packable(self) -> bool:
        """Whether several samples may share a row (decoder-only token rows may; encoder-decoder rows not)."""
        return not self.seq2seq

    def _media(self, sample: Sample, where: str) -> dict[str, np.ndarray]:
        """As numpy: it crosses the DataLoader's worker queue by plain pickling, where every torch tensor would
        take a shared-memory segment of its own (about half the per-sample cost of a worker on small images)."""
        items: dict[str, list[np.ndarray]] = {}
        for m in sample.media:
            load = (self.media_loaders or {}).get(m.kind)
            if load is None:
                raise DataError(f"{where}: has {m.kind} media but the model has no {m.kind} encoder "
                                f"(set model.media.{m.kind})")
            items.setdefault(m.kind, []).append(load(sample.data[m.member], f"{where} member {m.member!r}"))
        return {kind: np.stack(arrays) for kind, arrays in items.items()}

    def _context(self, sample: Sample) -> dict[str, dict[str, np.ndarray]]:
        per_kind: dict[str, list[dict[str, np.ndarray]]] = {}
        for kind, text in media_instructions(sample.messages):
            if encode_context := (self.context_encoders or {}).get(kind):
                per_kind.setdefault(kind, []).append(encode_context(text))
        return {kind: stack_fields(encoded) for kind, encoded in per_kind.items()}


def stack_fields(encoded: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """[{name: array}] -> {name: stacked array}."""
    return {name: np.stack([e[name] for e in encoded]) for name in encoded[0]}


def iterate_batches(shards: list[str], encoder: SampleEncoder, batcher: Batcher, pad_id: int, state: DataState, *,
                    seed: int = 0, shuffle: bool = True, shuffle_buffer: int = 1000, rank: int = 0, world: int = 1,
                    num_workers: int = 0, epochs: int | None = None) -> Iterator[tuple[dict, DataState]]:
    """Yield (batch, state after it) forever (or for `epochs`), starting at `state`. Each epoch reshuffles."""
    glue = encoder.collate_fn
    epoch, start, skip = state.epoch, state.start, state.skip_batches
    while epochs is None or epoch < epochs:
        stream = ShardStream(shards, encoder, epoch=epoch, seed=seed, shuffle=shuffle, shuffle_buffer=shuffle_buffer,
                             rank=rank, world=world, start=start)
        # A private generator keeps the DataLoader from drawing on the global torch RNG (exact resume); workers
        # die with this process even when it is SIGKILLed (data/workers.py).
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers,
                                             collate_fn=lambda item: item, generator=torch.Generator(),
                                             worker_init_fn=die_with(os.getpid()))
        produced = 0
        for rows, after in batcher(iter(loader), DataState(epoch, start, skip)):
            produced += 1
            yield glue(rows, pad_id), after
        if produced == 0 and start == 0 and skip == 0:
            raise DataError(f"no usable sample in {len(shards)} shard(s) (first: {shards[0]}); "
                            f"skipped so far: {dict(batcher.counts) or 'none'}")
        epoch, start, skip = epoch + 1, 0, 0
