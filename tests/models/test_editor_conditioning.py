"""The image editor's conditioners: the CLIP tokenizer built from open_clip's vocabulary gives open_clip's ids,
the CLIP text tower pads as Stable Diffusion does, the multimodal LLM reads image and instruction (dropout swaps
in the unconditional prompts, gradients reach the trainable parts only), bad text_encoder settings fail at load,
and an LLM-conditioned editor trains, checkpoints and edits."""
import json
from pathlib import Path

import open_clip
import pytest
import torch

pytest.importorskip("diffusers")

import mmtune  # noqa: E402
from data_builders.synth.edits import generate, write_edit_shards  # noqa: E402
from mmtune.cli import main  # noqa: E402
from mmtune.data.edits import EditEncoder  # noqa: E402
from mmtune.errors import ConfigError  # noqa: E402
from mmtune.models.conditioning import (build_text_encoder, clip_tokenizer,  # noqa: E402
                                        write_clip_vocab)
from mmtune.models.editor import build_editor  # noqa: E402
from mmtune.models.kinds import sample_encoder  # noqa: E402
from mmtune.recipe import load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EDITOR = ["model.kind=image_editor", "train.objective=ip2p", f"model.editor.vae={ROOT / 'samples' / 'vae'}",
          "model.editor.image_size=32", "model.editor.unet={block_out_channels: [32, 64], norm_num_groups: 8}"]
CLIP = "model.editor.text_encoder={name: clip, args: {config: {hidden_size: 32, intermediate_size: 64}}}"
LLM = ["model.llm=tiny:llama", "tuning.llm=lora", "tuning.bridge=full",
       "model.media.image={encoder: {name: clip, args: {arch: mmtune-vit-tiny}}, bridge: {name: mlp2x_gelu}}"]
SENTENCES = ["Make the circle red!", "  remove   the\tblue square, please.", "It's 3 o'clock: add a café",
             "move it 20px to the left", "Turn the sky into a starry night (Van Gogh style)"]


def test_clip_tokenizer_gives_open_clip_ids(tmp_path):
    from transformers import CLIPTokenizer

    write_clip_vocab(tmp_path)  # vocab.json + merges.txt, as openai/clip-vit ships them
    reference = open_clip.get_tokenizer("ViT-B-32")
    for tokenizer in (clip_tokenizer(77), CLIPTokenizer.from_pretrained(tmp_path)):
        for text in SENTENCES:
            want = reference([text])[0].tolist()
            assert tokenizer(text)["input_ids"] == want[:want.index(reference.eot_token_id) + 1], text


def _batch(encoder: EditEncoder, pad_id: int, n: int = 3) -> dict:
    return encoder.collate_fn([[encoder(s)] for s in generate(n, seed=0)], pad_id)


def test_clip_states_are_stable_diffusions():
    """Every instruction padded to max_text_len and attended whole; a dropped text reads the padded empty one."""
    cfg = mmtune.load_config(None, [*EDITOR, CLIP, "model.editor.max_text_len=12"])
    conditioner, from_scratch = build_text_encoder(cfg)
    conditioner.fit(32)
    assert from_scratch == {"text_encoder"}
    tokenizer = conditioner.prompt.tokenizer
    batch = _batch(EditEncoder(conditioner.prompt, 32), tokenizer.pad_token_id)
    states, mask = conditioner(batch, torch.tensor([False, True, False]), torch.tensor([False, False, True]))
    assert states.shape == (3, 12, 32) and mask is None
    instructions = [tokenizer.decode(ids, skip_special_tokens=True) for ids in batch["input_ids"]]
    ids = tokenizer([instructions[0], "", instructions[2]], padding="max_length", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(states, conditioner.model(ids).last_hidden_state)


@pytest.fixture(scope="module")
def llm_editor():
    cfg = mmtune.load_config(None, [*EDITOR, *LLM, "model.editor.text_encoder={name: llm, args: {queries: 4}}"])
    model, tokenizer = build_editor(cfg)
    return model, sample_encoder(cfg, model, tokenizer), tokenizer


def test_llm_states_follow_dropout_and_train_the_right_parts(llm_editor):
    model, encoder, tokenizer = llm_editor
    conditioner = model.text_encoder
    batch = _batch(encoder, tokenizer.eos_token_id, 4)
    assert batch["cond_image"].shape == (4, 3, 32, 32)  # the input image as the LLM's image encoder reads it
    drop_text, drop_image = torch.tensor([False, True, True, False]), torch.tensor([False, False, True, True])
    model.zero_grad()
    states, mask = conditioner(batch, drop_text, drop_image)
    assert states.shape == (4, 4, 64) and mask is None  # 4 query tokens, projected to the UNet's width
    states.square().sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad and n.startswith("text_encoder.")}
    assert {n.split(".")[1] for n in grads} == {"lm", "projector", "queries"}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_A" not in n)  # B starts at 0
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    with torch.no_grad():
        blank = {**batch, "cond_image": torch.zeros_like(batch["cond_image"])}
        again = conditioner(blank, drop_text, drop_image)[0]
        other = conditioner(batch, torch.tensor([True, True, True, True]), drop_image)[0]
    torch.testing.assert_close(again[2:], states[2:].detach())  # image dropped: the image is not read
    assert (again[:2] - states[:2]).abs().max() > 1e-4  # kept: it is
    torch.testing.assert_close(other[3], other[2])  # neither: the same prompt whatever the instruction
    assert (other[3] - states[3]).abs().max() > 1e-4  # the instruction alone is read


