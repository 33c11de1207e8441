"""Fusions: how media features reach the LLM (`model.fusion`).

`FUSIONS` maps `model.fusion.name` to a class built as `cls(args, llm, kinds)`: `args` is the class's typed `Args`
(from `model.fusion.args`, checked when the recipe loads), `llm` the (tuned) Hugging Face model, `kinds` the media
kinds the model takes. A fusion decides how many row positions one media item occupies (`item_tokens`, known before
the forward pass, so rows are planned and packed as usual) and, called with the token embeddings, the row ids and
each kind's bridge features, returns the embeddings the LLM reads.

`splice` (LLaVA) writes an item's M bridge tokens over the M sentinel positions of its placeholder.

`cross_attention` (Flamingo, OpenFlamingo, Otter) gives an item one row position holding a learned marker embedding
of its kind, and makes its bridge tokens the keys and values of gated cross-attention blocks run before every k-th
decoder layer of the unchanged Hugging Face model (forward pre-hooks on its decoder layers: no forked model code,
the LLM's parameter names stay as they are, the blocks' are `fusion.blocks.*`). A block adds
tanh(attn_gate) * cross-attention, then tanh(ff_gate) * feed-forward, with both gates starting at 0 (the LLM is
unchanged at initialisation). Each position attends to the most recent media item at or before it in its own
sample only; a position with none (text before any media, padding, text-only samples) gets exactly zero from
every block. Calling the fusion (from `MultimodalLM.embed`) hands it the rows' media; the LLM calls that follow
(one training forward, its activation-checkpoint recomputation, every step of a generation) attend to them, and
generated tokens to the last item of their prompt.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mmtune.config import ComponentConfig, check_choice, from_dict
from mmtune.data.templates import MEDIA_TOKEN_IDS
from mmtune.errors import ConfigError, DataError
from mmtune.models.attention import Attention, feed_forward
from mmtune.models.llm import is_seq2seq, llm_parts

KEY = "model.fusion"


class Fusion(Protocol):
    """What MultimodalLM relies on; every registered fusion is an nn.Module with these (weights under `fusion.`)."""

    Args: type
    """Typed arguments (a dataclass) read from model.fusion.args."""

    def item_tokens(self, bridge_tokens: int) -> int:
        """Row positions one media item occupies, for a bridge that makes `bridge_tokens` tokens of it."""

    def __call__(self, embeds: torch.Tensor, input_ids: torch.Tensor, seq_ids: torch.Tensor | None,
                 features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token embeddings [B, T, H] (sentinel positions hold a placeholder row), ids [B, T], sample ids [B, T]
        (None: one sample per row) and {kind: [n, M, H]} bridge features in row order -> the LLM's input [B, T, H]."""


@dataclass
class NoArgs:
    """splice takes no arguments: an item occupies as many positions as its bridge makes tokens."""


class Splice(nn.Module):
    """Bridge tokens written into the row where the placeholder stood; no parameters."""

    Args = NoArgs

    def __init__(self, args: NoArgs | None = None, llm: nn.Module | None = None, kinds: tuple[str, ...] = ()):
        super().__init__()

    def item_tokens(self, bridge_tokens: int) -> int:
        return bridge_tokens

    def forward(self, embeds, input_ids, seq_ids, features):
        for kind, feats in features.items():
            slots = media_slots(input_ids, kind, feats)
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), feats.reshape(-1, feats.shape[-1]))
        return embeds


def media_slots(input_ids: torch.Tensor, kind: str, feats: torch.Tensor, per_item: int | None = None) -> torch.Tensor:
    """[B, T] mask of `kind`'s sentinel positions; DataError unless there are `per_item` (default: the bridge's M)
    of them for each of the n items."""
    slots = input_ids == MEDIA_TOKEN_IDS[kind]
    n, m = feats.shape[0], feats.shape[1] if per_item is None else per_item
    if int(slots.sum()) != n * m:
        raise DataError(f"batch has {int(slots.sum())} {kind} positions but {n} {kind} items x {m} tokens = {n * m}")
    return slots


