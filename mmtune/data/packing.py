"""Turning the ordered sample stream into batches: packing, length/modality grouping, collation, data position.

Batches are made from *consecutive* stream items (a window), so the position after any batch is a small
`DataState` (epoch, first stream index of the current window, batches of the window already yielded) and resuming
from it reproduces the same batches exactly. An encoded sample is a dict: id, input_ids, labels, media
({kind: array [n, *item_shape]}, empty for text) and modality.
"""
from __future__ import annotations

import bisect
import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import torch

from mmtune.data.shards import Item
from mmtune.data.templates import IGNORE, MEDIA_TOKEN_IDS
from mmtune.errors import DataError


@dataclass
class DataState:
    epoch: int = 0
    start: int = 0
    """Local stream index of the first item of the current window."""
    skip_batches: int = 0
    """Batches of that window already consumed."""


Row = list[dict]
LENGTH_BUCKET = 16
"""Length grouping sorts by length // LENGTH_BUCKET, so a row carries under 16 tokens of avoidable padding."""


class Batcher:
    """Group encoded samples into rows and rows into batches; count or raise on failed items.

    Both modes read a window of consecutive valid items, arrange it into batches with a generator seeded by
    (seed, epoch, window start) and carry nothing into the next window, so `DataState` locates any batch exactly.
    packing: the window holds `window` batches' worth of tokens (`window * batch_size * max_len`) and is packed
    best-fit-decreasing into rows of `max_len`, which fills rows to within the size of the window's smallest samples.
    group_by_length: a window of `window` batches is sorted by (modality, length bucket) and the batch order
    shuffled, which removes most padding.
    """

    def __init__(self, batch_size: int, max_len: int, *, packing: bool = False, group_by_length: bool = True,
                 on_error: str = "raise", seed: int = 0, window: int = 16):
        self.batch_size, self.max_len, self.packing = batch_size, max_len, packing
        self.window = window if group_by_length or packing else 1
        self.on_error, self.seed = on_error, seed
        self.counts: Counter[str] = Counter()
        """`skipped_<reason>` and `truncated` sample counts; saved in checkpoints, logged in metrics.jsonl."""
        self._recounting = False
        """True while a resumed window is read again: its items were counted before the checkpoint."""

    def _valid(self, items: Iterator[Item]) -> Iterator[Item]:
        for item in items:
            if item.error is None:
                if item.value.get("truncated") and not self._recounting:
                    self.counts["truncated"] += 1
                yield item
            elif item.reason == "bad_shard" or (self.on_error == "raise" and item.reason == "bad_sample"):
                raise DataError(item.error)
            elif not self._recounting:
                self.counts[f"skipped_{item.reason}"] += 1

    def _window_full(self, samples: int, tokens: int) -> bool:
        if self.packing:
            return tokens >= self.window * self.batch_size * self.max_len
        return samples == self.window * self.batch_size

    def __call__(self, items: Iterator[Item], state: DataState) -> Iterator[tuple[list[Row], DataState]]:
        start, skip = state.start, state.skip_batches
        window: list[dict] = []
        tokens, last = 0, start - 1
        self._recounting = skip > 0  # a window is read whole before its first batch, so it was counted then
        for item in self._valid(items):
            window.append(item.value)
            tokens += len(item.value["input_ids"])
            last = item.index
            if self._window_full(len(window), tokens):
                yield from self._emit_window(window, state.epoch, start, last + 1, skip)
                window, tokens, start, skip, self._recounting = [], 0, last + 1, 0, False
        if window:
            yield from self._emit_window(window, state.epoch, start, last + 1, skip)

    def _emit_window(self, samples: list[dict], epoch: int, start: int, end: int, skip: int):
        rng = random.Random(f"{self.seed}-{epoch}-{start}")
        batches = self._packed(samples, rng) if self.packing else self._grouped(samples, rng)
        for i, batch in enumerate(batches):
            if i < skip:
                continue
            done = i + 1 == len(batches)
            yield batch, DataState(epoch, end if done else start, 0 if done else i + 1)

    def _grouped(self, samples: list[dict], rng: random.Random) -> list[list[Row]]:
        samples = list(samples)
        if self.window > 1:
            # Shuffle, then a stable sort by length *bucket*: batches mix samples of similar length instead of
            # identical length, which in templated data means identical prompts (one task per batch).
            rng.shuffle(samples)
            samples.sort(key=lambda s: (s["modality"], len(s["input_ids"]) // LENGTH_BUCKET))
        batches = [[[s] for s in samples[i:i + self.batch_size]] for i in range(0, len(samples), self.batch_size)]
        if self.window > 1:
            rng.shuffle(batches)
        return batches

    def _packed(self, samples: list[dict], rng: random.Random) -> list[list[Row]]:
        """Rows fullest first, split into as few batches as `batch_size` allows with near-equal row counts (131
        rows at batch 8 make 17 batches of 7-8 rows, not 16 of 8 and one of 3); the few underfilled rows share
        the last batch, whose width is theirs. The batch order is shuffled."""
        samples = list(samples)
        rng.shuffle(samples)  # equal lengths pack in a seeded order, not the stream's
        rows = best_fit_decreasing(samples, self.max_len)
        rows.sort(key=lambda row: -sum(len(s["input_ids"]) for s in row))
        n_batches = -(-len(rows) // self.batch_size)
        bounds = [len(rows) * b // n_batches for b in range(n_batches + 1)]
        batches = [rows[a:b] for a, b in zip(bounds, bounds[1:])]
        rng.shuffle(batches)
        return batches


def best_fit_decreasing(samples: list[dict], max_len: int) -> list[Row]:
    """Longest samples first, each into the row it leaves least room in (a new row when none has room); a sample
    longer than max_len (the encoder truncates, so only from other callers) gets a row of its own."""
    rows: list[Row] = []
    free: list[tuple[int, int]] = []  # (tokens left, row index), sorted; full rows leave the list
    for s in sorted(samples, key=lambda s: -len(s["input_ids"])):
        n = len(s["input_ids"])
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, r = free.pop(at)
        else:
            room, r = max_len, len(rows)
            rows.append([])
        rows[r].append(s)
        if room - n > 0:
            bisect.insort(free, (room - n, r))
    return rows


def collate(rows: list[Row], pad_id: int) -> dict:
    """Rows of samples -> tensors. Positions restart per sample; `seq_ids` marks which sample each token belongs
    to (-1 for padding), so the model can build a block-diagonal causal mask for packed rows."""
    width = max(sum(len(s["input_ids"]) for s in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    seq_ids = torch.full(shape, -1, dtype=torch.long)
    media, contexts, ids, n = [], [], [], 0
    for r, row in enumerate(rows):
        at = 0
        for s in row:
            length = len(s["input_ids"])
            input_ids[r, at:at + length] = torch.tensor(s["input_ids"])
            labels[r, at:at + length] = torch.tensor(s["labels"])
            position_ids[r, at:at + length] = torch.arange(length)
            seq_ids[r, at:at + length] = n
            media.append(s.get("media") or {})
            contexts.append(s.get("media_context") or {})
            ids.append(s["id"])
            at += length
            n += 1
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "seq_ids": seq_ids,
            "media": _media(media), "media_context": _media_context(contexts), "sample_ids": ids,
            "packed": any(len(row) > 1 for row in rows),
            "supervised_tokens": int((next_token_targets(labels, seq_ids) != IGNORE).sum())}


def next_token_targets(labels: torch.Tensor, seq_ids: torch.Tensor) -> torch.Tensor:
    """Position t predicts token t+1 of the same sample (IGNORE across sample boundaries and at the end).
    The model scores these; collate counts them so every rank knows the global count before the forward pass."""
    targets = torch.full_like(labels, IGNORE)
    targets[:, :-1] = labels[:, 1:].masked_fill(seq_ids[:, 1:] != seq_ids[:, :-1], IGNORE)
    return targets


def to_device(batch: dict, device) -> dict:
    """A batch on `device`: its tensors, and those inside nested dicts (`media` holds one tensor per kind)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else to_device(v, device) if isinstance(v, dict) else v
            for k, v in batch.items()}


def padding_fraction(batch: dict) -> float:
    return float((batch["seq_ids"] < 0).float().mean())


def collate_seq2seq(rows: list[Row], pad_id: int) -> dict:
    """Encoder-decoder batches: `input_ids` (instruction) and `labels` (response) padded separately."""
    samples = [row[0] for row in rows]
    enc_len = max(len(s["input_ids"]) for s in samples)
    dec_len = max(len(s["labels"]) for s in samples)
    input_ids = torch.full((len(samples), enc_len), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), dec_len), IGNORE, dtype=torch.long)
    for i, s in enumerate(samples):
        input_ids[i, :len(s["input_ids"])] = torch.tensor(s["input_ids"])
        labels[i, :len(s["labels"])] = torch.tensor(s["labels"])
    lengths = torch.tensor([len(s["input_ids"]) for s in samples])
    real = torch.arange(enc_len)[None, :] < lengths[:, None]
    seq_ids = torch.arange(len(samples))[:, None].expand(-1, enc_len).masked_fill(~real, -1)
    return {"input_ids": input_ids, "attention_mask": (seq_ids >= 0).long(), "labels": labels, "seq_ids": seq_ids,
            "media": _media([s.get("media") or {} for s in samples]),
            "media_context": _media_context([s.get("media_context") or {} for s in samples]),
            "sample_ids": [s["id"] for s in samples],
            "packed": False, "supervised_tokens": int((labels != IGNORE).sum())}


def _media(per_sample: list[dict]) -> dict[str, torch.Tensor]:
    """Per-sample {kind: array [n, ...]} (numpy from the workers, see SampleEncoder) -> {kind: tensor}, the items of
    each kind in row order, as the sentinels of that kind appear in the batch."""
    kinds = [k for k in MEDIA_TOKEN_IDS if any(k in m for m in per_sample)]
    return {k: torch.cat([torch.as_tensor(m[k]) for m in per_sample if k in m]) for k in kinds}


def _media_context(per_sample: list[dict]) -> dict[str, dict[str, torch.Tensor]]:
    """Per-sample {kind: {name: array [n, ...]}} (the instructions context bridges read) -> {kind: {name: tensor}},
    in the same item order as `_media`."""
    kinds = [k for k in MEDIA_TOKEN_IDS if any(k in c for c in per_sample)]
    return {k: {name: torch.cat([torch.as_tensor(c[k][name]) for c in per_sample if k in c])
                for name in next(c[k] for c in per_sample if k in c)} for k in kinds}
