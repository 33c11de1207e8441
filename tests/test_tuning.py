"""mmtune.models.tuning: each mode trains exactly the parameters it should, and LoRA adapters round-trip through peft."""
from __future__ import annotations

import copy

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmtune.config import TUNING_MODES, LoraConfig
from mmtune.errors import ConfigError
from mmtune.models.llm import load_llm
from mmtune.models.tuning import TUNING, apply_tuning, count_parameters, save_adapter, trainable_state_dict


def _tiny(name: str) -> nn.Module:
    torch.manual_seed(0)
    return load_llm(f"tiny:{name}")[0]


def _ids() -> torch.Tensor:
    return torch.tensor([[5, 17, 230, 9, 4001, 12]])


def _lora_size(model: nn.Module, r: int, names: set[str] | None = None) -> int:
    """r * (in + out) per adapted nn.Linear: all of them but the output head, or those whose last name is in names."""
    head = model.get_output_embeddings()
    return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and m is not head and (names is None or name.rsplit(".", 1)[-1] in names))


def _randomise_lora(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p)  # peft starts B at zero; a trained adapter must change the outputs


def test_registry_matches_the_config_schema():
    assert set(TUNING) == set(TUNING_MODES)


def test_frozen_and_full():
    model = _tiny("llama")
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(apply_tuning(model, "frozen", LoraConfig(), "tuning.llm")) == (0, total)
    assert count_parameters(apply_tuning(model, "full", LoraConfig(), "tuning.llm")) == (total, total)
    assert trainable_state_dict(model).keys() == dict(model.named_parameters()).keys()


@pytest.mark.parametrize("name", ["llama", "t5"])
def test_lora_all_linear_trains_only_lora_weights(name):
    model = _tiny(name)
    expected = _lora_size(model, r=4)
    total = sum(p.numel() for p in model.parameters())
    wrapped = apply_tuning(model, "lora", LoraConfig(r=4), "tuning.llm")
    trainable = trainable_state_dict(wrapped)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert count_parameters(wrapped) == (expected, total + expected)
    task = peft.PeftModelForSeq2SeqLM if name == "t5" else peft.PeftModelForCausalLM
    assert isinstance(wrapped, task)


def test_lora_listed_target_modules():
    model = _tiny("llama")
    expected = _lora_size(model, r=2, names={"q_proj", "v_proj"})
    wrapped = apply_tuning(model, "lora", LoraConfig(r=2, target_modules=["q_proj", "v_proj"]), "tuning.llm")
    assert count_parameters(wrapped)[0] == expected


def test_lora_on_a_plain_module():
    bridge = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    wrapped = apply_tuning(bridge, "lora", LoraConfig(r=2), "tuning.bridge")
    assert count_parameters(wrapped)[0] == 2 * (8 + 16) + 2 * (16 + 4)


def test_lora_unknown_target_names_the_fields():
    with pytest.raises(ConfigError, match=r"tuning\.llm=lora on LlamaForCausalLM: tuning\.lora .*'qkv'"):
        apply_tuning(_tiny("llama"), "lora", LoraConfig(target_modules=["qkv"]), "tuning.llm")


@pytest.mark.parametrize("name", ["gpt_neox", "bloom", "opt"])
def test_bitfit_trains_only_biases(name):
    model = apply_tuning(_tiny(name), "bitfit", LoraConfig(), "tuning.llm")
    biases = {n: p for n, p in model.named_parameters() if n.endswith(".bias")}
    assert biases and trainable_state_dict(model).keys() == biases.keys()
    assert count_parameters(model)[0] == sum(p.numel() for p in biases.values())


def test_bitfit_without_biases_says_so():
    with pytest.raises(ConfigError, match=r"tuning\.llm=bitfit: LlamaForCausalLM has no bias parameters.*lora or full"):
        apply_tuning(_tiny("llama"), "bitfit", LoraConfig(), "tuning.llm")


def test_unknown_mode_lists_the_modes():
    with pytest.raises(ConfigError, match=r"tuning\.encoder: unknown tuning mode 'qlora'; known: frozen, full"):
        apply_tuning(nn.Linear(2, 2), "qlora", LoraConfig(), "tuning.encoder")


def test_trainable_state_dict_round_trips_into_a_fresh_model(tmp_path):
    model = apply_tuning(_tiny("qwen2"), "lora", LoraConfig(r=4), "tuning.llm")
    _randomise_lora(model)
    save_file({k: v.contiguous() for k, v in trainable_state_dict(model).items()}, tmp_path / "w.safetensors")
    fresh = apply_tuning(_tiny("qwen2"), "lora", LoraConfig(r=4), "tuning.llm")
    missing, unexpected = fresh.load_state_dict(load_file(tmp_path / "w.safetensors"), strict=False)
    assert not unexpected and not set(missing) & set(trainable_state_dict(model))
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(input_ids=_ids()).logits, model.eval()(input_ids=_ids()).logits)


def test_adapter_saved_with_peft_loads_with_peft(tmp_path):
    base = _tiny("llama")
    model = apply_tuning(copy.deepcopy(base), "lora", LoraConfig(r=4, dropout=0.0), "tuning.llm")
    _randomise_lora(model)
    save_adapter(model, tmp_path)
    with torch.no_grad():
        expected = model.eval()(input_ids=_ids()).logits
        assert not torch.allclose(expected, base(input_ids=_ids()).logits)  # the adapter matters
        restored = peft.PeftModel.from_pretrained(base, tmp_path)
        torch.testing.assert_close(restored.eval()(input_ids=_ids()).logits, expected)


def test_save_adapter_needs_lora(tmp_path):
    with pytest.raises(ConfigError, match="has no LoRA adapter"):
        save_adapter(_tiny("llama"), tmp_path)
