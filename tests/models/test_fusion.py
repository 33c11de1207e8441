"""Gated cross-attention (model.fusion: cross_attention): closed gates leave every supported LLM family exactly as it
was; a position attends only to the latest media item of its own sample (never to another sample of a packed
row, nothing before the first item); generation with a KV cache keeps the prompt's media in view; Otter's
trainable set; activation checkpointing recomputes the blocks faithfully."""
import pytest
import torch
from PIL import Image

from mmtune.config import load_config
from mmtune.data.packing import collate
from mmtune.data.sample import Message
from mmtune.data.templates import MEDIA_TOKEN_IDS, encode, render_prompt
from mmtune.errors import ConfigError
from mmtune.infer.generate import generate
from mmtune.models.build import build_model
from mmtune.models.llm import load_llm
from mmtune.recipe import load_recipe
from tests.helpers import VLM, XATTN

IMAGE = MEDIA_TOKEN_IDS["image"]
CONVERSATIONS = [  # 0, 1 and 2 images; text before the first image in the last one
    [Message("user", "no image here"), Message("assistant", "fine")],
    [Message("user", "<image>\nwhat is this?"), Message("assistant", "a square")],
    [Message("user", "hello there"), Message("assistant", "hi"), Message("user", "<image> or <image>?"),
     Message("assistant", "the second")],
]


def _model(llm: str = "tiny:llama", *extra: str):
    model, tok = build_model(load_config(None, [f"model.llm={llm}", *VLM, *XATTN, *extra]))
    return model.eval(), tok


def _open_gates(model) -> None:
    for block in model.fusion.blocks:
        block.attn_gate.data.fill_(1.0)
        block.ff_gate.data.fill_(1.0)


def _sample(tok, i: int, images: torch.Tensor | None = None) -> dict:
    msgs = CONVERSATIONS[i]
    n = sum(m.content.count("<image>") for m in msgs)
    enc = encode(msgs, tok, "chatml", media_tokens={"image": 1})
    if images is None:
        images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(i))
    return {"id": str(i), "input_ids": enc.input_ids, "labels": enc.labels, "media": {"image": images} if n else {}}


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model._parts[1](model.hidden_states(batch))


@pytest.mark.parametrize("llm", ["tiny:llama", "tiny:qwen2", "tiny:gpt_neox"])
def test_closed_gates_leave_the_llm_unchanged(llm):
    model, tok = _model(llm)
    batch = collate([[_sample(tok, i)] for i in range(3)], tok.pad_token_id)
    plain, _ = load_llm(llm)
    plain.load_state_dict(model.llm.state_dict())  # the blocks hook the layers: the LLM's names are its own
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["media"])
        theirs = plain(inputs_embeds=embeds, attention_mask=(batch["seq_ids"] >= 0).long(),
                       position_ids=batch["position_ids"]).logits
    real = batch["seq_ids"] >= 0
    assert (_logits(model, batch) - theirs)[real].abs().max() <= 1e-6
    _open_gates(model)
    assert (_logits(model, batch) - theirs)[real].abs().max() > 1e-3  # open, the blocks do change the LLM


def test_a_sample_never_sees_the_media_of_another_sample_in_its_row():
    model, tok = _model()
    _open_gates(model)
    first, second = _sample(tok, 1), _sample(tok, 2)
    row = collate([[first, second]], tok.pad_token_id)
    changed = collate([[first, {**second, "media": {"image": torch.randn(2, 3, 32, 32)}}]], tok.pad_token_id)
    assert row["packed"]
    before, after = _logits(model, row)[0], _logits(model, changed)[0]
    seq = row["seq_ids"][0]
    assert torch.equal(before[seq == 0], after[seq == 0])
    assert not torch.allclose(before[seq == 1], after[seq == 1])


def test_text_before_any_media_gets_nothing_from_the_blocks():
    model, tok = _model()
    batch = collate([[_sample(tok, 2)]], tok.pad_token_id)
    closed = _logits(model, batch)[0]
    _open_gates(model)
    opened = _logits(model, batch)[0]
    first = int((batch["input_ids"][0] == IMAGE).nonzero()[0])
    assert first > 5
    assert torch.equal(closed[:first], opened[:first])
    assert not torch.allclose(closed[first:], opened[first:])


