"""export_hf / export_llava / export_instructblip: the exported directories load with transformers alone and compute what mmtune computes."""
from __future__ import annotations

import argparse
import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from peft import PeftModel
from PIL import Image
from transformers import (AutoImageProcessor, AutoModelForCausalLM, AutoProcessor, AutoTokenizer, CLIPImageProcessor,
                          CLIPVisionConfig, CLIPVisionModel, InstructBlipForConditionalGeneration,
                          InstructBlipProcessor, LlavaForConditionalGeneration, LlavaProcessor, SiglipImageProcessor,
                          SiglipVisionConfig, SiglipVisionModel)

from mmtune.cli import main
from mmtune.data.sample import Message
from mmtune.data.templates import MEDIA_TOKEN_IDS, render_prompt
from mmtune.encoders.clip import MODEL_CONFIGS
from mmtune.errors import ConfigError
from mmtune.infer.export import (META_FILE, add_arguments, export_hf, export_instructblip, export_llava, export_peft,
                                 open_clip_to_hf_clip, run)
from mmtune.infer.generate import generate
from tests.helpers import EXAMPLE_IMAGE, Saved, save_checkpoint

QUESTION = "What is in the image?"
ENCODER = "model.encoder={name: clip, args: {arch: mmtune-vit-tiny}}"
MLP = "model.bridge={name: mlp2x_gelu}"


def tiny_vit_variant(tmp_path_factory, name: str, change) -> str:
    """mmtune-vit-tiny's open_clip config after `change(spec)`, registered with open_clip as `name`."""
    spec = json.loads((MODEL_CONFIGS / "mmtune-vit-tiny.json").read_text())
    change(spec)
    folder = tmp_path_factory.mktemp(name)
    (folder / f"{name}.json").write_text(json.dumps(spec))
    open_clip.add_model_config(folder)
    return name


@pytest.fixture(scope="module")
def quickgelu_arch(tmp_path_factory) -> str:
    """mmtune-vit-tiny with OpenAI's QuickGELU activation."""
    return tiny_vit_variant(tmp_path_factory, "mmtune-test-vit-quickgelu", lambda spec: spec.update(quick_gelu=True))


@dataclass
class LlavaCase:
    saved: Saved
    out: Path
    llava: LlavaForConditionalGeneration
    processor: LlavaProcessor
    """Loaded with backend="pil", whose resizing is open_clip's (PIL's) own."""


@pytest.fixture(scope="module", params=[
    ("lora", "mmtune-vit-tiny", -2, "patch"),  # LLaVA-1.5's choice: penultimate layer, CLS dropped
    ("full", "mmtune-test-vit-quickgelu", -1, "all"),
], ids=["lora-gelu-patch", "full-quickgelu-all"])
def llava_case(request, tmp_path_factory, quickgelu_arch) -> LlavaCase:
    tuning, arch, layer, tokens = request.param
    run_dir = tmp_path_factory.mktemp("vlm")
    saved = save_checkpoint(run_dir, "model.encoder={name: clip, args: {arch: %s, layer: %d, tokens: %s}}"
                            % (arch, layer, tokens), MLP, f"tuning.llm={tuning}")
    out = export_llava(saved.ckpt, run_dir / "llava")
    return LlavaCase(saved, out, LlavaForConditionalGeneration.from_pretrained(out).eval(),
                     AutoProcessor.from_pretrained(out, backend="pil"))


def test_llava_gives_mmtune_greedy_answer_and_logits(llava_case):
    c, m = llava_case, llava_case.saved
    image = Image.open(EXAMPLE_IMAGE).convert("RGB")
    messages = [Message("user", f"<image>\n{QUESTION}")]
    ids = render_prompt(messages, m.tokenizer, m.cfg.data.template, media_tokens=m.model.media_tokens)
    inputs = c.processor(text=f"<|im_start|>user\n<image>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n",
                       images=image, return_tensors="pt")
    image_id = c.llava.config.image_token_id
    assert inputs["input_ids"][0].tolist() == [image_id if i == MEDIA_TOKEN_IDS["image"] else i for i in ids]
    with torch.no_grad():
        pixels = m.model.media["image"].encoder.transform(image)[None]
        expected = m.model.llm(inputs_embeds=m.model.embed(torch.tensor([ids]), {"image": pixels})).logits
        logits = c.llava(**inputs).logits
    assert logits.shape[-1] == expected.shape[-1] + 1  # the added <image> token
    torch.testing.assert_close(logits[..., :-1], expected, rtol=0, atol=1e-4)
    answer = generate(m.model, m.tokenizer, m.cfg, [messages], [[image]], max_new_tokens=12)[0]
    new = c.llava.generate(**inputs, max_new_tokens=12, do_sample=False)[0, len(ids):]
    assert len(set(new.tolist())) > 3  # a varied answer, not one token repeated
    assert c.processor.tokenizer.decode(new, skip_special_tokens=True).strip() == answer
    with torch.no_grad():  # each generated id is mmtune's greedy choice after the ones before it
        forced = m.model.llm(inputs_embeds=m.model.embed(torch.tensor([ids + new.tolist()]), {"image": pixels})).logits
    assert forced[0, len(ids) - 1:-1].argmax(-1).tolist() == new.tolist()


