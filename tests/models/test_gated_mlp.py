"""gated_mlp: every SwiGLU MLP of a transformers family is found and trains exactly as eagerly (LoRA on its
projections included), other MLPs are left alone, and the chunked function's gradients are right across chunks."""
import peft
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from mmtune.models import gated_mlp
from tests.models.test_multimodal_lm import _model

SWIGLU_FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]
OTHER_MLPS = ["gemma", "gpt2"]  # GELU-gated; GELU MLP


def _tiny(model_type: str):
    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"{model_type} is not in this transformers")
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=64, n_embd=32, n_layer=2,
                               n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                               eos_token_id=0, pad_token_id=0)
    return AutoModelForCausalLM.from_config(cfg)


def _loss_and_grads(model) -> tuple[float, dict]:
    ids = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(1))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss), grads


def _assert_fused_like_eager(model, expected_fused: int):
    loss, grads = _loss_and_grads(model)
    assert gated_mlp.fuse_gated_mlps(model) == expected_fused
    fused_loss, fused_grads = _loss_and_grads(model)
    assert fused_loss == pytest.approx(loss, abs=1e-6)
    assert fused_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("model_type", SWIGLU_FAMILIES)
def test_swiglu_mlps_are_fused_and_train_as_eagerly(model_type, monkeypatch):
    monkeypatch.setattr(gated_mlp, "CHUNK_ROWS", 7)  # 80 rows: several chunks and a short last one
    _assert_fused_like_eager(_tiny(model_type), expected_fused=2)


@pytest.mark.parametrize("model_type", OTHER_MLPS)
def test_other_mlps_are_left_alone(model_type):
    assert gated_mlp.fuse_gated_mlps(_tiny(model_type)) == 0


def test_lora_on_the_projections_trains_as_eagerly(monkeypatch):
    monkeypatch.setattr(gated_mlp, "CHUNK_ROWS", 7)
    model = peft.get_peft_model(_tiny("llama"), peft.LoraConfig(r=4, target_modules=["gate_proj", "up_proj"],
                                                                init_lora_weights=False))
    _assert_fused_like_eager(model, expected_fused=2)


def test_silu_product_gradients(monkeypatch):
    monkeypatch.setattr(gated_mlp, "CHUNK_ROWS", 3)
    gate, up = (torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(gated_mlp.SiluProduct.apply, (gate, up))


def test_autocast_runs_the_eager_ops():
    """Under autocast each op picks its own dtype, so the MLP runs as transformers wrote it."""
    model = _tiny("llama")
    mlp = model.model.layers[0].mlp
    x = torch.randn(3, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = mlp(x)
        gated_mlp.fuse_gated_mlps(model)
        assert torch.equal(mlp(x), eager)


@pytest.mark.parametrize("compiled", [False, True])
def test_build_model_fuses_unless_compiling(compiled):
    model, _ = _model("tiny:llama", "tuning.llm=full", f"train.compile={compiled}")
    mlps = [layer.mlp for layer in model.llm.model.layers]
    assert all(("forward" in vars(mlp)) != compiled for mlp in mlps)
