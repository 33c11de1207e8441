"""Self-attention for packed rows that skips the work the block-diagonal causal mask throws away.

With one [B, 1, T, T] mask, SDPA's CPU kernel scores every query of a row against every key: keys of other samples
and future keys are computed, then masked. Here the queries go in chunks of CHUNK positions (all rows at once), each
against the keys from the earliest start of a sample its queries belong to, in any row, up to the chunk's own end,
under the matching slice of the same mask, so results are the dense call's to float rounding. A batch of one-sample
rows costs 56% of the dense call's work; sample boundaries that all rows share save more.

Registered in transformers' attention registry as NAME: outside packed rows (generation, unpacked batches) it is
transformers' own SDPA path, unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

NAME = "mmtune_packed_sdpa"
CHUNK = 64
"""Query positions per SDPA call: smaller chunks skip more masked keys but make more calls (of 64, 128 and 256, 64
was fastest at 8 x 512 with SmolLM2's 9 heads of 64 on one thread)."""


@dataclass
class PackedRows:
    """A packed batch's attention layout from its [B, T] sample ids (-1: padding, which attends only to padding
    before it and itself): the mask every implementation honours, and the chunks only the chunked path computes."""
    seq_ids: torch.Tensor
    chunk: int = CHUNK

    @cached_property
    def mask(self) -> torch.Tensor:
        """[B, 1, T, T] block-diagonal causal mask (True: may attend)."""
        seq, length = self.seq_ids, self.seq_ids.shape[1]
        t = torch.arange(length, device=seq.device)
        same = seq[:, :, None] == seq[:, None, :]
        return ((same & (t[:, None] >= t[None, :])) | torch.eye(length, dtype=torch.bool, device=seq.device))[:, None]

    @cached_property
    def chunks(self) -> list[tuple[int, int, int]]:
        """(query start, query end, first key) per chunk of queries, the same for every row."""
        length, chunk = self.seq_ids.shape[1], self.chunk
        first_key = self.mask[:, 0].int().argmax(-1)  # [B, T]: a position's first allowed key, its sample's start
        starts = range(0, length, chunk)
        padded = F.pad(first_key, (0, len(starts) * chunk - length), value=length)
        keys_from = padded.view(-1, len(starts), chunk).amin((0, 2)).tolist()  # one device sync
        return [(a, min(a + chunk, length), s) for a, s in zip(starts, keys_from)]


@torch.compiler.disable  # the chunk plan changes every batch; compiled decoder layers call it eagerly
def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                          packed_rows: PackedRows | None = None, **kwargs):
    """transformers' attention-function signature: [B, heads, T, D] queries, [B, kv_heads, T, D] keys and
    values -> ([B, T, heads, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not _chunkable(query, key, packed_rows, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    chunks = packed_rows.chunks
    # split, not slices: each chunk's query gradient lands in its own piece instead of a zeroed whole-batch tensor
    pieces = query.split([end - start for start, end, _ in chunks], dim=2)
    out = torch.cat([F.scaled_dot_product_attention(piece, key[:, :, first:end], value[:, :, first:end],
                                                    attn_mask=packed_rows.mask[:, :, start:end, first:end],
                                                    dropout_p=dropout, scale=scaling, enable_gqa=True)
                     for piece, (start, end, first) in zip(pieces, chunks)], dim=2)
    return out.transpose(1, 2).contiguous(), None


def _chunkable(query, key, packed_rows: PackedRows | None, kwargs: dict) -> bool:
    """Packed self-attention over the planned rows, with nothing the chunked path does not implement."""
    return (packed_rows is not None and query.shape[2] == key.shape[2] == packed_rows.mask.shape[-1]
            and query.shape[1] % key.shape[1] == 0
            and not any(kwargs.get(k) is not None for k in ("sliding_window", "softcap", "position_bias", "s_aux")))


def use_packed_attention(llm) -> bool:
    """Switch an LLM running transformers' SDPA to NAME; False (nothing changed) for models that do not take their
    attention from transformers' registry (Falcon, T5, BLOOM's eager attention)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if getattr(llm.config, "_attn_implementation", None) != "sdpa" or not getattr(llm, "_supports_attention_backend",
                                                                                     False):
        return False
    AttentionInterface.register(NAME, packed_sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    llm.set_attn_implementation(NAME)
    return llm.config._attn_implementation == NAME
