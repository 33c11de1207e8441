"""A deterministic, resumable, rank- and worker-aware stream of samples from WebDataset shards.

Our own because neither webdataset's pipelines (no state to save) nor torchdata's StatefulDataLoader (state per
worker, shuffle buffers not restored exactly) gave exact resume across ranks and workers; see docs/architecture.md.
The stream walks tar headers (cheap: data is seeked over) in an order fixed by (seed, epoch), so every rank and
worker sees the same sequence of sample references and decodes only its own. The position is then one integer
per rank. Memory is bounded by the shuffle buffer, never by the data set size.
"""
from __future__ import annotations

import random
from typing import Callable, Iterator

import torch

from mmtune.data.sample import Sample
from mmtune.data.shards import Item, Ref, iter_refs, read_sample
from mmtune.errors import DataError


class ShardStream(torch.utils.data.IterableDataset):
    """Deterministic stream of `(local index, transform(sample))` for one rank, split across DataLoader workers.

    Global order: shards shuffled per epoch, then a seeded shuffle buffer of refs. Rank r owns global positions
    i with i % world == r; its local index is i // world, and worker w owns local indices j with
    (j - start) % num_workers == w, so the DataLoader's round-robin over workers yields local indices in order.
    One epoch only; the loader builds a new stream per epoch. Failed samples come back as Items with `error`
    (never dropped), so the order stays intact and the batcher counts or raises.
    """

    def __init__(self, shards: list[str], transform: Callable[[Sample], object], *, epoch: int = 0, seed: int = 0,
                 shuffle: bool = True, shuffle_buffer: int = 1000, rank: int = 0, world: int = 1, start: int = 0):
        super().__init__()
        self.shards, self.transform = list(shards), transform
        self.epoch, self.seed, self.shuffle, self.shuffle_buffer = epoch, seed, shuffle, shuffle_buffer
        self.rank, self.world, self.start = rank, world, start

    def refs(self) -> Iterator[Ref | DataError]:
        rng = random.Random(f"{self.seed}-{self.epoch}")
        shards = list(self.shards)
        if self.shuffle:
            rng.shuffle(shards)
        buffer: list[Ref] = []
        for shard in shards:
            try:
                for ref in iter_refs(shard):
                    if not self.shuffle or self.shuffle_buffer <= 1:
                        yield ref
                        continue
                    buffer.append(ref)
                    if len(buffer) >= self.shuffle_buffer:
                        yield buffer.pop(rng.randrange(len(buffer)))
            except DataError as e:
                yield e  # a truncated shard: the batcher raises or counts it; the refs before it still count
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[Item]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for i, ref in enumerate(self.refs()):  # a shard error takes a position too, so exactly one worker reports it
            if i % self.world != self.rank:
                continue
            local = i // self.world
            if local < self.start or (local - self.start) % nw != wid:
                continue
            if isinstance(ref, DataError):
                yield Item(local, error=str(ref), reason="bad_shard")
                continue
            try:
                yield Item(local, value=self.transform(read_sample(ref)))
            except DataError as e:
                yield Item(local, error=str(e), reason=getattr(e, "reason", "bad_sample"))