@dataclass
class CrossAttentionArgs:
    every: int = 1
    """A block before every `every`-th decoder layer (layers every-1, 2*every-1, ...: OpenFlamingo's
    cross_attn_every_n_layers; 1: before each layer)."""
    heads: int = 8
    """Attention heads of each block."""
    dim_head: int = 64
    """Width of each head."""
    ff_mult: int = 4
    """Feed-forward width as a multiple of the LLM's."""

    def __post_init__(self):
        for name in ("every", "heads", "dim_head", "ff_mult"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{KEY}.args.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class MediaRows:
    """What the rows given to the fusion hold, for the LLM calls that follow."""
    memory: torch.Tensor
    """[B, I * M, H]: the bridge tokens of each row's items in row order, each padded to M tokens."""
    real: torch.Tensor
    """[B, I * M] bool: a real token (not padding of a shorter item, nor of a row with fewer items)."""
    item: torch.Tensor
    """[B, T]: which of its row's items each position attends to (meaningful where `has`)."""
    has: torch.Tensor
    """[B, T] bool: an item of the same sample precedes the position (or is at it)."""
    per_item: int
    """M."""


@dataclass
class MediaView:
    """MediaRows seen from the positions of one LLM call, as the blocks use them."""
    memory: torch.Tensor
    """[B, K, H] keys and values."""
    allowed: torch.Tensor
    """[B, 1, T, K] bool: the keys each position may attend to (all of them where it has no item, so no softmax
    row is empty; its output is zeroed by `has`)."""
    has: torch.Tensor
    """[B, T, 1] 1.0 where the position has an item, else 0.0."""


class GatedCrossAttentionBlock(nn.Module):
    """x + tanh(attn_gate) * cross-attention(x, media), then + tanh(ff_gate) * feed-forward; both zero where a
    position has no item."""

    def __init__(self, dim: int, media_dim: int, args: CrossAttentionArgs):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, media_dim, args.heads, args.dim_head)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = feed_forward(dim, args.ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, media: MediaView) -> torch.Tensor:
        has = media.has.to(x.dtype)
        x = x + self.attn_gate.tanh() * self.attn(self.norm(x), media.memory.to(x.dtype), media.allowed) * has
        return x + self.ff_gate.tanh() * self.ff(x) * has


