"""Export a trained checkpoint as Hugging Face directories: the plain LLM (`hf`), its LoRA adapter (`peft`), a
LLaVA model (`llava`), an InstructBLIP model (`instructblip`), or, for an image editor, a diffusers
StableDiffusionInstructPix2PixPipeline (`diffusers`).

For `hf`, `llava` and `instructblip`, LoRA is merged into the base weights first, so neither peft nor mmtune is needed to load the
result; `peft` keeps the adapter apart, for peft users who load it onto their copy of the base model. Generation
stops where mmtune's does (the template's end token joins eos_token_id in generation_config.json). Prompts are
formatted as in training by the chat template both formats carry (infer/chat_template.py: the training template
and system prompt as Jinja, for the tokenizer and LLaVA's processor), so apply_chat_template gives mmtune's prompt;
`mmtune.json` records the template and system prompt as well.
The command line builds its parser from this module, so torch, transformers, peft and open_clip are imported in
the functions that use them, and `mmtune --help` stays instant.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from mmtune.config import RunConfig
from mmtune.data.templates import stop_token_ids
from mmtune.errors import ConfigError
from mmtune.infer.chat_template import chat_template

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torchvision import transforms as T
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration,
                              PreTrainedModel)
    from transformers.image_processing_utils import BaseImageProcessor

IMAGE_TOKEN = "<image>"
META_FILE = "mmtune.json"
LLAVA_TEXT_MODELS = ("llama", "mistral", "qwen2")
"""LLM families (config.model_type) whose causal LM is exactly LLaVA's language_model + lm_head."""


def export_hf(ckpt: str | Path, out_dir: str | Path) -> Path:
    """Write the checkpoint's LLM (LoRA merged) and tokenizer as a directory that AutoModelForCausalLM (or
    AutoModelForSeq2SeqLM) loads; for a multimodal checkpoint this is its language model alone."""
    out = _empty_dir(out_dir)
    model, tokenizer, cfg = _load(ckpt, "hf")
    llm = _merged(model.llm)
    llm.generation_config = _generation_config(llm, tokenizer, cfg)
    tokenizer.chat_template = chat_template(cfg.data.template, tokenizer, cfg.data.system_prompt, image_token=None)
    with _staging(out) as tmp:
        llm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_meta(tmp, "hf", ckpt, cfg, tokenizer)
    return out


def export_peft(ckpt: str | Path, out_dir: str | Path) -> Path:
    """Write the LLM's LoRA adapter (adapter_config.json + adapter_model.safetensors) and tokenizer: a directory
    that `PeftModel.from_pretrained(base_llm, out)` loads. For a multimodal checkpoint this is its language model's
    adapter alone (the bridge and encoder travel only in --format llava). Raises ConfigError when tuning.llm is
    not lora."""
    import peft

    from mmtune.models.tuning import save_adapter

    out = _empty_dir(out_dir)
    model, tokenizer, cfg = _load(ckpt, "peft")
    if not isinstance(model.llm, peft.PeftModel):
        raise ConfigError(f"tuning.llm: the checkpoint's LLM is tuned with {cfg.tuning.llm!r}, not lora, so it has "
                          "no adapter; export it with --format hf")
    tokenizer.chat_template = chat_template(cfg.data.template, tokenizer, cfg.data.system_prompt, image_token=None)
    with _staging(out) as tmp:
        save_adapter(model.llm, tmp)
        tokenizer.save_pretrained(tmp)
        _write_meta(tmp, "peft", ckpt, cfg, tokenizer, base_model=cfg.model.llm)
    return out