def test_llava_tower_gives_mmtune_encoder_features(llava_case):
    c = llava_case
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = c.llava.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1]
        if c.llava.config.vision_feature_select_strategy == "default":
            hidden = hidden[:, 1:]
        torch.testing.assert_close(hidden, c.saved.model.media["image"].encoder(pixels), rtol=0, atol=1e-5)


def test_llava_image_processor_gives_mmtune_pixels(llava_case):
    c, encoder = llava_case, llava_case.saved.model.media["image"].encoder
    image = Image.open(EXAMPLE_IMAGE).convert("RGB")
    exact = c.processor.image_processor
    torch.testing.assert_close(exact(images=image, return_tensors="pt")["pixel_values"][0], encoder.transform(image),
                               rtol=0, atol=1e-5)
    # The default (torchvision) backend resizes with its own antialiasing; with nothing to resize it agrees too.
    small = image.resize((encoder.image_size, encoder.image_size))
    default = AutoImageProcessor.from_pretrained(c.out)
    torch.testing.assert_close(default(images=small, return_tensors="pt")["pixel_values"][0], encoder.transform(small),
                               rtol=0, atol=1e-5)


def test_llava_export_records_the_prompt_format(llava_case):
    c = llava_case
    meta = json.loads((c.out / META_FILE).read_text())
    tokenizer = c.processor.tokenizer
    assert meta == {"format": "llava", "checkpoint": str(c.saved.ckpt), "template": "chatml", "system_prompt": None,
                    "stop_token_ids": [tokenizer.convert_tokens_to_ids("<|im_end|>")], "image_token": "<image>",
                    "image_processor_backend": "pil"}
    assert c.llava.generation_config.suppress_tokens == [c.llava.config.image_token_id]
    assert not list(c.out.parent.glob(".tmp-*"))


