"""Activation checkpointing: the same loss and gradients as without it (LoRA and full, LLM and encoder), fewer
tensors kept for the backward pass, and a lower peak memory on a model whose activations outweigh its weights."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmtune.data.packing import collate
from mmtune.models.build import checkpoint_activations
from mmtune.models.multimodal_lm import MultimodalLM
from mmtune.models.objectives import sft
from tests.models.test_multimodal_lm import _batch, _model


def _step(checkpointing: bool, tuning: list[str]):
    """Loss, gradients and the count of tensors saved for backward of one train-mode step."""
    model, tok = _model("tiny:llama", *tuning, f"train.activation_checkpointing={checkpointing}")
    torch.manual_seed(3)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would leave every lora_A gradient zero
            p.data.normal_(0, 0.05)
    model.train()
    batch = _batch(model, tok, packed=True)
    saved = []
    torch.manual_seed(4)  # the same LoRA dropout masks in both runs (checkpoints replay the RNG state)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = sft(model, batch).loss_sum
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads, len(saved)


@pytest.mark.parametrize("tuning", [["tuning.llm=lora", "tuning.encoder=lora"],
                                    ["tuning.llm=full", "tuning.encoder=full"]], ids=["lora", "full"])
def test_same_loss_and_gradients(tuning):
    loss, grads, saved = _step(False, tuning)
    loss_ckpt, grads_ckpt, saved_ckpt = _step(True, tuning)
    assert saved_ckpt < saved / 2  # the layers' insides are recomputed, not kept
    assert loss_ckpt == pytest.approx(loss, abs=1e-5)
    # open_clip's attention reads out_proj.weight directly, so a LoRA adapter on out_proj gets no gradient either way
    assert {n for n, g in grads_ckpt.items() if g is None} == {n for n, g in grads.items() if g is None}
    reached = {n: g for n, g in grads.items() if g is not None}
    assert any(n.startswith("media.image.encoder.") for n in reached) and any(n.startswith("llm.") for n in reached)
    for name, g in reached.items():
        torch.testing.assert_close(grads_ckpt[name], g, atol=1e-5, rtol=1e-5, msg=name)
    assert sum(float(g.abs().max()) > 0 for g in reached.values()) > 0.9 * len(reached)


def _step_peak_mib(checkpointing: bool) -> float:
    """Peak resident memory a full fine-tuning step adds (MiB): an 8-layer, 256-wide Llama on 4 x 512 tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=1024, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=4, attn_implementation="sdpa")
    llm = LlamaForCausalLM(config)
    if checkpointing:
        checkpoint_activations(llm, [])
    model = MultimodalLM(llm).train()
    ids = torch.randint(0, 512, (4, 512)).tolist()
    batch = collate([[{"id": str(i), "input_ids": row, "labels": row}] for i, row in enumerate(ids)], pad_id=0)
    with open("/proc/self/statm") as f:
        resident_before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    sft(model, batch).loss_sum.backward()
    return _high_water_mib() - resident_before


def _high_water_mib() -> float:
    """This process image's peak resident size. Not ru_maxrss: Linux carries that across exec, so a child of a big
    pytest process would report its parent's size."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_peak_memory_lower():
    def peak(checkpointing):  # a fresh process each: the peak resident size only ever grows
        code = f"from tests.models.test_activation_checkpointing import _step_peak_mib; print(_step_peak_mib({checkpointing}))"
        # A fixed mmap threshold returns every freed tensor to the system; glibc's adaptive one keeps freed blocks
        # resident, and the peak then shows the allocator's history rather than the live activations.
        env = {"PATH": os.environ["PATH"], "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    without, with_checkpointing = peak(False), peak(True)
    assert with_checkpointing < 0.5 * without, (with_checkpointing, without)
