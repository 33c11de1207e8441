"""Bring bridge outputs into any Hugging Face LLM at media placeholders, and score supervised positions.

Token ids carry negative sentinels (templates.MEDIA_TOKEN_IDS: one per media kind) where media items sit; `embed`
runs each kind's part (bridge(encoder(items))) and hands the features to the model's fusion (models/fusion.py),
which writes them over the sentinels (splice) or makes them what cross-attention blocks attend to, so any number
of images, videos and point clouds can sit anywhere in any turn and the LLM's vocabulary never changes. Labels at
those positions are already -100 (templates). The forward pass returns logits only where a label is supervised
(sparse LM head): the same loss, without paying the vocabulary-sized projection and a float32 [B, T, V] tensor for
prompt, media and padding positions; a plain linear head is left to the loss, which applies it a chunk of rows at
a time.
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
from mmtune.models.fusion import Fusion, Splice
from mmtune.models.head_loss import fusable, head_loss_sum, head_token_losses
from mmtune.models.llm import is_seq2seq, llm_parts
from mmtune.models.packed_attention import NAME as PACKED_ATTENTION, PackedRows


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
    def __init__(self, llm: nn.Module, media: dict[str, MediaPart] | None = None, fusion: Fusion | None = None):
        super().__init__()
        self.llm = llm
        self.media = nn.ModuleDict(media or {})
        """Media kind (image, video, points) -> its encoder and bridge."""
        self.fusion = fusion if fusion is not None else Splice()
        """How the media features reach the LLM (model.fusion)."""
        self.seq2seq = is_seq2seq(llm)
        self.media_pass_always = False
        """Run every kind's encoder and bridge on a blank item when a batch has none of that kind (set by
        distributed engines: every rank must use the same parameters in each step, or sharded collectives and
        DDP's gradient buckets hang)."""
        self.head_whole_after_forward = True
        """The LM head's weight is still whole when the loss is taken after the forward pass, so the loss may apply
        the head a chunk at a time (head_loss.py). Engines that gather sharded weights only inside the forward
        (FSDP2, ZeRO-3) set it False: the head then runs inside the forward, as a module."""
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
        return {kind: self.fusion.item_tokens(part.num_tokens) for kind, part in self.media.items()}

    def embed(self, input_ids: torch.Tensor, media: dict[str, torch.Tensor] | None = None,
              context: dict[str, dict[str, torch.Tensor]] | None = None,
              seq_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The LLM's input for these rows: token embeddings with each kind's features brought in by the fusion
        (written over its sentinel positions, or, for cross-attention, held for the blocks of the next LLM calls).
        [B, T] and {kind: [n, *item_shape]} (and {kind: {name: [n, ...]}} for context bridges, [B, T] sample ids
        of packed rows; None: one sample per row) -> [B, T, H]."""
        media, context = media or {}, context or {}
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(input_ids < 0, 0))
        unknown = sorted(set(media) - set(self.media))
        if unknown:
            raise DataError(f"batch has {', '.join(unknown)} media but the model has no encoder for them "
                            f"(set model.media.{unknown[0]})")
        features = {}
        for kind, sentinel in MEDIA_TOKEN_IDS.items():
            if kind in media:
                features[kind] = self.media[kind](media[kind], context.get(kind)).to(embeds.dtype)  # [n, M, H]
                continue
            if bool((input_ids == sentinel).any()):
                raise DataError(f"batch has <{kind}> positions but no {kind} media (or the model has no "
                                f"{kind} encoder)")
            if kind in self.media and self.media_pass_always:
                embeds = embeds + self.media[kind].zero_pass(embeds)
        return self.fusion(embeds, input_ids, seq_ids, features)

    def hidden_states(self, batch: dict, embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states [B, T, H] of the batch's ids with media brought in, or of `embeds` ([B, T, H], for
        callers that write more than media over the embeddings). Packed rows get a block-diagonal causal mask (no
        attention across samples)."""
        seq = batch["seq_ids"]
        kwargs = {"position_ids": batch["position_ids"]} if self._takes_positions else {}
        if batch.get("packed"):
            rows = PackedRows(seq)
            mask = rows.mask
            if getattr(self.llm.config, "_attn_implementation", None) == PACKED_ATTENTION:
                kwargs["packed_rows"] = rows  # models/packed_attention.py: skips what the mask drops
        else:
            mask = (seq >= 0).long()
        backbone = self._parts[0]
        if embeds is None:
            embeds = self.embed(batch["input_ids"], batch.get("media"), batch.get("media_context"), seq)
        return backbone(inputs_embeds=embeds, attention_mask=mask, **kwargs, **self._no_cache).last_hidden_state

    def forward(self, batch: dict, sparse: bool = True) -> Scored:
        if self.seq2seq:
            return self._forward_seq2seq(batch)
        labels, seq = batch["labels"], batch["seq_ids"]
        targets = next_token_targets(labels, seq)
        keep = targets != IGNORE
        hidden = self.hidden_states(batch)
        head = self._parts[1]
        if sparse and self.head_whole_after_forward and fusable(head):
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