def _save_hf_tower(path: Path, kind: str) -> str:
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32,
                  patch_size=8)
    if kind == "siglip":
        SiglipVisionModel(SiglipVisionConfig(**vision)).save_pretrained(path)
        SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    else:
        CLIPVisionModel(CLIPVisionConfig(**vision)).save_pretrained(path)
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("kind, llm, tokens, strategy", [
    ("clip", "tiny:llama", "all", "full"),
    ("siglip", "tiny:qwen2", "patch", "full"),  # SigLIP has no class token to drop
])
def test_hf_clip_tower_is_copied(tmp_path, kind, llm, tokens, strategy):
    tower = _save_hf_tower(tmp_path / kind, kind)
    saved = save_checkpoint(tmp_path / "run", f"model.llm={llm}", MLP,
                            "model.encoder={name: hf_clip, args: {path: %s, layer: -2, tokens: %s}}" % (tower, tokens))
    out = export_llava(saved.ckpt, tmp_path / "llava")
    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()
    image = Image.open(EXAMPLE_IMAGE).convert("RGB")
    pixels = AutoImageProcessor.from_pretrained(out)(images=image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels[0], saved.model.media["image"].encoder.transform(image), rtol=0, atol=1e-5)
    assert json.loads((out / META_FILE).read_text())["image_processor_backend"] == "torchvision"  # the default
    assert llava.config.vision_feature_select_strategy == strategy
    with torch.no_grad():
        features = llava.get_image_features(pixel_values=pixels, vision_feature_layer=-1,
                                            vision_feature_select_strategy=strategy).pooler_output[0]
        torch.testing.assert_close(features, saved.model.media["image"](pixels)[0], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def text_checkpoints(tmp_path_factory) -> dict[str, Saved]:
    root = tmp_path_factory.mktemp("text")
    return {"lora": save_checkpoint(root / "lora", "tuning.llm=lora"),
            "tokenizer": save_checkpoint(root / "tokenizer", "data.template=tokenizer")}


def test_text_checkpoint_is_not_a_llava(tmp_path, text_checkpoints):
    with pytest.raises(ConfigError, match=r"model\.media\.image: the checkpoint has no image encoder; export it with "
                                          r"--format hf"):
        export_llava(text_checkpoints["lora"].ckpt, tmp_path / "llava")


@pytest.mark.parametrize("overrides, message", [
    ([ENCODER, "model.bridge={name: linear}"], r"model\.media\.image\.bridge\.name: linear cannot be exported to LLaVA"),
    ([ENCODER, MLP, "model.llm=tiny:gpt_neox"],
     r"model\.llm: a gpt_neox LLM cannot be exported to LLaVA; supported families: llama, mistral, qwen2"),
    (["model.encoder={name: clip, args: {arch: mmtune-vit-tiny, tokens: cls}}", MLP],
     r"model\.media\.image\.encoder\.args\.tokens: cls .* has no LLaVA feature strategy"),
], ids=["linear-bridge", "gpt_neox", "cls-token"])
def test_parts_llava_cannot_hold_are_named(tmp_path, overrides, message):
    saved = save_checkpoint(tmp_path, *overrides)
    with pytest.raises(ConfigError, match=message):
        export_llava(saved.ckpt, tmp_path / "llava")
    assert not (tmp_path / "llava").exists()


@pytest.mark.parametrize("key", ["transformer.resblocks.0.ls_1.gamma", "transformer.resblocks.0.mlp.ln.weight"])
def test_open_clip_weights_without_a_clip_counterpart_are_refused(key):
    with pytest.raises(ConfigError, match=rf"open_clip weight visual\.{key} has no counterpart"):
        open_clip_to_hf_clip({"class_embedding": torch.zeros(4), key: torch.zeros(4)})


def test_open_clip_attention_is_split_into_q_k_v_and_the_pooling_head_dropped():
    weight, bias = torch.randn(12, 4), torch.randn(12)
    out = open_clip_to_hf_clip({"transformer.resblocks.1.attn.in_proj_weight": weight,
                                "transformer.resblocks.1.attn.in_proj_bias": bias, "attn_pool.query": bias})
    assert sorted(out) == [f"encoder.layers.1.self_attn.{p}_proj.{t}" for p in "kqv" for t in ("bias", "weight")]
    torch.testing.assert_close(out["encoder.layers.1.self_attn.k_proj.weight"], weight[4:8])
    torch.testing.assert_close(out["encoder.layers.1.self_attn.v_proj.bias"], bias[8:])


@pytest.mark.parametrize("case", ["lora", "tokenizer"])
def test_hf_export_gives_mmtune_logits(tmp_path, text_checkpoints, case):
    saved = text_checkpoints[case]
    out = export_hf(saved.ckpt, tmp_path / "hf")
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([saved.tokenizer.encode("alpha beta gamma delta")])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, saved.model.llm(ids).logits, rtol=0, atol=1e-5)
    assert not any("lora" in name for name, _ in exported.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert exported.generation_config.eos_token_id == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert json.loads((out / META_FILE).read_text())["template"] == saved.cfg.data.template


def test_peft_export_loads_onto_the_base_with_peft(tmp_path, text_checkpoints):
    saved = text_checkpoints["lora"]
    out = export_peft(saved.ckpt, tmp_path / "peft")
    assert sorted(p.name for p in out.glob("adapter_*")) == ["adapter_config.json", "adapter_model.safetensors"]
    base = copy.deepcopy(saved.model.llm).unload()  # the base weights, LoRA layers removed unmerged
    assert not any("lora" in name for name, _ in base.named_parameters())
    loaded = PeftModel.from_pretrained(base, out).eval()
    ids = torch.tensor([saved.tokenizer.encode("alpha beta gamma delta")])
    with torch.no_grad():
        expected = saved.model.llm(ids).logits
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=1e-5)
        with loaded.disable_adapter():
            assert not torch.allclose(loaded(ids).logits, expected, atol=1e-3)  # the adapter matters
    meta = json.loads((out / META_FILE).read_text())
    assert (meta["format"], meta["base_model"]) == ("peft", "tiny:llama")
    assert AutoTokenizer.from_pretrained(out).chat_template


