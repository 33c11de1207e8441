"""Splice bridge outputs into any Hugging Face LLM at media placeholders, and score supervised positions.

Token ids carry negative sentinels (templates.MEDIA_TOKEN_IDS) where media features go; `embed` replaces them,
in order, with bridge(encoder(pixels)) rows, so any number of images can sit anywhere in any turn and the LLM's
vocabulary never changes. Labels at those positions are already -100 (templates). The forward pass returns
logits only where a label is supervised (sparse LM head): the same loss, without paying the vocabulary-sized
projection and a float32 [B, T, V] tensor for prompt, media and padding positions.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from mmtune.data.packing import next_token_targets
from mmtune.data.templates import IGNORE, MEDIA_TOKEN_IDS
from mmtune.errors import DataError
from mmtune.models.llm import is_seq2seq, llm_parts


@dataclass
class Scored:
    logits: torch.Tensor
    """[K, V] logits at the K supervised positions."""
    targets: torch.Tensor
    """[K] target ids."""
    seq: torch.Tensor
    """[K] which sample (batch["seq_ids"] numbering) each position belongs to."""


class MultimodalLM(nn.Module):
    def __init__(self, llm: nn.Module, encoder: nn.Module | None = None, bridge: nn.Module | None = None):
        super().__init__()
        self.llm, self.encoder, self.bridge = llm, encoder, bridge
        self.seq2seq = is_seq2seq(llm)
        self.media_pass_always = False
        """Run encoder and bridge on a blank image when a batch has none (set by distributed engines: every rank
        must use the same parameters in each step, or sharded collectives and DDP's gradient buckets hang)."""
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
        if self.encoder is None:
            return {}
        return {"image": self.bridge.num_tokens(self.encoder.num_tokens)}

    def media_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] -> [n, M, hidden] in the LLM's embedding space."""
        return self.bridge(self.encoder(pixel_values))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with media features written over the sentinel positions. [B, T] -> [B, T, H]."""
        is_media = input_ids < 0
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_media, 0))
        slots = input_ids == MEDIA_TOKEN_IDS["image"]
        n_slots = int(slots.sum())
        if pixel_values is None or self.encoder is None:
            if n_slots or bool(is_media.any()):
                raise DataError("batch has media placeholders but no media (or the model has no encoder)")
            if self.encoder is not None and self.media_pass_always:
                return embeds + self._zero_media_pass(embeds)
            return embeds
        feats = self.media_features(pixel_values).to(embeds.dtype)  # [n, M, H]
        if n_slots != feats.shape[0] * feats.shape[1]:
            raise DataError(f"batch has {n_slots} image positions but {feats.shape[0]} images x {feats.shape[1]} "
                            f"tokens = {feats.shape[0] * feats.shape[1]}")
        return embeds.masked_scatter(slots.unsqueeze(-1), feats.reshape(-1, feats.shape[-1]))

    def _zero_media_pass(self, embeds: torch.Tensor) -> torch.Tensor:
        """A zero that depends on every encoder and bridge parameter: same loss, zero gradients, same collectives."""
        size = self.encoder.image_size
        blank = torch.zeros(1, 3, size, size, device=embeds.device)
        return self.media_features(blank).sum().to(embeds.dtype) * 0

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
        embeds = self.embed(batch["input_ids"], batch.get("pixel_values"))
        return backbone(inputs_embeds=embeds, attention_mask=mask, **kwargs, **self._no_cache).last_hidden_state

    def forward(self, batch: dict, sparse: bool = True) -> Scored:
        if self.seq2seq:
            return self._forward_seq2seq(batch)
        labels, seq = batch["labels"], batch["seq_ids"]
        targets = next_token_targets(labels, seq)
        keep = targets != IGNORE
        hidden = self.hidden_states(batch)
        head = self._parts[1]
        logits = head(hidden[keep]) if sparse else head(hidden)[keep]
        return Scored(logits, targets[keep], seq[keep])

    def _forward_seq2seq(self, batch: dict) -> Scored:
        """Encoder-decoder LLMs: instruction into the encoder, response as decoder labels (not shifted here:
        the model shifts them right to make its decoder inputs)."""
        embeds = self.embed(batch["input_ids"], batch.get("pixel_values"))
        out = self.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"])
        keep = batch["labels"] != IGNORE
        seq = torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)
        return Scored(out.logits[keep], batch["labels"][keep], seq[keep])