def export_llava(ckpt: str | Path, out_dir: str | Path) -> Path:
    """Write a LlavaForConditionalGeneration directory with its LlavaProcessor (tokenizer with an `<image>` token,
    image processor equivalent to the encoder's transform). Raises ConfigError naming the part (model.llm,
    model.media.image.*) that LLaVA's architecture cannot hold."""
    from transformers import LlavaConfig, LlavaProcessor

    out = _empty_dir(out_dir)
    model, tokenizer, cfg = _load(ckpt, "llava")
    _check_llava_parts(cfg, model.llm)
    image_tokens = model.media_tokens["image"]
    image = model.media["image"]
    encoder, bridge, llm = (_merged(part) for part in (image.encoder, image.bridge, model.llm))
    tower = TOWERS[cfg.model.media.image.encoder.name](encoder)
    strategy = _select_strategy(encoder.tokens, tower.has_cls)
    image_id = _add_image_token(tokenizer, llm)
    # The tower holds only the blocks mmtune kept (up to model.media.image.encoder.args.layer), so LLaVA reads its last one.
    config = LlavaConfig(vision_config=tower.model.config, text_config=llm.config, image_token_index=image_id,
                         image_seq_length=image_tokens, projector_hidden_act="gelu", vision_feature_layer=-1,
                         vision_feature_select_strategy=strategy)
    llava = _assemble(config, llm, tower.model, bridge)
    llava.generation_config = _generation_config(llm, tokenizer, cfg)
    llava.generation_config.suppress_tokens = [image_id]  # not a token mmtune's model can emit
    tokenizer.chat_template = chat_template(cfg.data.template, tokenizer, cfg.data.system_prompt, IMAGE_TOKEN)
    processor = LlavaProcessor(image_processor=tower.image_processor, tokenizer=tokenizer,
                               patch_size=tower.model.config.patch_size, vision_feature_select_strategy=strategy,
                               num_additional_image_tokens=int(tower.has_cls), image_token=IMAGE_TOKEN,
                               chat_template=tokenizer.chat_template)
    with _staging(out) as tmp:
        llava.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        _write_meta(tmp, "llava", ckpt, cfg, tokenizer, image_token=IMAGE_TOKEN, image_processor_backend=tower.backend)
    return out


def export_diffusers(ckpt: str | Path, out_dir: str | Path) -> Path:
    """Write an image editor as a StableDiffusionInstructPix2PixPipeline directory (no safety checker) whose
    output, for the same seed, steps and guidance scales, is `mmtune edit`'s for an input of the editor's image
    size (the pipeline resizes other sizes its own way). Raises ConfigError naming the part (model.editor.*) that
    the pipeline cannot hold."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from mmtune.models.conditioning import write_clip_vocab
    from mmtune.models.editor import sampler

    out = _empty_dir(out_dir)
    model, tokenizer, cfg = _load(ckpt, "diffusers")
    _check_diffusers_parts(cfg, model)
    pipeline = StableDiffusionInstructPix2PixPipeline(
        vae=model.vae.vae, text_encoder=model.text_encoder.model, tokenizer=tokenizer, unet=model.unet,
        scheduler=sampler(model.schedule), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    with _staging(out) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        write_clip_vocab(tmp / "tokenizer")
        _write_json_meta(tmp, "diffusers", ckpt, image_size=cfg.model.editor.image_size)
    return out


def _check_diffusers_parts(cfg: RunConfig, model: nn.Module) -> None:
    """Stable Diffusion's parts: a CLIP text tower attended in full (the pipeline passes no attention mask) and an
    AutoencoderKL."""
    from mmtune.models.editor import KLVae

    text = cfg.model.editor.text_encoder.name
    if text != "clip":
        raise ConfigError(f"model.editor.text_encoder: {text} has no place in a Stable Diffusion pipeline, whose "
                          "text encoder is a CLIPTextModel; train with model.editor.text_encoder.name=clip")
    if not isinstance(model.vae, KLVae):
        raise ConfigError(f"model.editor.vae: {cfg.model.editor.vae} is a {type(model.vae).__name__}, not a "
                          "diffusers AutoencoderKL, which the pipeline needs; train with an AutoencoderKL directory")


def _load(ckpt: str | Path, fmt: str):
    """(model, tokenizer, cfg) of a checkpoint whose model.kind the format exports."""
    from mmtune.infer.generate import load_checkpoint

    model, tokenizer, cfg = load_checkpoint(ckpt)
    kind = FORMATS[fmt][1]
    if cfg.model.kind != kind:
        formats = [f for f, (_, k) in FORMATS.items() if k == cfg.model.kind]
        raise ConfigError(f"--format {fmt} exports model.kind={kind} checkpoints; {ckpt} holds a "
                          f"model.kind={cfg.model.kind} model (export it with --format {' or '.join(formats)})")
    return model, tokenizer, cfg


def _merged(module: nn.Module) -> nn.Module:
    """The module with LoRA (or another peft adapter) folded into its base weights; others as they are."""
    import peft

    return module.merge_and_unload() if isinstance(module, peft.PeftModel) else module


def _generation_config(llm: PreTrainedModel, tokenizer, cfg: RunConfig):
    """The LLM's generation config, stopping at the training template's end of turn as mmtune's generate does."""
    gen = copy.deepcopy(llm.generation_config)
    gen.eos_token_id = stop_token_ids(tokenizer, cfg.data.template)
    gen.pad_token_id = tokenizer.pad_token_id
    return gen


