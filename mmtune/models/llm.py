"""Any Hugging Face language model from one model source string, with a tokenizer whose ids fit it.

A source is `tiny:NAME` (built from TINY for tests and demos), a name in WEIGHTS, a .gguf file (dequantised once
into a cached plain directory) or a local Hugging Face directory. Nothing is downloaded and no remote code runs.
The returned model's vocabulary covers the tokenizer, and its config's pad/bos/eos ids are the tokenizer's.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import peft
import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, PretrainedConfig,
                          PreTrainedModel, PreTrainedTokenizerBase)

from mmtune.config import check_choice
from mmtune.errors import ConfigError
from mmtune.models.weights import WEIGHTS, cache_dir, gguf_to_hf, resolve

TINY_PREFIX = "tiny:"
TINY_TOKENIZER = "smollm2-135m"

# Tiny members of the usual families: hidden 64, 2 layers, 4 heads, no dropout (so train-mode runs are
# deterministic), vocabulary set from the tokenizer. Token embeddings make up most of their 2-7 M parameters.
TINY: dict[str, dict] = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  tie_word_embeddings=True),
    # The built-in demo's LLM: wide enough to route each question to what the image tokens say.
    "llama-demo": dict(model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                       tie_word_embeddings=True),
    "gpt_neox": dict(model_type="gpt_neox", hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=4, rotary_pct=0.25, max_position_embeddings=2048,
                     tie_word_embeddings=False),  # Pythia keeps a separate output embedding
    "bloom": dict(model_type="bloom", hidden_size=64, n_layer=2, n_head=4),
    # word_embed_proj_dim < hidden_size, as in OPT-350m: project_in/project_out sit inside the decoder
    "opt": dict(model_type="opt", hidden_size=64, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4,
                word_embed_proj_dim=32, max_position_embeddings=2048, dropout=0.0, attention_dropout=0.0),
    "falcon": dict(model_type="falcon", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   multi_query=True, parallel_attn=True, bias=False),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  tie_word_embeddings=True),
    "t5": dict(model_type="t5", d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
               dropout_rate=0.0),
}


def load_llm(source: str, *, tokenizer: str = "",
             dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from a model source (see the module docstring), in eval mode like `from_pretrained`.

    `tokenizer` names another source for the tokenizer (default: the model's own; SmolLM2's for tiny models).
    A tokenizer without a pad token gets its eos token as pad. Raises ConfigError naming model.llm or
    model.tokenizer for a missing path, an unknown tiny name or a model transformers cannot build.
    """
    tok = load_tokenizer(tokenizer or (TINY_TOKENIZER if source.startswith(TINY_PREFIX) else source),
                         field="model.tokenizer" if tokenizer else "model.llm")
    if source.startswith(TINY_PREFIX):
        model = _build_tiny(source[len(TINY_PREFIX):], tok, dtype)
    else:
        model = _load_pretrained(_resolve_dir(source, "model.llm"), dtype)
        if model.get_input_embeddings().num_embeddings < len(tok):
            model.resize_token_embeddings(len(tok))
        _sync_special_tokens(model, tok)
    return model.eval(), tok


def load_tokenizer(source: str, field: str = "model.tokenizer") -> PreTrainedTokenizerBase:
    """The tokenizer of a model source (not `tiny:`), with a pad token (eos when the tokenizer has none)."""
    path = _resolve_dir(source, field)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{field}: no usable tokenizer in {path} ({e})") from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError(f"{field}: the tokenizer in {path} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def is_seq2seq(model: nn.Module) -> bool:
    """True for encoder-decoder models (T5, BART), also behind a peft wrapper."""
    config = getattr(_unwrap(model), "config", None)
    return bool(getattr(config, "is_encoder_decoder", False))


