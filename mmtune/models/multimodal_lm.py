"""Splice bridge outputs into any Hugging Face LLM at media placeholders, and score supervised positions.

Token ids carry negative sentinels (templates.MEDIA_TOKEN_IDS: one per media kind) where media features go; `embed`
replaces each kind's, in order, with bridge(encoder(items)) rows of that kind's part, so any number of images,
videos and point clouds can sit anywhere in any turn and the LLM's vocabulary never changes. Labels at those
positions are already -100 (templates). The forward pass scores only where a label is supervised (sparse LM head):
the same loss, without paying the vocabulary-sized projection and a float32 [B, T, V] tensor for prompt, media and
padding positions; a plain linear head is left to the loss, which applies it a chunk of rows at a time.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mmtune.data.packing import next_token_targets
from mmtune.data.templates import IGNORE, MEDIA_TOKEN_IDS
from mmtune.errors import DataError
from mmtune.models.head_loss import fusable, head_loss_sum, head_token_losses
from mmtune.models.llm import is_seq2seq, llm_parts


@dataclass
class Scored:
    states: torch.Tensor
    """At the K supervised positions: [K, H] last hidden states when `head` is set (the loss applies it a chunk of
    rows at a time, head_loss.py), else [K, V] logits."""
    targets: torch.Tensor
    """[K] target ids."""
    seq: torch.Tensor
    """[K] which sample (batch["seq_ids"] numbering) each position belongs to."""
    head: nn.Linear | None = None

    @property
    def logits(self) -> torch.Tensor:
        """[K, V], materialised."""
        return self.states if self.head is None else self.head(self.states)

    def loss_sum(self) -> torch.Tensor:
        """Summed next-token cross-entropy, in fp32."""
        if self.head is None:
            return F.cross_entropy(self.states.float(), self.targets, reduction="sum")
        return head_loss_sum(self.states, self.head, self.targets)

    def token_losses(self) -> torch.Tensor:
        """[K] cross-entropy per supervised position, in fp32."""
        if self.head is None:
            return F.cross_entropy(self.states.float(), self.targets, reduction="none")
        return head_token_losses(self.states, self.head, self.targets)


class MediaPart(nn.Module):
    """One media kind's encoder and bridge: items [n, *item_shape] (and, for a bridge that reads each item's
    instruction, its context arrays) -> [n, M, hidden] in the LLM's embedding space."""

    def __init__(self, encoder: nn.Module, bridge: nn.Module, encode_context: Callable | None = None):
        super().__init__()
        self.encoder, self.bridge = encoder, bridge
        self.encode_context = encode_context
        """For a bridge that reads its item's instruction: its `context_encoder()` (text -> arrays, run in the
        DataLoader workers and at generation), taken before tuning may wrap the bridge; else None."""

    @property
    def num_tokens(self) -> int:
        """M, the LLM positions one item occupies (counts toward max_len)."""
        return self.bridge.num_tokens(self.encoder.num_tokens)

    def forward(self, items: torch.Tensor, context: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        features = self.encoder(items)
        return self.bridge(features, context) if self.encode_context else self.bridge(features)

    def zero_pass(self, like: torch.Tensor) -> torch.Tensor:
        """A zero that depends on every parameter of this part: same loss, zero gradients, same collectives."""
        blank = torch.zeros(1, *self.encoder.item_shape, device=like.device)
        return self(blank).sum().to(like.dtype) * 0


class MultimodalLM(nn.Module):
    def __init__(self, llm: nn.Module, media: dict[str, MediaPart] | None = None):
        super().__init__()
        self.llm = llm
        self.media = nn.ModuleDict(media or {})
        """Media kind (image, video, points) -> its encoder and bridge."""
        self.seq2seq = is_seq2seq(llm)
        self.media_pass_always = False
        """Run every kind's encoder and bridge on a blank item when a batch has none of that kind (set by
        distributed engines: every rank must use the same parameters in each step, or sharded collectives and
        DDP's gradient buckets hang)."""
        # A tuple, not attributes: the parts are already registered under `llm` and must not be twice.
        self._parts = llm_parts(llm) if not self.seq2seq else (None, None)
        backbone = self._parts[0]
        takes = inspect.signature(backbone.forward).parameters if backbone is not None else {}
        self._takes_positions = "position_ids" in takes
        # Scoring never reuses keys and values; a cache would be built for nothing (and activation checkpointing
        # would turn it off with a warning at every run).
        self._no_cache = {"use_cache": False} if "use_cache" in takes else {}

    @property
    def media_tokens(self) -> dict[str, int]:
        """LLM positions one media item occupies, per kind (counts toward max_len)."""
        return {kind: part.num_tokens for kind, part in self.media.items()}

    def embed(self, input_ids: torch.Tensor, media: dict[str, torch.Tensor] | None = None,
              context: dict[str, dict[str, torch.Tensor]] | None = None) -> torch.Tensor:
        """Token embeddings with each kind's features written over its sentinel positions, in order.
        [B, T] and {kind: [n, *item_shape]} (and {kind: {name: [n, ...]}} for context bridges) -> [B, T, H]."""
        media, context = media or {}, context or {}
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(input_ids < 0, 0))
        unknown = sorted(set(media) - set(self.media))
        if unknown:
            raise DataError(f"batch has {', '.join(unknown)} media but the model has no encoder for them "
                            f"(set model.media.{unknown[0]})")
        for kind, sentinel in MEDIA_TOKEN_IDS.items():
            slots = input_ids == sentinel
            if kind not in media:
                if bool(slots.any()):
                    raise DataError(f"batch has <{kind}> positions but no {kind} media (or the model has no "
                                    f"{kind} encoder)")
                if kind in self.media and self.media_pass_always:
                    embeds = embeds + self.media[kind].zero_pass(embeds)
                continue
            feats = self.media[kind](media[kind], context.get(kind)).to(embeds.dtype)  # [n, M, H]
            n_slots = int(slots.sum())
            if n_slots != feats.shape[0] * feats.shape[1]:
                raise DataError(f"batch has {n_slots} {kind} positions but {feats.shape[0]} {kind} items x "
                                f"{feats.shape[1]} tokens = {feats.shape[0] * feats.shape[1]}")
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), feats.reshape(-1, feats.shape[-1]))
        return embeds

    def hidden_states(self, batch: dict) -> torch.Tensor:
        """Last hidden states [B, T, H]. Packed rows get a block-diagonal causal mask (no attention across samples)."""
        seq = batch["seq_ids"]
        if batch.get("packed"):
            t = torch.arange(seq.shape[1], device=seq.device)
            same = seq[:, :, None] == seq[:, None, :]
            mask = (same & (t[:, None] >= t[None, :])) | torch.eye(seq.shape[1], dtype=torch.bool, device=seq.device)
            mask = mask[:, None]  # [B, 1, T, T]; padding attends only to itself so no row is all -inf
        else:
            mask = (seq >= 0).long()
        kwargs = {"position_ids": batch["position_ids"]} if self._takes_positions else {}
        backbone = self._parts[0]
        embeds = self.embed(batch["input_ids"], batch.get("media"), batch.get("media_context"))
        return backbone(inputs_embeds=embeds, attention_mask=mask, **kwargs, **self._no_cache).last_hidden_state

    def forward(self, batch: dict, sparse: bool = True) -> Scored:
        if self.seq2seq:
            return self._forward_seq2seq(batch)
        labels, seq = batch["labels"], batch["seq_ids"]
        targets = next_token_targets(labels, seq)
        keep = targets != IGNORE
        hidden = self.hidden_states(batch)
        head = self._parts[1]
        if sparse and fusable(head):
            return Scored(hidden[keep], targets[keep], seq[keep], head)
        logits = head(hidden[keep]) if sparse else head(hidden)[keep]
        return Scored(logits, targets[keep], seq[keep])

    def _forward_seq2seq(self, batch: dict) -> Scored:
        """Encoder-decoder LLMs: instruction into the encoder, response as decoder labels (not shifted here:
        the model shifts them right to make its decoder inputs)."""
        embeds = self.embed(batch["input_ids"], batch.get("media"), batch.get("media_context"))
        out = self.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"])
        keep = batch["labels"] != IGNORE
        seq = torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)
        return Scored(out.logits[keep], batch["labels"][keep], seq[keep])
