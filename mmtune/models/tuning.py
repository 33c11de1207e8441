"""Which parameters of a module train: frozen, full, LoRA (through peft), BitFit (biases only) or, for an LLM, its
embeddings (input embeddings and LM head).

`apply_tuning` is the one place requires_grad is set; checkpoints hold `trainable_state_dict`, whose names are
`named_parameters` names, the same in every process that builds the model with the same tuning.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import peft
from torch import Tensor, nn
from transformers import PreTrainedModel

from mmtune.config import LoraConfig
from mmtune.errors import ConfigError
from mmtune.models.llm import is_seq2seq


def _frozen(module: nn.Module, lora: LoraConfig, field: str) -> nn.Module:
    return module.requires_grad_(False)


def _full(module: nn.Module, lora: LoraConfig, field: str) -> nn.Module:
    return module.requires_grad_(True)


def _bitfit(module: nn.Module, lora: LoraConfig, field: str) -> nn.Module:
    """BitFit (Ben Zaken et al., 2022): every bias term trains, layer-norm biases included; nothing else does."""
    biases = [p for name, p in module.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]
    if not biases:
        raise ConfigError(f"{field}=bitfit: {type(module).__name__} has no bias parameters to train "
                          "(Llama-style models have none); use lora or full")
    module.requires_grad_(False)
    for p in biases:
        p.requires_grad_(True)
    return module


def _embeddings(module: nn.Module, lora: LoraConfig, field: str) -> nn.Module:
    """Otter's LLM tuning: the input embeddings and the LM head train (so new inputs such as media markers can be
    read and written), every other LLM weight stays frozen."""
    if not isinstance(module, PreTrainedModel):
        raise ConfigError(f"{field}=embeddings: only the LLM has input embeddings and an LM head (use it for "
                          "tuning.llm)")
    module.requires_grad_(False)
    for part in (module.get_input_embeddings(), module.get_output_embeddings()):
        if part is not None:
            part.requires_grad_(True)
    return module


def _lora(module: nn.Module, lora: LoraConfig, field: str) -> nn.Module:
    """Wrap in a peft model whose LoRA matrices alone train; 'all-linear' leaves an LM's output head alone."""
    if isinstance(module, PreTrainedModel) and is_seq2seq(module):
        task = peft.TaskType.SEQ_2_SEQ_LM
    elif isinstance(module, PreTrainedModel) and module.can_generate():
        task = peft.TaskType.CAUSAL_LM
    else:
        task = None  # an encoder or bridge: a plain PeftModel
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    try:
        config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=targets, task_type=task)
        return peft.get_peft_model(module, config)
    except ValueError as e:
        raise ConfigError(f"{field}=lora on {type(module).__name__}: tuning.lora is not usable "
                          f"(r={lora.r}, target_modules={lora.target_modules!r}): {e}") from None


TuningFn = Callable[[nn.Module, LoraConfig, str], nn.Module]
TUNING: dict[str, TuningFn] = {"frozen": _frozen, "full": _full, "lora": _lora, "bitfit": _bitfit,
                               "embeddings": _embeddings}


def apply_tuning(module: nn.Module, mode: str, lora: LoraConfig, field: str) -> nn.Module:
    """Set which parameters of `module` train; returns it, or its peft wrapper for lora. `field` names the config
    key (e.g. tuning.llm) in errors."""
    if mode not in TUNING:
        raise ConfigError(f"{field}: unknown tuning mode {mode!r}; known: {', '.join(TUNING)}")
    return TUNING[mode](module, lora, field)


def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Parameters that train, by `named_parameters` name (tied weights once), detached but not copied."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def save_adapter(model: nn.Module, directory: str | Path) -> None:
    """Write peft's adapter format (adapter_config.json + adapter_model.safetensors), which
    `peft.PeftModel.from_pretrained(base, directory)` loads back."""
    if not isinstance(model, peft.PeftModel):
        raise ConfigError(f"save_adapter: {type(model).__name__} has no LoRA adapter (its tuning mode is not lora)")
    model.save_pretrained(str(directory))