def llm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(backbone, lm_head) of a causal LM, possibly peft-wrapped, so that `lm_head(backbone(...).last_hidden_state)`
    equals `model(...).logits`; the trainer then applies the head only where a label is supervised.

    `backbone` takes input_ids or inputs_embeds, attention_mask and position_ids. Some families change the logits
    after the head (Gemma-2 soft-capping, Cohere's logit scale); a 4-token probe catches those and raises
    ConfigError rather than training on different logits. Call it once, at setup.
    """
    base = _unwrap(model)
    if is_seq2seq(base):
        raise ConfigError(f"{type(base).__name__} is an encoder-decoder model; it has no causal backbone to split "
                          "(set train.sparse_lm_head=false)")
    backbone, lm_head = base.base_model, base.get_output_embeddings()
    if lm_head is None or backbone is base:
        raise ConfigError(f"{type(base).__name__} is not a causal LM with an output embedding")
    _check_parts(model, backbone, lm_head)
    return backbone, lm_head


def _check_parts(model: nn.Module, backbone: nn.Module, lm_head: nn.Module) -> None:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    ids = torch.arange(1, 5, device=lm_head.weight.device)[None]  # (1, 4)
    mask = torch.ones_like(ids)
    try:
        with torch.no_grad():
            split = lm_head(backbone(input_ids=ids, attention_mask=mask).last_hidden_state)
            full = model(input_ids=ids, attention_mask=mask).logits
    finally:
        for m, training in modes.items():
            m.training = training
    if not torch.allclose(split.float(), full.float(), rtol=1e-3, atol=1e-4):
        raise ConfigError(f"{type(_unwrap(model)).__name__} transforms its logits after the LM head, so they cannot "
                          "be computed at supervised positions only; set train.sparse_lm_head=false")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.get_base_model() if isinstance(model, peft.PeftModel) else model


def _build_tiny(name: str, tok: PreTrainedTokenizerBase, dtype: torch.dtype) -> PreTrainedModel:
    check_choice(name, TINY, "model.llm", shown_prefix=TINY_PREFIX)
    kwargs = dict(TINY[name])
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = AutoConfig.for_model(kwargs.pop("model_type"), vocab_size=len(tok), **ids, **kwargs)
    if config.is_encoder_decoder:
        config.decoder_start_token_id = tok.pad_token_id  # T5 starts decoding from pad
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return _with_attention(lambda attn: auto.from_config(config, dtype=dtype, attn_implementation=attn))


def _load_pretrained(path: Path, dtype: torch.dtype) -> PreTrainedModel:
    config = _plain_config(path)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    try:
        return _with_attention(lambda attn: auto.from_pretrained(path, config=config, dtype=dtype,
                                                                 attn_implementation=attn, trust_remote_code=False))
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.llm: cannot load {path} as a language model ({e})") from None


def _with_attention(build):
    """PyTorch SDPA where the architecture has it, eager attention otherwise (BLOOM)."""
    try:
        return build("sdpa")
    except ValueError as e:
        if "scaled_dot_product_attention" not in str(e):
            raise
        return build("eager")


def _plain_config(path: Path) -> PretrainedConfig:
    """The directory's config; a GGUF record left by the conversion is dropped, as the weights there are plain."""
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.llm: {path} is not a Hugging Face model directory ({e})") from None
    quant = getattr(config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    if str(getattr(method, "value", method)) == "gguf":
        del config.quantization_config
    return config


def _sync_special_tokens(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> None:
    """Make the config's pad/bos/eos ids the tokenizer's; generation keeps its own eos list but gains a pad id."""
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tok, name)
        if value is not None:
            setattr(model.config, name, value)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id


def _resolve_dir(source: str, field: str) -> Path:
    """A registered name, a .gguf file or a directory -> a local Hugging Face directory."""
    if source in WEIGHTS:
        return resolve(source)
    if source.startswith(TINY_PREFIX):
        raise ConfigError(f"{field}: {source} builds a model without a tokenizer; name a tokenizer source instead")
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return gguf_to_hf(path, _gguf_cache(path))
    if path.is_file():
        raise ConfigError(f"{field}: {source} is a file but not a .gguf; expected a Hugging Face model directory")
    raise ConfigError(f"{field}: no such file or directory: {source} (expected a Hugging Face model directory, "
                      f"a .gguf file, {TINY_PREFIX}NAME or one of {sorted(WEIGHTS)})")


def _gguf_cache(path: Path) -> Path:
    """Cache directory of a GGUF file's plain copy, keyed by its path, mtime and size (a changed file converts anew)."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_mtime_ns}:{stat.st_size}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{path.stem}-{key}"