def test_llm_states_without_queries_are_masked_to_the_prompt():
    cfg = mmtune.load_config(None, [*EDITOR, *LLM, "tuning.llm=frozen", "model.editor.text_encoder.name=llm",
                                    "model.editor.unet.cross_attention_dim=48"])
    model, tokenizer = build_editor(cfg)
    batch = _batch(sample_encoder(cfg, model, tokenizer), tokenizer.eos_token_id)
    states, mask = model.text_encoder(batch, torch.tensor([False, False, True]), torch.tensor([False, True, False]))
    assert states.shape[-1] == 48 and mask.shape == states.shape[:2]
    assert mask[0].sum() == batch["attention_mask"][0].sum() and mask[1].sum() == batch["text_mask"][1].sum()
    assert mask[2].sum() == len(model.text_encoder.prompt.render("", True))  # the image and an empty instruction


@pytest.mark.parametrize("override, message", [
    ("model.editor.text_encoder.name=clipp", r"model\.editor\.text_encoder\.name: unknown name 'clipp'; did you "
                                             r"mean clip\?"),
    ("model.editor.text_encoder={name: clip, args: {paht: x}}", r"unknown key model\.editor\.text_encoder\.args\.paht"
                                                                r"; did you mean model\.editor\.text_encoder\.args\."
                                                                r"path\?"),
    ("model.editor.text_encoder={name: minilm, args: {source: no/such/dir}}",
     r"text_encoder\.args\.source: 'no/such/dir' is neither a registered weight"),
    ("model.editor.text_encoder={name: llm, args: {queries: -1}}", r"queries must be >= 0"),
    ("model.editor.text_encoder.name=llm", r"text_encoder=llm: the LLM reads the input image; set model\.media\.image"),
])
def test_text_encoder_config_errors_at_load(tmp_path, override, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {kind: image_editor}\ntrain: {objective: ip2p}\n")
    with pytest.raises(ConfigError, match=rf"{recipe}: .*{message}"):
        load_recipe(recipe, [override])


def test_llm_conditioner_checks_its_llm_at_load():
    with pytest.raises(ConfigError, match=r"model\.llm: unknown name 'tiny:lama'"):
        load_recipe(None, [*EDITOR, *LLM, "model.editor.text_encoder.name=llm", "model.llm=tiny:lama"])


@pytest.mark.parametrize("overrides, message", [
    ([CLIP, "model.editor.max_text_len=100"], r"max_text_len=100: the CLIP text tower has 77 positions"),
    (["model.editor.text_encoder={name: clip, args: {config: {hidden_sise: 8}}}"],
     r"args\.config: unknown CLIPTextConfig key 'hidden_sise'"),
    ([CLIP, "model.editor.unet.cross_attention_dim=48"], r"cross-attends to 48-wide states; the text encoder gives "
                                                         r"32"),
])
def test_text_encoder_build_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_editor(mmtune.load_config(None, [*EDITOR, *overrides]))


def test_llm_editor_trains_checkpoints_and_edits(tmp_path):
    train = write_edit_shards(tmp_path / "d", "train", 8)
    cfg = mmtune.load_config(None, [*EDITOR, *LLM, "model.editor.text_encoder={name: llm, args: {queries: 2}}",
                                    f"data.train={train}", f"train.out_dir={tmp_path / 'run'}", "train.steps=2",
                                    "train.batch_size=4", "train.log_every=1", "train.save_every=2"])
    summary = mmtune.finetune(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["images"] for r in records if "loss" in r] == [4, 4]
    from safetensors import safe_open

    with safe_open(Path(summary["checkpoint"]) / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert {"text_encoder.queries", "text_encoder.projector.weight"} <= names
    assert any("lora_B" in n for n in names) and any(n.startswith("text_encoder.lm.media.image.bridge") for n in names)
    image = tmp_path / "in.png"
    image.write_bytes(next(generate(1, seed=2)).data["0.png"])
    assert main(["edit", "--ckpt", summary["checkpoint"], "--image", str(image), "--prompt", "remove the circle",
                 "--out", str(tmp_path / "out.png"), "--steps", "2"]) == 0
    assert (tmp_path / "out.png").stat().st_size > 0
