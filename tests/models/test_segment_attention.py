"""Segment attention: per-sample causal attention gives the loss and gradients of the dense block-diagonal mask,
for every family that takes it; others keep their own attention; sliding windows still apply."""
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, MistralConfig

from mmtune.data.packing import collate
from mmtune.models.llm import TINY
from mmtune.models.multimodal_lm import MultimodalLM
from mmtune.models.segment_attention import NAME, segment_boundaries
from tests.helpers import tiny_config, write_text_shards
from tests.data.test_packing import _encoded

OWN_ATTENTION = ["bloom", "falcon"]
"""Families without transformers' attention interface (BLOOM: eager only; Falcon: its own SDPA call)."""
SEGMENTED = [name for name in TINY if name not in ("t5", *OWN_ATTENTION)]


def _samples(tmp_path, llm: str):
    from mmtune.models.build import build_model

    shards = write_text_shards(tmp_path / "d", 10)
    cfg = tiny_config(tmp_path / "run", shards, f"model.llm=tiny:{llm}")
    model, tok = build_model(cfg)
    return model, tok, _encoded(cfg, model, tok, shards)


def _loss_and_grads(model, batch):
    model.zero_grad()
    scored = model(batch)
    loss = F.cross_entropy(scored.logits, scored.targets, reduction="sum")
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("llm", SEGMENTED)
def test_same_loss_and_gradients_as_the_dense_mask(tmp_path, llm):
    model, tok, samples = _samples(tmp_path, llm)
    model.train()
    assert model._segments and model.llm.config._attn_implementation == NAME
    packed = collate([samples[:4], samples[4:7], samples[7:]], tok.pad_token_id)
    unpacked = collate([[s] for s in samples], tok.pad_token_id)
    for batch in (packed, unpacked):
        ours, ours_grads = _loss_and_grads(model, batch)
        model._segments = False  # the dense mask path, as families without segment attention run
        dense, dense_grads = _loss_and_grads(model, batch)
        model._segments = True
        torch.testing.assert_close(ours, dense, atol=1e-5, rtol=1e-5)
        assert ours_grads.keys() == dense_grads.keys()
        for name in ours_grads:
            torch.testing.assert_close(ours_grads[name], dense_grads[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("llm", OWN_ATTENTION)
def test_families_with_their_own_attention_keep_it(tmp_path, llm):
    model, _, _ = _samples(tmp_path, llm)
    assert not model._segments and model.llm.config._attn_implementation != NAME


def test_boundaries_split_samples_padding_and_rows():
    seq = torch.tensor([[0, 0, 0, 1, 1, -1], [2, 2, 2, 2, 2, 2], [3, -1, -1, -1, -1, -1]])
    assert segment_boundaries(seq).tolist() == [0, 3, 5, 6, 12, 13, 18]


def test_a_sliding_window_still_applies_within_each_sample():
    """A sliding-window layer is more than causal attention per segment: it gets the mask transformers derives
    from the restarting position ids, so each packed sample scores as it does alone."""
    config = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=3, pad_token_id=0)
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    model = MultimodalLM(llm)
    assert model._segments
    lengths = [7, 5, 9]
    torch.manual_seed(1)
    ids = [torch.randint(1, 64, (n,)).tolist() for n in lengths]
    samples = [{"id": str(i), "input_ids": x, "labels": [-100] + x[1:], "media": {}} for i, x in enumerate(ids)]
    batch = collate([samples], pad_id=0)
    with torch.no_grad():
        scored = model(batch)
        for n, s in enumerate(samples):
            alone = llm(input_ids=torch.tensor([s["input_ids"]]), labels=torch.tensor([s["labels"]])).loss
            mine = scored.seq == n
            torch.testing.assert_close(F.cross_entropy(scored.logits[mine], scored.targets[mine]), alone,
                                       atol=1e-5, rtol=1e-5)
