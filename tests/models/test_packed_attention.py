"""Packed rows' chunked attention: the dense block-diagonal mask's outputs and gradients, through a whole model
too; transformers' own SDPA path everywhere else; models outside transformers' attention registry untouched."""
import pytest
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from mmtune.models.llm import load_llm
from mmtune.models.objectives import sft
from mmtune.models.packed_attention import NAME, PackedRows, packed_sdpa_attention, use_packed_attention
from tests.models.test_multimodal_lm import _batch, _model

ROWS = [[40, 3, 70, 37], [150], [1, 1, 100, 20], [90]]  # sample lengths per row; the rest is padding


def _seq_ids(length: int) -> torch.Tensor:
    seq = torch.full((len(ROWS), length), -1)
    for row, lengths in zip(seq, ROWS):
        row[:sum(lengths)] = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return seq


class _Attention(nn.Module):
    num_key_value_groups, is_causal = 2, True


def _attend(function, rows: PackedRows, chunk_kwargs: dict):
    torch.manual_seed(0)
    q, k, v = (torch.randn(len(ROWS), heads, rows.mask.shape[-1], 16, requires_grad=True) for heads in (4, 2, 2))
    out, _ = function(_Attention(), q, k, v, rows.mask, scaling=0.25, **chunk_kwargs)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out, q.grad, k.grad, v.grad


@pytest.mark.parametrize("chunk", [16, 64, 200])
def test_chunks_give_the_dense_masks_outputs_and_gradients(chunk):
    rows = PackedRows(_seq_ids(150), chunk)
    assert rows.chunks[0] == (0, min(chunk, 150), 0)
    dense = _attend(sdpa_attention_forward, rows, {})
    chunked = _attend(packed_sdpa_attention, rows, {"packed_rows": rows})
    for ours, theirs in zip(chunked, dense):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


def test_a_chunk_starts_its_keys_at_its_earliest_querys_sample_in_any_row():
    rows = PackedRows(_seq_ids(150)[[0, 2]], 16)  # samples start at 0, 40, 43, 113; at 0, 1, 2, 102, padding 122
    assert rows.chunks[:4] == [(0, 16, 0), (16, 32, 0), (32, 48, 0), (48, 64, 2)]
    assert rows.chunks[-4:] == [(96, 112, 2), (112, 128, 43), (128, 144, 113), (144, 150, 113)]
    assert PackedRows(_seq_ids(150)[[0]], 16).chunks[3] == (48, 64, 43)


def test_without_packed_rows_it_is_transformers_sdpa():
    rows = PackedRows(_seq_ids(150))
    for ours, theirs in zip(_attend(packed_sdpa_attention, rows, {}), _attend(sdpa_attention_forward, rows, {})):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


@pytest.mark.parametrize("compiled", [False, True])
def test_a_packed_training_step_equals_the_dense_masks(compiled):
    """Compiled decoder layers call the chunked path eagerly (it changes with every batch's plan)."""
    def step(chunked: bool):
        model, tok = _model("tiny:llama", "tuning.llm=full", "data.packing=true",
                            f"train.packed_attention={'chunked' if chunked else 'mask'}",
                            f"train.compile={str(compiled and chunked).lower()}")
        assert (model.llm.config._attn_implementation == NAME) == chunked
        model.train()
        loss = sft(model, _batch(model, tok, packed=True)).loss_sum
        loss.backward()
        return float(loss.detach()), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = step(True)
    dense_loss, dense_grads = step(False)
    assert loss == pytest.approx(dense_loss, abs=1e-5)
    assert grads.keys() == dense_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, dense_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("llm, switched", [("tiny:llama", True), ("tiny:qwen2", True), ("tiny:falcon", False),
                                           ("tiny:bloom", False), ("tiny:t5", False)])
def test_only_models_on_transformers_attention_registry_switch(llm, switched):
    model, _ = load_llm(llm)
    before = model.config._attn_implementation
    assert use_packed_attention(model) == switched
    assert model.config._attn_implementation == (NAME if switched else before)
