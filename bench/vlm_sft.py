"""LLaVA-style image-chat SFT throughput, side by side: mmtune (unpacked and packed) against transformers'
LlavaForConditionalGeneration trained by the Trainer. Run from the repository root:

    python -m bench.vlm_sft                          # tiny:llama + a small CLIP tower (96 px, patch 16, 6 layers)
    python -m bench.vlm_sft --arch ViT-B-16          # the 224/16 CLIP tower of PERFORMANCE.md (slower)
    python -m bench.vlm_sft --model smollm2-135m --steps 10

Data: each Alpaca demo record becomes a one-image chat ("<image>\\n" + instruction, then the answer) with a generated
JPEG of random size, so text lengths vary like real instruction data. Model: one CLIP vision tower shaped like the
open_clip architecture `--arch`, saved once as a Hugging Face directory that both sides load (mmtune through its
`hf_clip` encoder), the penultimate layer's patch tokens (LLaVA's choice), mlp2x_gelu, and the LLM; the tower is
frozen, the projector and the LLM train. The peer's `<image>` token is expanded to one position per patch token,
as LlavaProcessor does, so both sides see the same sequences.

Useful FLOPs are text_sft.py's (bench/flops.py) plus, per image, the frozen tower's forward up to the layer used and
the projector's training: 2 N_tower P + 4 layers_used width P^2 + 6 N_bridge M (P patches + CLS, M LLM positions).
"""
from __future__ import annotations

import argparse
import copy
import io
import random
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from bench.common import (Bench, alpaca_shards, build_mmtune_model, encode_all, ExampleDataset, fixed_batch_losses,
                          hf_examples, load_samples, measure, MMTUNE_RUNS, mmtune_overrides, PadCollator, parse_args,
                          run_hf, run_mmtune, run_parent, set_threads, shards_of, training_args, write_child_result,
                          write_lengths)
from bench.flops import FlopModel, image_flops

TEMPLATE = "chatml"
LAYER = -2
"""Vision layer fed to the projector, as in LLaVA-1.5: the penultimate block, patch tokens only (CLS dropped)."""
IMAGE_TOKEN = "<image>"
RUNS = {"llava": "Llava + Trainer", **MMTUNE_RUNS}
BASELINE = "llava"


def parse() -> argparse.Namespace:
    return parse_args(__doc__.split("\n\n")[0], RUNS, lambda parser: parser.add_argument(
        "--arch", default="mmtune-vit-small",
        help="open_clip architecture the CLIP tower is shaped like (mmtune-vit-small, ViT-B-16, ...)"))


# ---------------------------------------------------------------- data and the shared vision tower