class CrossAttention(nn.Module):
    """Gated cross-attention blocks before every k-th decoder layer, and one learned marker embedding per media
    kind at each item's row position."""

    Args = CrossAttentionArgs

    def __init__(self, args: CrossAttentionArgs, llm: nn.Module, kinds: tuple[str, ...]):
        super().__init__()
        if not kinds:
            raise ConfigError(f"{KEY}.name: cross_attention attends to media, but the model has none "
                              "(set model.media)")
        if is_seq2seq(llm):
            raise ConfigError(f"{KEY}.name: cross_attention wraps the decoder layers of a decoder-only LLM; "
                              f"{type(llm).__name__} is an encoder-decoder model (use splice)")
        backbone = llm_parts(llm)[0]
        layers = decoder_layers(backbone)
        where = [i for i in range(len(layers)) if (i + 1) % args.every == 0]
        if not where:
            raise ConfigError(f"{KEY}.args.every: {args.every} is more than the LLM's {len(layers)} decoder "
                              "layers, so no block would be inserted")
        embedding = llm.get_input_embeddings().weight
        self.kinds = kinds
        self.markers = nn.Parameter(torch.randn(len(kinds), embedding.shape[1]) * float(embedding.detach().std()))
        """Row [i]: the input embedding at each item of kinds[i] (like a new vocabulary token)."""
        self.blocks = nn.ModuleList(GatedCrossAttentionBlock(llm.config.hidden_size, embedding.shape[1], args)
                                    for _ in where)
        self.rows: MediaRows | None = None
        self.view: MediaView | None = None
        backbone.register_forward_pre_hook(self._before_llm, with_kwargs=True)
        for block, i in enumerate(where):
            layers[i].register_forward_pre_hook(functools.partial(self._before_layer, block), with_kwargs=True)

    def item_tokens(self, bridge_tokens: int) -> int:
        return 1

    def forward(self, embeds, input_ids, seq_ids, features):
        marker = input_ids < 0  # sentinels are the only negative ids
        for kind, feats in features.items():
            media_slots(input_ids, kind, feats, per_item=1)
        kind_of = torch.zeros_like(input_ids)
        for i, kind in enumerate(self.kinds):
            kind_of = kind_of.masked_fill(input_ids == MEDIA_TOKEN_IDS[kind], i)
        self.rows = self._rows(input_ids, marker, seq_ids, features, embeds)
        return torch.where(marker[..., None], self.markers[kind_of].to(embeds.dtype), embeds)

    def _rows(self, input_ids, marker, seq_ids, features, embeds) -> MediaRows:
        """Each row's items in order (an item's place is its marker's rank in the row) and, for every position,
        the latest marker at or before it, kept only when it belongs to the same sample."""
        rank = marker.long().cumsum(1)  # markers at or before each position
        per_row = max(int(rank[:, -1].max()) if rank.numel() else 0, 1)
        per_item = max((f.shape[1] for f in features.values()), default=1)
        memory = embeds.new_zeros(input_ids.shape[0], per_row, per_item, self.markers.shape[1])
        real = torch.zeros(memory.shape[:3], dtype=torch.bool, device=memory.device)
        for kind, feats in features.items():
            rows, cols = (input_ids == MEDIA_TOKEN_IDS[kind]).nonzero(as_tuple=True)  # row-major: item order
            place = rank[rows, cols] - 1
            memory = memory.index_put((rows, place), F.pad(feats, (0, 0, 0, per_item - feats.shape[1])))
            real[rows, place, :feats.shape[1]] = True
        at = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        last = torch.where(marker, at, -1).cummax(1).values
        has = last >= 0
        if seq_ids is not None:
            has &= (seq_ids >= 0) & (seq_ids.gather(1, last.clamp(min=0)) == seq_ids)
        return MediaRows(memory.flatten(1, 2), real.flatten(1, 2), (rank - 1).clamp(min=0), has, per_item)

    def _before_llm(self, backbone, args, kwargs) -> None:
        """The view of the rows from this call's positions: [past, past + length) of the sequence, where `past`
        is what the KV cache holds; positions past the prompt (generated tokens) see what its last one sees."""
        rows = self.rows
        if rows is None:
            self.view = None
            return
        inputs = kwargs.get("inputs_embeds")
        inputs = inputs if inputs is not None else kwargs.get("input_ids", args[0] if args else None)
        if inputs.shape[0] != rows.item.shape[0]:
            raise RuntimeError(f"{KEY}: the LLM was called with {inputs.shape[0]} rows after media for "
                               f"{rows.item.shape[0]} were given; call it through MultimodalLM (embed, then the LLM)")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        at = torch.arange(past, past + inputs.shape[1], device=rows.item.device).clamp(max=rows.item.shape[1] - 1)
        item, has = rows.item[:, at], rows.has[:, at]
        key_item = torch.arange(rows.real.shape[1], device=at.device) // rows.per_item
        allowed = ((key_item == item[..., None]) & rows.real[:, None]) | ~has[..., None]
        self.view = MediaView(rows.memory, allowed[:, None], has[..., None])

    def _before_layer(self, block: int, layer, args, kwargs):
        if self.view is None:
            return None
        if args:
            return (self.blocks[block](args[0], self.view), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self.blocks[block](kwargs["hidden_states"], self.view)}


def decoder_layers(backbone: nn.Module, field: str = f"{KEY}.name") -> nn.ModuleList:
    """The decoder layers of a Hugging Face backbone: its ModuleList of config.num_hidden_layers modules; else
    ConfigError naming `field`, the setting that needs them."""
    count = backbone.config.num_hidden_layers
    found = next((m for m in backbone.modules() if isinstance(m, nn.ModuleList) and len(m) == count), None)
    if found is None:
        raise ConfigError(f"{field}: cannot find the {count} decoder layers of {type(backbone).__name__}")
    return found


FUSIONS: dict[str, type] = {"splice": Splice, "cross_attention": CrossAttention}


def fusion_args(cfg: ComponentConfig):
    """`model.fusion.args` as the fusion's typed Args; ConfigError names the bad key."""
    check_choice(cfg.name, FUSIONS, f"{KEY}.name")
    cls = FUSIONS[cfg.name]
    if cfg.args and not dataclasses.fields(cls.Args):
        raise ConfigError(f"{KEY}.args.{next(iter(cfg.args))}: unknown argument; {cfg.name} takes none")
    return from_dict(cls.Args, cfg.args, where=f"fusion {cfg.name!r}", prefix=f"{KEY}.args.")


def build_fusion(cfg: ComponentConfig, llm: nn.Module, kinds: tuple[str, ...]) -> Fusion:
    return FUSIONS[cfg.name](fusion_args(cfg), llm, kinds)