def test_peft_export_refuses_a_checkpoint_without_lora(tmp_path, text_checkpoints):
    with pytest.raises(ConfigError, match=r"tuning\.llm: the checkpoint's LLM is tuned with 'full', not lora"):
        export_peft(text_checkpoints["tokenizer"].ckpt, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_cli_exports_and_refuses_a_non_empty_out(tmp_path, text_checkpoints, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--ckpt", str(text_checkpoints["lora"].ckpt), "--out", str(tmp_path / "hf")])
    assert args.format == "hf"
    assert run(args) == 0
    assert "exported hf" in capsys.readouterr().out
    assert (tmp_path / "hf" / "config.json").is_file()
    with pytest.raises(ConfigError, match=rf"--out: {tmp_path / 'hf'} exists and is not an empty directory"):
        run(args)


# ---- exports carry the training chat template: apply_chat_template gives mmtune's prompt, so mmtune's answer ----

SYSTEM = "Answer in three words."


def _conversation(image: Image.Image | None) -> tuple[list[Message], list[dict]]:
    """User, assistant, user (the image, if any, in the first turn): as mmtune's messages, and as a transformers
    user writes them (content items)."""
    turns = [("user", ([{"type": "image", "image": image}] if image is not None else [])
              + [{"type": "text", "text": "What is in the image?"}]),
             ("assistant", [{"type": "text", "text": "A square, red on blue."}]),
             ("user", [{"type": "text", "text": "And what colour is it?"}])]
    messages = [Message(role, "".join("<image>\n" if item["type"] == "image" else item["text"] for item in content))
                for role, content in turns]
    return messages, [{"role": role, "content": content} for role, content in turns]


def _prompt_cases(image: Image.Image | None):
    """(mmtune messages, the same for transformers): the first turn alone (the run's data.system_prompt, if any,
    comes first), then all turns after a system message of their own, which wins over data.system_prompt."""
    messages, conversation = _conversation(image)
    own = "Reply in one line."
    system = [Message("system", own)], [{"role": "system", "content": own}]
    yield messages[:1], conversation[:1]
    yield system[0] + messages, system[1] + conversation


# (data.template, data.system_prompt)
TEMPLATE_CASES = [("chatml", None), ("tokenizer", SYSTEM)]


def _exported_run(tmp_path: Path, fmt: str, template: str, system_prompt: str | None, *overrides: str) -> Saved:
    """A checkpoint exported with `mmtune export --format fmt` to tmp_path / fmt."""
    system = [f"data.system_prompt={system_prompt}"] if system_prompt else []
    saved = save_checkpoint(tmp_path / "run", "tuning.llm=lora", f"data.template={template}", *system, *overrides)
    assert main(["export", "--ckpt", str(saved.ckpt), "--out", str(tmp_path / fmt), "--format", fmt]) == 0
    return saved


@pytest.mark.parametrize("template, system_prompt", TEMPLATE_CASES)
def test_llava_chat_template_gives_mmtune_prompt_and_answer(tmp_path, template, system_prompt):
    saved = _exported_run(tmp_path, "llava", template, system_prompt, ENCODER, MLP)
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "llava", backend="pil")
    assert processor.chat_template == processor.tokenizer.chat_template
    image_id = llava.config.image_token_id
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    image.save(tmp_path / "image.png")  # and read back, as `mmtune chat --image` would
    image = Image.open(tmp_path / "image.png").convert("RGB")
    for messages, conversation in _prompt_cases(image):
        ids = render_prompt(messages, saved.tokenizer, template, system_prompt=system_prompt,
                            media_tokens=saved.model.media_tokens)
        inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        # mmtune's sentinel run is LLaVA's run of image tokens, at the same positions
        assert inputs["input_ids"][0].tolist() == [image_id if i == MEDIA_TOKEN_IDS["image"] else i for i in ids]
        new = llava.generate(**inputs, max_new_tokens=12, do_sample=False)[0, len(ids):]
        answer = generate(saved.model, saved.tokenizer, saved.cfg, [messages], [[image]], max_new_tokens=12)[0]
        assert len(set(new.tolist())) > 3  # a varied answer, not one token repeated
        assert processor.tokenizer.decode(new, skip_special_tokens=True).strip() == answer


@pytest.mark.parametrize("template, system_prompt", TEMPLATE_CASES)
def test_hf_chat_template_gives_mmtune_prompt_and_answer(tmp_path, template, system_prompt):
    saved = _exported_run(tmp_path, "hf", template, system_prompt)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    for messages, conversation in _prompt_cases(None):
        ids = render_prompt(messages, saved.tokenizer, template, system_prompt=system_prompt)
        assert tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                             return_dict=False) == ids
        plain = [{"role": m.role, "content": m.content} for m in messages]  # string content works the same
        assert tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=True, return_dict=False) == ids
        new = exported.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):]
        answer = generate(saved.model, saved.tokenizer, saved.cfg, [messages], max_new_tokens=12)[0]
        assert len(set(new.tolist())) > 3
        assert tokenizer.decode(new, skip_special_tokens=True).strip() == answer