def _write_meta(out: Path, fmt: str, ckpt: str | Path, cfg: RunConfig, tokenizer, **extra) -> None:
    """mmtune.json of a language model: the prompt format (template, system prompt, stop ids)."""
    _write_json_meta(out, fmt, ckpt, template=cfg.data.template, system_prompt=cfg.data.system_prompt,
                     stop_token_ids=stop_token_ids(tokenizer, cfg.data.template), **extra)


def _write_json_meta(out: Path, fmt: str, ckpt: str | Path, **fields) -> None:
    meta = {"format": fmt, "checkpoint": str(ckpt), **fields}
    (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def _empty_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out: {out} exists and is not an empty directory; remove it or choose another")
    return out


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary sibling directory renamed to `out` once everything is written, so a failed export leaves no
    half-written model behind."""
    _empty_dir(out)
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)


# ---- LLaVA: which parts fit, and how they are put together ----

def _check_llava_parts(cfg: RunConfig, llm: nn.Module) -> None:
    image, others = cfg.model.media.image, sorted(set(cfg.model.media.parts()) - {"image"})
    if image is None:
        raise ConfigError("model.media.image: the checkpoint has no image encoder; export it with --format hf")
    if others:
        raise ConfigError(f"model.media.{others[0]}: LLaVA holds images only; export the LLM with --format hf")
    if cfg.model.fusion.name != "splice":
        raise ConfigError(f"model.fusion.name: LLaVA splices image tokens into the prompt and has no place for "
                          f"{cfg.model.fusion.name} blocks; export the LLM with --format hf (text-only inputs: "
                          "the blocks add nothing there)")
    if image.encoder.name not in TOWERS:
        raise ConfigError(f"model.media.image.encoder.name: {image.encoder.name} has no LLaVA vision tower; "
                          f"exportable encoders: {', '.join(TOWERS)}")
    if image.bridge.name != "mlp2x_gelu":
        raise ConfigError(f"model.media.image.bridge.name: {image.bridge.name} cannot be exported to LLaVA, whose "
                          "projector is mlp2x_gelu")
    model_type = llm.config.model_type
    if model_type not in LLAVA_TEXT_MODELS:
        raise ConfigError(f"model.llm: a {model_type} LLM cannot be exported to LLaVA; supported families: "
                          f"{', '.join(LLAVA_TEXT_MODELS)}")


def _select_strategy(tokens: str, has_cls: bool) -> str:
    """LLaVA's vision_feature_select_strategy giving the encoder's tokens: `default` drops the first (CLS) token."""
    if tokens == "cls":
        raise ConfigError("model.media.image.encoder.args.tokens: cls (the class token alone) has no LLaVA feature strategy; "
                          "LLaVA takes patch or all tokens")
    return "default" if tokens == "patch" and has_cls else "full"


def _add_image_token(tokenizer, llm: PreTrainedModel) -> int:
    """Add `<image>` as a special token, growing the LLM's embeddings if needed. Its row is zero: LLaVA writes
    image features over it and never reads it as an input embedding."""
    import torch

    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id >= llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            llm.get_input_embeddings().weight[image_id] = 0
    return image_id


def _assemble(config: LlavaConfig, llm: PreTrainedModel, tower: PreTrainedModel,
              bridge: nn.Module) -> LlavaForConditionalGeneration:
    """Place the trained parts in a LLaVA skeleton built on the meta device (no second copy of the LLM); the LLM's
    own modules go in as they are, so tied embeddings stay tied."""
    import torch
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config)
    llava.model.language_model = llm.base_model
    llava.lm_head = llm.get_output_embeddings()
    llava.model.vision_tower = tower
    llava.model.multi_modal_projector.load_state_dict(bridge.state_dict(), strict=True, assign=True)
    return llava.eval()


@dataclass
class Tower:
    """A Hugging Face vision tower holding the encoder's kept blocks, and the image processor matching its
    transform."""
    model: PreTrainedModel
    has_cls: bool
    image_processor: BaseImageProcessor
    backend: str
    """The image processor backend (AutoProcessor.from_pretrained(..., backend=...)) that gives mmtune's pixels."""


def _load_tower(model: PreTrainedModel, state: dict[str, torch.Tensor], where: str) -> PreTrainedModel:
    """Load `state` into `model`; only the final norm may be missing (LLaVA reads hidden states before it)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("post_layernorm.")]
    if missing or unexpected:
        raise ConfigError(f"{where}: the vision tower does not fit a Hugging Face {type(model).__name__}: "
                          f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def _hf_clip_tower(encoder: nn.Module) -> Tower:
    """hf_clip: the same transformers tower, copied with its kept blocks, and the processor mmtune used."""
    from transformers.image_processing_backends import PilBackend

    src = encoder.model
    model = _load_tower(type(src)(copy.deepcopy(src.config)), src.state_dict(), "model.media.image.encoder.args.path")
    processor = encoder.transform.processor
    return Tower(model, encoder.has_cls, processor, "pil" if isinstance(processor, PilBackend) else "torchvision")


def _open_clip_tower(encoder: nn.Module) -> Tower:
    """clip: open_clip's ViT rewritten as a CLIPVisionModel; its transform as a CLIPImageProcessor."""
    from transformers import CLIPVisionModel

    visual = encoder.visual
    model = CLIPVisionModel(_clip_vision_config(visual))
    state = open_clip_to_hf_clip(visual.state_dict())
    return Tower(_load_tower(model, state, "model.media.image.encoder.args.arch"), True, _clip_image_processor(encoder.transform),
                 "pil")  # open_clip resizes PIL images


TOWERS: dict[str, Callable[[nn.Module], Tower]] = {"clip": _open_clip_tower, "hf_clip": _hf_clip_tower}
"""Encoder name (model.media.image.encoder.name) -> its LLaVA vision tower."""


# ---- open_clip ViT -> transformers CLIPVisionModel ----

_BLOCK = r"transformer\.resblocks\.(\d+)\."
_LAYER = r"encoder.layers.\1."
_OPEN_CLIP_TO_HF_CLIP: list[tuple[str, str | tuple[str, str, str] | None]] = [
    (r"class_embedding", "embeddings.class_embedding"),
    (r"conv1\.weight", "embeddings.patch_embedding.weight"),
    (r"positional_embedding", "embeddings.position_embedding.weight"),
    (r"ln_pre\.(weight|bias)", r"pre_layrnorm.\1"),
    (_BLOCK + r"ln_1\.(weight|bias)", _LAYER + r"layer_norm1.\2"),
    # open_clip keeps q, k and v in one in_proj matrix (nn.MultiheadAttention); transformers has three.
    (_BLOCK + r"attn\.in_proj_(weight|bias)", tuple(_LAYER + rf"self_attn.{p}_proj.\2" for p in "qkv")),
    (_BLOCK + r"attn\.out_proj\.(weight|bias)", _LAYER + r"self_attn.out_proj.\2"),
    (_BLOCK + r"ln_2\.(weight|bias)", _LAYER + r"layer_norm2.\2"),
    (_BLOCK + r"mlp\.c_fc\.(weight|bias)", _LAYER + r"mlp.fc1.\2"),
    (_BLOCK + r"mlp\.c_proj\.(weight|bias)", _LAYER + r"mlp.fc2.\2"),
    (r"attn_pool(_contrastive)?\..+", None),  # CoCa's pooling head: pruning keeps it, the encoder never runs it
]


def open_clip_to_hf_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip VisionTransformer weights (after mmtune's pruning) -> transformers CLIPVisionModel names.

    The embeddings, the pre-norm and the kept blocks are mapped; a weight with no counterpart (LayerScale, q/k norms,
    separate q/k/v matrices) raises ConfigError, as the converted tower would compute something else.
    """
    return _rename_open_clip(state, _OPEN_CLIP_TO_HF_CLIP, "CLIPVisionModel")


def _rename_open_clip(state: dict[str, torch.Tensor], table: list, target: str, hint: str = "") -> dict[str, torch.Tensor]:
    """open_clip tower weights renamed by `table` (regex -> name, names for a split, or None: dropped); a weight
    no row matches is a ConfigError naming it and the `target` class."""
    out = {}
    for key, value in state.items():
        for src, dst in table:
            match = re.fullmatch(src, key)
            if match:
                break
        else:
            raise ConfigError(f"model.media.image.encoder.args.arch: open_clip weight visual.{key} has no counterpart in a "
                              f"Hugging Face {target}, so this tower cannot be exported{hint}")
        if isinstance(dst, tuple):
            out.update(zip((match.expand(d) for d in dst), value.chunk(3)))
        elif dst is not None:
            out[match.expand(dst)] = value
    return out


@functools.cache
def _activations() -> dict[tuple[type, str | None], str]:
    """(activation module type, its `approximate`) in open_clip -> transformers' hidden_act."""
    from open_clip.transformer import QuickGELU
    from torch import nn

    return {
        (nn.GELU, "none"): "gelu",
        (nn.GELU, "tanh"): "gelu_pytorch_tanh",
        (QuickGELU, None): "quick_gelu",  # OpenAI's CLIP weights: x * sigmoid(1.702 x)
    }


def _clip_vision_config(visual: nn.Module) -> CLIPVisionConfig:
    """The CLIPVisionConfig of an open_clip ViT whose pruned blocks are all kept."""
    from torch import nn
    from transformers import CLIPVisionConfig

    blocks = visual.transformer.resblocks
    acts = {(type(b.mlp.gelu), getattr(b.mlp.gelu, "approximate", None)) for b in blocks}
    eps = {m.eps for m in visual.modules() if isinstance(m, nn.LayerNorm)}
    if len(acts) != 1 or next(iter(acts)) not in _activations():
        raise ConfigError(f"model.media.image.encoder.args.arch: the tower's MLP activation {sorted(map(str, acts))} has no "
                          f"transformers equivalent; exportable: {', '.join(_activations().values())}")
    if len(eps) != 1:
        raise ConfigError(f"model.media.image.encoder.args.arch: the tower's layer norms use several eps values {sorted(eps)}; "
                          "a CLIPVisionModel has one")
    if len(set(visual.image_size)) != 1 or len(set(visual.patch_size)) != 1:
        raise ConfigError(f"model.media.image.encoder.args.arch: non-square images or patches ({visual.image_size}, "
                          f"{visual.patch_size}) do not fit a CLIPVisionModel")
    return CLIPVisionConfig(hidden_size=visual.transformer.width, intermediate_size=blocks[0].mlp.c_fc.out_features,
                            num_hidden_layers=len(blocks), num_attention_heads=blocks[0].attn.num_heads,
                            image_size=visual.image_size[0], patch_size=visual.patch_size[0],
                            hidden_act=_activations()[next(iter(acts))], layer_norm_eps=next(iter(eps)))


# ---- open_clip transform -> CLIPImageProcessor ----

def _resize(step: T.Resize) -> dict:
    from transformers.image_utils import PILImageResampling

    if step.max_size is not None or step.interpolation.name not in PILImageResampling.__members__:
        raise ConfigError(f"model.media.image.encoder: the image transform's {step} has no CLIPImageProcessor equivalent")
    size = [step.size] if isinstance(step.size, int) else list(step.size)
    # torchvision: one number resizes the shortest edge (aspect kept), two give (height, width)
    hf_size = {"shortest_edge": size[0]} if len(size) == 1 else {"height": size[0], "width": size[1]}
    return {"do_resize": True, "size": hf_size, "resample": PILImageResampling[step.interpolation.name]}


def _center_crop(step: T.CenterCrop) -> dict:
    return {"do_center_crop": True, "crop_size": {"height": step.size[0], "width": step.size[1]}}


def _normalize(step: T.Normalize) -> dict:
    return {"do_normalize": True, "image_mean": list(step.mean), "image_std": list(step.std)}


def _no_op(step) -> dict:
    return {}  # RGB conversion and to-tensor scaling (1/255): the processor always does both


@functools.cache
def _transform_steps() -> dict[type, Callable[[object], dict]]:
    """open_clip / torchvision transform step type -> its CLIPImageProcessor arguments."""
    from open_clip.transform import MaybeConvertMode, MaybeToTensor
    from torchvision import transforms as T

    return {T.Resize: _resize, T.CenterCrop: _center_crop, T.Normalize: _normalize,
            MaybeConvertMode: _no_op, MaybeToTensor: _no_op, T.ToTensor: _no_op}


def _clip_image_processor(transform: T.Compose) -> CLIPImageProcessor:
    """A CLIPImageProcessor doing what open_clip's validation transform does (resize, crop, rescale, normalise).

    Loaded with `backend="pil"` it gives the same pixel values; the default torchvision backend resizes tensors
    with its own antialiasing, so on images that need resizing it differs by up to about one grey level.
    """
    from transformers import CLIPImageProcessor

    kwargs = {"do_resize": False, "do_center_crop": False, "do_normalize": False, "do_rescale": True,
              "rescale_factor": 1 / 255, "do_convert_rgb": True}
    for step in transform.transforms:
        if type(step) not in _transform_steps():
            raise ConfigError(f"model.media.image.encoder: the image transform step {step} has no CLIPImageProcessor equivalent")
        kwargs.update(_transform_steps()[type(step)](step))
    return CLIPImageProcessor(**kwargs)


# ---- InstructBLIP: which parts fit, and how they are put together ----

def export_instructblip(ckpt: str | Path, out_dir: str | Path) -> Path:
    """Write an InstructBlipForConditionalGeneration directory with its InstructBlipProcessor (the LLM's tokenizer
    with an `<image>` token, the Q-Former's BERT tokenizer, an image processor equivalent to the encoder's
    transform). Raises ConfigError naming the part (model.llm, model.media.image.*) InstructBLIP cannot hold.

    mmtune writes the query outputs where `<image>` stands in the prompt; the exported chat template does the same
    (one `<image>` token per query), while InstructBlipProcessor's own call puts them before all the text. Use the
    chat template for the LLM's ids and `processor.qformer_tokenizer` on the text of the image's turn (without the
    image) for the Q-Former's, and pass `generation_config=model.generation_config` to `generate` (InstructBLIP
    generates with its LLM's own config otherwise, which does not stop at the template's end of turn), as
    mmtune.json says."""
    from transformers import InstructBlipConfig, InstructBlipProcessor

    out = _empty_dir(out_dir)
    model, tokenizer, cfg = _load(ckpt, "instructblip")
    _check_instructblip_parts(cfg, model)
    image = model.media["image"]
    encoder, bridge, llm = (_merged(part) for part in (image.encoder, image.bridge, model.llm))
    tower = BLIP_TOWERS[cfg.model.media.image.encoder.name](encoder, bridge)
    image_id = _add_image_token(tokenizer, llm)
    config = InstructBlipConfig(vision_config=tower.model.config, qformer_config=bridge.qformer.config.to_dict(),
                                text_config=llm.config, num_query_tokens=bridge.num_queries,
                                image_token_index=image_id)
    blip = _assemble_instructblip(config, llm, tower.model, bridge)
    generation = _generation_config(llm, tokenizer, cfg)
    generation.suppress_tokens = [image_id]  # not a token mmtune's model can emit
    blip.generation_config = generation
    tokenizer.chat_template = chat_template(cfg.data.template, tokenizer, cfg.data.system_prompt,
                                            IMAGE_TOKEN * bridge.num_queries)
    qformer_tokenizer = copy.deepcopy(bridge.encode_instruction.tokenizer)
    qformer_tokenizer.model_max_length = bridge.encode_instruction.max_len  # truncation=True cuts where mmtune does
    processor = InstructBlipProcessor(image_processor=tower.image_processor, tokenizer=tokenizer,
                                      qformer_tokenizer=qformer_tokenizer, num_query_tokens=bridge.num_queries,
                                      chat_template=tokenizer.chat_template)
    with _staging(out) as tmp:
        blip.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        _write_meta(tmp, "instructblip", ckpt, cfg, tokenizer, image_token=IMAGE_TOKEN,
                    num_query_tokens=bridge.num_queries, qformer_max_length=qformer_tokenizer.model_max_length,
                    qformer_text="the text of the user turn holding the image, the image removed",
                    generate="model.generate(**inputs, generation_config=model.generation_config)",
                    image_processor_backend=tower.backend)
    return out


def _check_instructblip_parts(cfg: RunConfig, model: nn.Module) -> None:
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)

    image, others = cfg.model.media.image, sorted(set(cfg.model.media.parts()) - {"image"})
    if image is None:
        raise ConfigError("model.media.image: the checkpoint has no image encoder; export it with --format hf")
    if others:
        raise ConfigError(f"model.media.{others[0]}: InstructBLIP holds images only; export the LLM with --format hf")
    if image.bridge.name != "qformer":
        raise ConfigError(f"model.media.image.bridge.name: {image.bridge.name} cannot be exported to InstructBLIP, "
                          "whose bridge is the Q-Former (qformer)")
    if not model.media["image"].encode_context:
        raise ConfigError("model.media.image.bridge.args.instruction_aware: a Q-Former that reads no instruction is "
                          "BLIP-2's, not InstructBLIP's (which always reads qformer_input_ids)")
    if image.bridge.args.get("feature_positions"):
        raise ConfigError("model.media.image.bridge.args.feature_positions: InstructBLIP's Q-Former has no position "
                          "embeddings for the image features; export the LLM with --format hf")
    if image.encoder.name not in BLIP_TOWERS:
        raise ConfigError(f"model.media.image.encoder.name: {image.encoder.name} has no InstructBLIP vision tower: "
                          f"{BLIP_REFUSED.get(image.encoder.name, 'not a ViT')}; exportable: clip (an open_clip ViT "
                          "without ln_pre)")
    if model.media["image"].encoder.tokens != "all":
        raise ConfigError(f"model.media.image.encoder.args.tokens: {model.media['image'].encoder.tokens}; InstructBLIP's "
                          "Q-Former reads every token of its vision tower (all: the class token and the grid)")
    model_type = model.llm.config.model_type
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(f"model.llm: a {model_type} LLM is neither a causal nor a seq2seq language model "
                          "transformers can put in InstructBLIP")


BLIP_REFUSED = {"hf_clip": "a CLIP tower normalises before its first block (pre_layrnorm) and SigLIP has no class "
                           "token, and InstructBlipVisionModel has neither"}
"""Why an encoder has no InstructBLIP vision tower."""


def _assemble_instructblip(config, llm: PreTrainedModel, tower: PreTrainedModel, bridge: nn.Module):
    """The trained parts in an InstructBLIP skeleton built on the meta device (no second copy of the LLM)."""
    import torch
    from transformers import InstructBlipForConditionalGeneration

    with torch.device("meta"):
        blip = InstructBlipForConditionalGeneration(config)
    blip.language_model, blip.vision_model = llm, tower
    blip.qformer = _instructblip_qformer(bridge)
    blip.query_tokens, blip.language_projection = bridge.query_tokens, bridge.language_projection
    return blip.eval()


def _instructblip_qformer(bridge: nn.Module):
    """transformers' InstructBlipQFormerModel holding the bridge's Q-Former. transformers runs the last layer's text
    feed-forward and discards its output, so mmtune has none: it is written as a copy of the query one."""
    from transformers import InstructBlipQFormerModel

    source = bridge.qformer
    qformer = InstructBlipQFormerModel(copy.deepcopy(source.config))
    state = source.state_dict()
    last = len(source.encoder.layer) - 1
    for part in ("intermediate", "output"):
        for key, value in source.encoder.layer[last].get_submodule(f"{part}_query").state_dict().items():
            state[f"encoder.layer.{last}.{part}.{key}"] = value
    qformer.load_state_dict(state, strict=True)
    return qformer.eval()


_TO_BLIP_VISION: list[tuple[str, str | None]] = [
    (r"class_embedding", "embeddings.class_embedding"),
    (r"conv1\.weight", "embeddings.patch_embedding.weight"),
    (r"positional_embedding", "embeddings.position_embedding"),
    (_BLOCK + r"ln_1\.(weight|bias)", _LAYER + r"layer_norm1.\2"),
    (_BLOCK + r"attn\.in_proj_(weight|bias)", _LAYER + r"self_attn.qkv.\2"),  # both keep q, k, v in one matrix
    (_BLOCK + r"attn\.out_proj\.(weight|bias)", _LAYER + r"self_attn.projection.\2"),
    (_BLOCK + r"ln_2\.(weight|bias)", _LAYER + r"layer_norm2.\2"),
    (_BLOCK + r"mlp\.c_fc\.(weight|bias)", _LAYER + r"mlp.fc1.\2"),
    (_BLOCK + r"mlp\.c_proj\.(weight|bias)", _LAYER + r"mlp.fc2.\2"),
    (r"attn_pool(_contrastive)?\..+", None),
]


def _open_clip_blip_tower(encoder: nn.Module, bridge: nn.Module) -> Tower:
    """clip: open_clip's ViT rewritten as an InstructBlipVisionModel, whose final norm is the Q-Former's LayerNorm
    over the features (LAVIS ln_vision); its transform as a CLIPImageProcessor."""
    import torch
    from transformers import InstructBlipVisionConfig, InstructBlipVisionModel

    clip = _clip_vision_config(encoder.visual)
    if bridge.ln_vision.eps != clip.layer_norm_eps:
        raise ConfigError(f"model.media.image.bridge: its feature norm has eps {bridge.ln_vision.eps}, the tower's "
                          f"norms {clip.layer_norm_eps}; an InstructBlipVisionModel has one")
    config = InstructBlipVisionConfig(
        hidden_size=clip.hidden_size, intermediate_size=clip.intermediate_size, num_hidden_layers=clip.num_hidden_layers,
        num_attention_heads=clip.num_attention_heads, image_size=clip.image_size, patch_size=clip.patch_size,
        hidden_act=clip.hidden_act, layer_norm_eps=clip.layer_norm_eps, qkv_bias=True)
    model = InstructBlipVisionModel(config)
    state = _rename_open_clip(encoder.visual.state_dict(), _TO_BLIP_VISION, "InstructBlipVisionModel",
                              " (it has no pre-norm: use an open_clip ViT with no_ln_pre)")
    own = model.state_dict()
    state = {k: v.reshape(own[k].shape) for k, v in state.items()}  # class and position embeddings gain batch axes
    state["embeddings.patch_embedding.bias"] = torch.zeros_like(own["embeddings.patch_embedding.bias"])  # open_clip's has none
    state.update({f"post_layernorm.{k}": v for k, v in bridge.ln_vision.state_dict().items()})
    return Tower(_load_tower(model, state, "model.media.image.encoder.args.arch"), True,
                 _clip_image_processor(encoder.transform), "pil")


BLIP_TOWERS: dict[str, Callable[[nn.Module, nn.Module], Tower]] = {"clip": _open_clip_blip_tower}
"""Encoder name -> its InstructBLIP vision tower (given the encoder and the Q-Former, which owns the final norm)."""


# ---- `mmtune export` and `mmtune.export` ----

FORMATS: dict[str, tuple[Callable[[str | Path, str | Path], Path], str]] = {
    "hf": (export_hf, "lm"), "peft": (export_peft, "lm"), "llava": (export_llava, "lm"),
    "instructblip": (export_instructblip, "lm"),
    "diffusers": (export_diffusers, "image_editor")}
"""Format -> (its exporter, the model.kind it exports)."""


def export(ckpt: str | Path, out_dir: str | Path, format: str = "hf") -> Path:
    """Export in one of FORMATS (`mmtune export` and `mmtune.export`); returns the directory written."""
    if format not in FORMATS:
        raise ConfigError(f"--format: unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[format][0](ckpt, out_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint directory or run directory (newest checkpoint)")
    parser.add_argument("--out", required=True, help="directory to create (must not exist or be empty)")
    parser.add_argument("--format", choices=list(FORMATS), default="hf",
                        help="hf: the LLM alone, LoRA merged (AutoModelForCausalLM); peft: the LLM's LoRA adapter "
                             "(PeftModel.from_pretrained); llava: "
                             "LlavaForConditionalGeneration + processor (CLIP tower, mlp2x_gelu, Llama-like LLM); "
                             "diffusers: an image editor as StableDiffusionInstructPix2PixPipeline (CLIP text "
                             "encoder, AutoencoderKL); instructblip: InstructBlipForConditionalGeneration + processor "
                             "(open_clip ViT without ln_pre, instruction-aware qformer, causal or seq2seq LLM)")


def run(args: argparse.Namespace) -> int:
    out = export(args.ckpt, args.out, args.format)
    print(f"exported {args.format}: {out} (what it was exported from: {out / META_FILE})")
    return 0