def synthetic_image(rng: random.Random) -> bytes:
    """A JPEG of 256-512 px a side with a few coloured shapes, so decoding and resizing cost what a photo does."""
    width, height = rng.randint(256, 512), rng.randint(256, 512)
    image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 8)):
        xs, ys = sorted(rng.randrange(width) for _ in range(2)), sorted(rng.randrange(height) for _ in range(2))
        shape = rng.choice((draw.ellipse, draw.rectangle))
        shape((xs[0], ys[0], xs[1], ys[1]), fill=tuple(rng.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def image_chat_shards(text_samples: list, out_dir: Path, seed: int) -> list[str]:
    """Each text sample with `<image>\\n` before its first user turn and a generated image, as canonical shards."""
    from mmtune.data.sample import Media, Message, Sample
    from mmtune.data.shards import ShardSink

    sink = ShardSink(out_dir, prefix="train")
    for i, s in enumerate(text_samples):
        first = next(j for j, m in enumerate(s.messages) if m.role == "user")
        messages = list(s.messages)
        messages[first] = Message("user", f"{IMAGE_TOKEN}\n{messages[first].content}")
        sink.write(Sample(id=s.id, messages=messages, source=f"{s.source}+synthetic-image", task="image_chat",
                          media=[Media("image", "0.jpg")], data={"0.jpg": synthetic_image(random.Random(f"{seed}-{i}"))}))
    return [str(p) for p in sink.close()]


def save_clip_tower(arch: str, out_dir: Path, seed: int) -> None:
    """A CLIPVisionModel shaped like open_clip's `arch` (image and patch size, width, layers, heads, activation),
    initialised from `seed`, with its image processor: the one tower both sides load."""
    import open_clip
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from mmtune.encoders.clip import MODEL_CONFIGS

    open_clip.add_model_config(MODEL_CONFIGS)
    arch_cfg = open_clip.get_model_config(arch)
    if arch_cfg is None:
        raise SystemExit(f"--arch: open_clip has no architecture {arch!r}")
    vision = arch_cfg["vision_cfg"]
    width, size = vision["width"], vision["image_size"]
    config = CLIPVisionConfig(hidden_size=width, intermediate_size=int(width * vision.get("mlp_ratio", 4)),
                              num_hidden_layers=vision["layers"],
                              num_attention_heads=width // vision.get("head_width", 64), image_size=size,
                              patch_size=vision["patch_size"],
                              hidden_act="quick_gelu" if arch_cfg.get("quick_gelu") else "gelu")
    torch.manual_seed(seed)
    CLIPVisionModel(config).save_pretrained(out_dir)
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(out_dir)


def prepare(args: argparse.Namespace, workdir: Path) -> None:
    """Image-chat shards and the CLIP tower directory, in `workdir` (the tower last: its presence means done)."""
    text = load_samples(alpaca_shards(Path(args.data), workdir / "text", args.samples, args.seed))
    image_chat_shards(text, workdir / "shards", args.seed)
    save_clip_tower(args.arch, workdir / "clip", args.seed)


def overrides(args: argparse.Namespace, workdir: Path, out_dir: Path, kind: str = "mmtune") -> list[str]:
    return mmtune_overrides(args, shards_of(workdir), out_dir, kind) + [
        "model.media.image.encoder.name=hf_clip", f"model.media.image.encoder.args.path={workdir / 'clip'}",
        f"model.media.image.encoder.args.layer={LAYER}", "model.media.image.encoder.args.tokens=patch",
        "model.media.image.bridge.name=mlp2x_gelu", "tuning.encoder=frozen", "tuning.bridge=full"]


# ---------------------------------------------------------------- the peer


def llava_peer(model, tokenizer, clip_dir: Path):
    """(LlavaForConditionalGeneration, its tokenizer, `<image>` id) holding the weights of mmtune's `model`: the
    tower read from `clip_dir`, the projector copied from the bridge, the LLM copied with one more vocabulary row
    for the added `<image>` token (zeros: as an output class it then adds exp(0) to every softmax, a loss change
    of 1/sum(exp(logits)) per token: about 1/vocabulary for logits near 0, as a fresh model's)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlavaConfig, LlavaForConditionalGeneration

    peer_tokenizer = copy.deepcopy(tokenizer)
    peer_tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_id = peer_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    text = copy.deepcopy(model.llm.config)
    text.vocab_size = len(peer_tokenizer)
    config = LlavaConfig(vision_config=CLIPVisionConfig.from_pretrained(clip_dir), text_config=text,
                         image_token_id=image_id, projector_hidden_act="gelu", vision_feature_layer=LAYER,
                         vision_feature_select_strategy="default", image_seq_length=model.media_tokens["image"],
                         tie_word_embeddings=text.tie_word_embeddings)
    peer = LlavaForConditionalGeneration(config)
    peer.model.vision_tower.load_state_dict(CLIPVisionModel.from_pretrained(clip_dir).state_dict())
    peer.model.multi_modal_projector.load_state_dict(model.media["image"].bridge.state_dict())
    state = model.llm.base_model.state_dict()
    state["embed_tokens.weight"] = _grow(state["embed_tokens.weight"], len(peer_tokenizer))
    peer.model.language_model.load_state_dict(state)
    with torch.no_grad():
        peer.lm_head.weight.copy_(_grow(model.llm.get_output_embeddings().weight, len(peer_tokenizer)))
    peer.model.vision_tower.requires_grad_(False)
    return peer, peer_tokenizer, image_id


def _grow(weight: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([weight.detach(), weight.new_zeros(rows - weight.shape[0], weight.shape[1])])


def peer_and_data(args: argparse.Namespace, workdir: Path):
    """(mmtune config, mmtune model, mmtune tokenizer, Llava peer, peer dataset, encoded samples)."""
    from transformers import AutoImageProcessor

    cfg, model, tokenizer = build_mmtune_model(overrides(args, workdir, workdir / "check"))
    peer, _, image_id = llava_peer(model, tokenizer, workdir / "clip")
    shards = cfg.data.train
    encoded = encode_all(load_samples(shards), tokenizer, TEMPLATE, args.max_len, model.media_tokens)
    dataset = ExampleDataset(hf_examples(encoded, image_id), AutoImageProcessor.from_pretrained(workdir / "clip"))
    return cfg, model, tokenizer, peer, dataset, encoded


# ---------------------------------------------------------------- children: one framework each


def run_llava(args: argparse.Namespace, workdir: Path):
    from transformers import Trainer, TrainingArguments

    _, model, tokenizer, peer, dataset, _ = peer_and_data(args, workdir)
    del model  # the peer holds copies of its weights
    return run_hf(Trainer, workdir, model=peer, args=training_args(TrainingArguments, workdir / "llava", args),
                  train_dataset=dataset, data_collator=PadCollator(tokenizer), processing_class=tokenizer)


def child(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    workdir, kind = Path(args.workdir), args.child
    if kind == "llava":
        steps = run_llava(args, workdir)
    else:
        steps = run_mmtune(overrides(args, workdir, workdir / kind, kind), workdir)
    write_child_result(workdir, kind, measure(RUNS[kind], steps, args))


# ---------------------------------------------------------------- parent: data, loss check, runs, report


def loss_check(args: argparse.Namespace, workdir: Path) -> str:
    """Both losses on one batch; also writes the sample lengths the mmtune runs are measured with."""
    cfg, model, tokenizer, peer, dataset, encoded = peer_and_data(args, workdir)
    write_lengths(workdir, encoded, flop_model(model, workdir))
    n = args.batch_size
    ours, theirs = fixed_batch_losses(cfg, model, tokenizer, peer, [s for s, _ in encoded[:n]],
                                      [dataset[i] for i in range(n)])
    return (f"same batch of {n} image chats, same initial weights: mmtune loss {ours:.6f}, Llava loss "
            f"{theirs:.6f}, |difference| {abs(ours - theirs):.2e} (the peer's extra <image> output class, a zero "
            f"row, adds exp(0) to every softmax: ~{1 / len(tokenizer):.0e} for logits near 0, more for a trained "
            f"LLM's); {model.media_tokens['image']} positions per image")


def flop_model(model, workdir: Path) -> FlopModel:
    """The LLM's FLOPs plus, per image, the frozen tower up to LAYER and the trained projector."""
    from transformers import CLIPVisionConfig

    flops = FlopModel.of_llm(model.llm.config)
    bridge = sum(p.numel() for p in model.media["image"].bridge.parameters() if p.dim() == 2)
    flops.image = image_flops(CLIPVisionConfig.from_pretrained(workdir / "clip"), LAYER, bridge,
                              model.media_tokens["image"])
    return flops


BENCH = Bench(script="vlm_sft",
              title="LLaVA-style SFT throughput: mmtune vs LlavaForConditionalGeneration + Trainer",
              report_name=lambda args: f"vlm_sft-{args.arch}",
              config={"template": TEMPLATE, "vision_layer": LAYER, "bridge": "mlp2x_gelu", "tower": "frozen"},
              runs=RUNS, baseline=BASELINE, prepare=prepare, prepared=lambda workdir: (workdir / "clip").is_dir(),
              loss_check=loss_check)


def main() -> None:
    args = parse()
    if args.child:
        return child(args)
    run_parent(BENCH, args, args.runs.split(","))


if __name__ == "__main__":
    main()