# ---- InstructBLIP: an open_clip ViT without ln_pre + instruction-aware Q-Former + a causal or seq2seq LLM ----

QFORMER = "model.bridge={name: qformer, args: {init: '', layers: 3, width: 32, heads: 2, queries: 4, max_instruction_len: 16}}"


@pytest.fixture(scope="module")
def no_ln_pre_arch(tmp_path_factory) -> str:
    """mmtune-vit-tiny without the norm before its first block (InstructBLIP's vision tower has none)."""
    return tiny_vit_variant(tmp_path_factory, "mmtune-test-vit-no-ln-pre",
                            lambda spec: spec["vision_cfg"].update(no_ln_pre=True))


@dataclass
class BlipCase:
    saved: Saved
    blip: InstructBlipForConditionalGeneration
    processor: InstructBlipProcessor


@pytest.fixture(scope="module", params=[("tiny:llama", "lora"), ("tiny:t5", "full")], ids=["llama-lora", "t5"])
def blip_case(request, tmp_path_factory, no_ln_pre_arch) -> BlipCase:
    llm, tuning = request.param
    run_dir = tmp_path_factory.mktemp("blip")
    saved = save_checkpoint(run_dir, f"model.llm={llm}", f"tuning.llm={tuning}", QFORMER,
                            "model.encoder={name: clip, args: {arch: %s, tokens: all}}" % no_ln_pre_arch)
    out = run_dir / "instructblip"
    assert main(["export", "--ckpt", str(saved.ckpt), "--out", str(out), "--format", "instructblip"]) == 0
    return BlipCase(saved, InstructBlipForConditionalGeneration.from_pretrained(out).eval(),
                    AutoProcessor.from_pretrained(out, backend="pil"))


def _blip_inputs(case: BlipCase, image: Image.Image, question: str) -> dict:
    """The exported model's inputs as a transformers user builds them (mmtune.json): the chat template for the
    LLM's ids, the Q-Former's tokenizer on the question, the image processor for the pixels."""
    processor = case.processor
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    ids = processor.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                                  return_dict=False)
    qformer = processor.qformer_tokenizer(question, truncation=True, return_tensors="pt")
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "qformer_input_ids": qformer["input_ids"], "qformer_attention_mask": qformer["attention_mask"],
            "pixel_values": processor.image_processor(images=image, return_tensors="pt")["pixel_values"]}


def test_instructblip_gives_mmtune_greedy_answer_and_logits(blip_case):
    c, m = blip_case, blip_case.saved
    image = Image.open(EXAMPLE_IMAGE).convert("RGB")
    messages = [Message("user", f"<image>\n{QUESTION}")]
    inputs = _blip_inputs(c, image, QUESTION)
    ids = render_prompt(messages, m.tokenizer, m.cfg.data.template, media_tokens=m.model.media_tokens)
    image_id = c.blip.config.image_token_id
    assert inputs["input_ids"][0].tolist() == [image_id if i == MEDIA_TOKEN_IDS["image"] else i for i in ids]
    answer = generate(m.model, m.tokenizer, m.cfg, [messages], [[image]], max_new_tokens=12)[0]
    out = c.blip.generate(**inputs, generation_config=c.blip.generation_config, max_new_tokens=12, do_sample=False)
    new = out[0] if m.model.seq2seq else out[0, len(ids):]  # a decoder-only LLM returns the prompt too
    assert c.processor.tokenizer.decode(new, skip_special_tokens=True).strip() == answer
    part = m.model.media["image"]
    context = {k: torch.as_tensor(v)[None] for k, v in part.encode_context(QUESTION).items()}
    decoder = {"decoder_input_ids": out} if m.model.seq2seq else {}  # the answer, read by the decoder
    with torch.no_grad():
        embeds = m.model.embed(torch.tensor([ids]), {"image": part.encoder.transform(image)[None]}, {"image": context})
        expected = m.model.llm(inputs_embeds=embeds, **decoder).logits
        logits = c.blip(**inputs, **decoder).logits
    torch.testing.assert_close(logits[..., :-1], expected, rtol=0, atol=1e-4)  # less the added <image> token


