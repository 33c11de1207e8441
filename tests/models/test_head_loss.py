"""Chunked LM-head cross-entropy: the loss and gradients of F.cross_entropy over whole logits, in any number of
chunks, with or without bias, under any incoming gradient; heads it cannot fuse are applied by the model."""
import peft
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmtune.data.packing import collate
from mmtune.models import head_loss
from mmtune.models.head_loss import fusable, head_loss_sum, head_token_losses
from mmtune.models.llm import load_llm
from mmtune.models.multimodal_lm import MultimodalLM


def _case(bias: bool, rows: int = 37, vocabulary: int = 50, width: int = 16):
    torch.manual_seed(0)
    head = nn.Linear(width, vocabulary, bias=bias)
    hidden = torch.randn(rows, width, requires_grad=True)
    return hidden, head, torch.randint(0, vocabulary, (rows,))


def _grads(loss, hidden, head):
    (loss * 0.37).backward()  # any incoming gradient, as the trainer's 1/count scale
    grads = [hidden.grad.clone(), *(p.grad.clone() for p in head.parameters())]
    hidden.grad = None
    head.zero_grad()
    return grads


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_elements", [50 * 5, 50 * 37, 2**24])  # 8 chunks (the last short), 1, 1
def test_same_loss_and_gradients_as_whole_logits(monkeypatch, bias, chunk_elements):
    monkeypatch.setattr(head_loss, "CHUNK_ELEMENTS", chunk_elements)
    hidden, head, targets = _case(bias)
    ours = head_loss_sum(hidden, head, targets)
    ours_grads = _grads(ours, hidden, head)
    whole = F.cross_entropy(head(hidden), targets, reduction="sum")
    whole_grads = _grads(whole, hidden, head)
    torch.testing.assert_close(ours, whole, atol=1e-5, rtol=1e-5)
    for a, b in zip(ours_grads, whole_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head_token_losses(hidden, head, targets),
                               F.cross_entropy(head(hidden), targets, reduction="none"))


def test_bf16_autocast_keeps_fp32_gradients(monkeypatch):
    """Under autocast the chunk products are bf16 and the weight gradient fp32: summed, not accumulated in place."""
    monkeypatch.setattr(head_loss, "CHUNK_ELEMENTS", 50 * 5)
    hidden, head, targets = _case(bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = head_loss_sum(hidden, head, targets)
        ours_grads = _grads(ours, hidden, head)
        whole = F.cross_entropy(head(hidden).float(), targets, reduction="sum")
        whole_grads = _grads(whole, hidden, head)
    assert ours_grads[1].dtype == torch.float32
    torch.testing.assert_close(ours, whole, atol=0.05, rtol=0.01)
    for a, b in zip(ours_grads, whole_grads):
        torch.testing.assert_close(a, b, atol=0.02, rtol=0.02)


def test_frozen_head_and_no_grad(monkeypatch):
    monkeypatch.setattr(head_loss, "CHUNK_ELEMENTS", 50 * 4)
    hidden, head, targets = _case(bias=True)
    whole = F.cross_entropy(head(hidden), targets, reduction="sum")
    with torch.no_grad():
        torch.testing.assert_close(head_loss_sum(hidden, head, targets), whole.detach())
    head.requires_grad_(False)  # LoRA: a frozen (tied) head, gradients only towards the hidden states
    head_loss_sum(hidden, head, targets).backward()
    expected, = torch.autograd.grad(F.cross_entropy(head(hidden), targets, reduction="sum"), hidden)
    torch.testing.assert_close(hidden.grad, expected)
    assert head.weight.grad is None


def test_the_model_leaves_only_a_plain_linear_head_to_the_loss():
    llm, tok = load_llm("tiny:llama")
    ids = tok("a b c d e").input_ids
    batch = collate([[{"id": "0", "input_ids": ids, "labels": ids, "media": {}}]], tok.pad_token_id)
    model = MultimodalLM(llm).eval()
    assert fusable(model._parts[1]) and model(batch).head is not None
    with torch.no_grad():
        expected = llm(input_ids=batch["input_ids"], labels=batch["labels"]).loss * (len(ids) - 1)
        torch.testing.assert_close(model(batch).loss_sum(), expected, atol=1e-4, rtol=1e-5)
    config = peft.LoraConfig(r=2, target_modules=["q_proj", "lm_head"])
    lora_head = MultimodalLM(peft.get_peft_model(load_llm("tiny:llama")[0], config))
    assert not fusable(lora_head._parts[1]) and lora_head(batch).head is None