def test_each_position_attends_to_the_latest_item_only():
    """The input of the first decoder layer, right after the first block: image 1 reaches the positions from its
    marker (the marker itself included, as in OpenFlamingo: it is how later text learns of an earlier image) up to
    image 2's, and none after."""
    model, tok = _model()
    _open_gates(model)
    seen = []
    model.llm.model.layers[0].register_forward_pre_hook(lambda layer, args: seen.append(args[0][0]))
    sample = _sample(tok, 2)
    other = sample["media"]["image"].clone()
    other[0] = torch.randn(3, 32, 32)
    _logits(model, collate([[sample]], tok.pad_token_id))
    _logits(model, collate([[{**sample, "media": {"image": other}}]], tok.pad_token_id))
    first, second = (int(i) for i in (torch.tensor(sample["input_ids"]) == IMAGE).nonzero())
    assert torch.equal(seen[0][second:], seen[1][second:])
    assert torch.equal(seen[0][:first], seen[1][:first])
    assert not torch.allclose(seen[0][first:second], seen[1][first:second])
    assert not torch.allclose(seen[0][first], seen[1][first])


def test_generation_keeps_the_prompt_media_in_view_with_and_without_kv_cache():
    model, tok = _model()
    _open_gates(model)
    cfg = load_config(None, [*VLM, *XATTN])
    prompts = [CONVERSATIONS[1][:1], CONVERSATIONS[2][:3]]
    images = [[Image.new("RGB", (32, 32), (200, 30, 30))], [Image.new("RGB", (32, 32)), Image.new("RGB", (32, 32),
                                                                                                 (0, 0, 255))]]
    cached = generate(model, tok, cfg, prompts, images, max_new_tokens=12)
    assert cached == generate(model, tok, cfg, prompts, images, max_new_tokens=12, use_cache=False)
    # A generated token (after a cached prefill) still attends to the prompt's image, as a full forward would.
    ids = torch.tensor([render_prompt(prompts[0], tok, "chatml", media_tokens=model.media_tokens)])
    step = []
    with torch.no_grad():
        for colour in ((200, 30, 30), (30, 200, 30)):
            pixels = model.media["image"].encoder.transform(Image.new("RGB", (32, 32), colour))[None]
            prefill = model.llm(inputs_embeds=model.embed(ids, {"image": pixels}), use_cache=True)
            step.append(model.llm(input_ids=torch.tensor([[42]]), cache=prefill.cache).logits[0, -1])
            whole = model.llm(inputs_embeds=model.embed(torch.cat([ids, torch.tensor([[42]])], 1),
                                                        {"image": pixels})).logits[0, -1]
            torch.testing.assert_close(step[-1], whole, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(step[0], step[1])


def test_otter_recipe_trains_resampler_blocks_and_embeddings_only():
    cfg = load_recipe("otter/otter_smollm2.yaml", ["model.llm=tiny:gpt_neox", "model.fusion.args.every=2",
                                                   "model.media.image.encoder.args.arch=mmtune-vit-tiny"])
    model, _ = build_model(cfg)
    trainable = {n.split(".")[0] if not n.startswith("llm.") else n
                 for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fusion", "media", "llm.gpt_neox.embed_in.weight", "llm.lm_head.weight"}
    assert {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad and n.startswith("media.")} \
        == {"bridge"}


def test_activation_checkpointing_recomputes_the_blocks_faithfully():
    grads = []
    for checkpointing in (False, True):
        model, tok = _model("tiny:llama", f"train.activation_checkpointing={checkpointing}")
        _open_gates(model)
        model.train()
        batch = collate([[_sample(tok, 1), _sample(tok, 2)]], tok.pad_token_id)
        model(batch).logits.logsumexp(-1).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if n.startswith("fusion.")})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.fusion={name: cross_attention}"], r"cross_attention attends to media"),
    ([*VLM, *XATTN, "model.fusion.args.every=3"], r"model\.fusion\.args\.every: 3 is more than the LLM's 2 decoder"),
    ([*VLM, *XATTN, "model.llm=tiny:t5"], r"encoder-decoder model \(use splice\)"),
    ([*VLM, "tuning.bridge=embeddings"], r"tuning\.media\.image\.bridge=embeddings: only the LLM"),
])
def test_unusable_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_model(load_config(None, ["model.llm=tiny:llama", *overrides]))


def test_fusion_name_and_args_are_checked_at_load():
    with pytest.raises(ConfigError, match=r"model\.fusion\.name: unknown name 'cross_atention'.*cross_attention"):
        load_recipe(None, [*VLM, "model.fusion={name: cross_atention}"])
    with pytest.raises(ConfigError, match=r"unknown key model\.fusion\.args\.every_n"):
        load_recipe(None, [*VLM, "model.fusion={name: cross_attention, args: {every_n: 2}}"])