def test_instructblip_features_are_mmtune_bridge_outputs(blip_case):
    """Vision tower + Q-Former + projection give the media part's outputs, the question read through the same ids."""
    c, part = blip_case, blip_case.saved.model.media["image"]
    image = Image.open(EXAMPLE_IMAGE).convert("RGB")
    inputs = _blip_inputs(c, image, "How many shapes are there in this picture, and where?")
    context = {k: torch.as_tensor(v)[None] for k, v in part.encode_context(
        "How many shapes are there in this picture, and where?").items()}
    with torch.no_grad():
        features = c.blip.get_image_features(inputs["pixel_values"], inputs["qformer_input_ids"],
                                             inputs["qformer_attention_mask"]).pooler_output
        torch.testing.assert_close(features, part(part.encoder.transform(image)[None], context), rtol=0, atol=1e-5)


def test_instructblip_export_records_how_to_prompt(blip_case):
    meta = json.loads((Path(blip_case.processor.tokenizer.name_or_path) / META_FILE).read_text())
    assert (meta["format"], meta["image_token"], meta["num_query_tokens"], meta["qformer_max_length"]) == \
        ("instructblip", "<image>", 4, 16)
    assert blip_case.blip.generation_config.suppress_tokens == [blip_case.blip.config.image_token_id]
    assert meta["generate"] == "model.generate(**inputs, generation_config=model.generation_config)"


@pytest.mark.parametrize("overrides, message", [
    (["model.encoder={name: clip, args: {arch: NO_LN_PRE, tokens: all}}", MLP],
     r"model\.media\.image\.bridge\.name: mlp2x_gelu cannot be exported to InstructBLIP"),
    (["model.encoder={name: clip, args: {arch: NO_LN_PRE, tokens: patch}}", QFORMER],
     r"model\.media\.image\.encoder\.args\.tokens: patch; InstructBLIP's Q-Former reads every token"),
    (["model.encoder={name: clip, args: {arch: NO_LN_PRE, tokens: all}}",
      QFORMER.replace("}}", ", instruction_aware: false}}")],
     r"model\.media\.image\.bridge\.args\.instruction_aware: a Q-Former that reads no instruction is BLIP-2's"),
    (["model.encoder={name: clip, args: {arch: NO_LN_PRE, tokens: all}}",
      QFORMER.replace("}}", ", feature_positions: 17}}")],
     r"model\.media\.image\.bridge\.args\.feature_positions: InstructBLIP's Q-Former has no position embeddings"),
    (["model.encoder={name: clip, args: {arch: mmtune-vit-tiny, tokens: all}}", QFORMER],
     r"open_clip weight visual\.ln_pre\.weight has no counterpart in a Hugging Face InstructBlipVisionModel.*no_ln_pre"),
    (["model.encoder={name: hf_clip, args: {path: HF_TOWER, tokens: all}}", QFORMER],
     r"model\.media\.image\.encoder\.name: hf_clip has no InstructBLIP vision tower: a CLIP tower normalises"),
], ids=["mlp-bridge", "patch-tokens", "not-instruction-aware", "feature-positions", "ln-pre", "hf-clip"])
def test_parts_instructblip_cannot_hold_are_named(tmp_path, no_ln_pre_arch, overrides, message):
    tower = _save_hf_tower(tmp_path / "tower", "clip")
    overrides = [o.replace("NO_LN_PRE", no_ln_pre_arch).replace("HF_TOWER", tower) for o in overrides]
    saved = save_checkpoint(tmp_path / "run", *overrides)
    with pytest.raises(ConfigError, match=message):
        export_instructblip(saved.ckpt, tmp_path / "blip")
    assert not (tmp_path / "blip").exists()
