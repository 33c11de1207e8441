"""RunConfig -> the model to train: LLM + an encoder and bridge per media kind, with each part's tuning applied."""
from __future__ import annotations

from pathlib import Path

import torch

from mmtune.config import RunConfig
from mmtune.errors import ConfigError


def build_model(cfg: RunConfig):
    """Returns (MultimodalLM, tokenizer). Parts built from scratch are listed in `model.from_scratch` (state-dict
    prefixes), so checkpoints save them whole (they cannot be re-read from a source later)."""
    from mmtune.models.fusion import build_fusion
    from mmtune.models.gated_mlp import fuse_gated_mlps
    from mmtune.models.llm import load_llm
    from mmtune.models.multimodal_lm import MultimodalLM
    from mmtune.models.packed_attention import use_packed_attention
    from mmtune.models.tuning import apply_tuning

    torch.manual_seed(cfg.train.seed)  # parts built from scratch get the same init on every run and rank
    llm, tokenizer = load_llm(cfg.model.llm, tokenizer=cfg.model.tokenizer)
    if cfg.data.packing and cfg.train.packed_attention == "chunked":
        use_packed_attention(llm)
    from_scratch = {"llm"} if cfg.model.llm.startswith("tiny:") else set()
    media = build_media(cfg, llm.get_input_embeddings().embedding_dim, from_scratch)
    llm = apply_tuning(llm, cfg.tuning.llm, cfg.tuning.lora, "tuning.llm")
    fusion = apply_tuning(build_fusion(cfg.model.fusion, llm, tuple(media)), cfg.tuning.fusion, cfg.tuning.lora,
                          "tuning.fusion")
    from_scratch.add("fusion")
    model = MultimodalLM(llm, media, fusion)
    if cfg.train.activation_checkpointing:
        checkpoint_activations(model.llm, [part.encoder for part in media.values()])
    if cfg.train.compile:
        compile_layers(model.llm)  # fuses the SwiGLU work itself
    else:
        fuse_gated_mlps(model.llm)
    model.from_scratch = from_scratch
    if cfg.model.init_from:
        load_weights(model, Path(cfg.model.init_from), field="model.init_from")
    return model, tokenizer


def checkpoint_activations(llm, encoders) -> None:
    """Activation checkpointing in the LLM (gradients cross it even when frozen, towards the bridges) and in the
    encoders that train and support it (the CLIP towers). Non-reentrant checkpoints need no input that requires
    grad, so frozen embeddings and LoRA work with the inputs_embeds MultimodalLM passes (transformers still hooks
    the input embeddings, as peft would)."""
    try:
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    except ValueError as e:  # transformers: "<Model> does not support activation checkpointing."
        raise ConfigError(f"train.activation_checkpointing: {e}") from None
    for encoder in encoders:
        if hasattr(encoder, "checkpoint_activations") and any(p.requires_grad for p in encoder.parameters()):
            encoder.checkpoint_activations()


def compile_layers(llm) -> None:
    """torch.compile every decoder layer (as torchtune does): the layers hold the elementwise work worth fusing,
    and the model's Python glue around them (masks, media, the sparse head) stays eager."""
    from mmtune.models.fusion import decoder_layers

    for layer in decoder_layers(llm, "train.compile"):
        layer.compile()


def build_media(cfg: RunConfig, hidden: int, from_scratch: set[str]) -> dict:
    """Kind -> MediaPart with its tuning applied. The image kind is built first: other kinds' encoders may reuse
    its (tuned) encoder, whose parameters then belong to, train with and are saved with the image part."""
    from mmtune.bridges import build_bridge
    from mmtune.encoders import build_encoder
    from mmtune.models.multimodal_lm import MediaPart
    from mmtune.models.tuning import apply_tuning

    media = {}
    for kind, part in cfg.model.media.parts().items():
        image = media["image"].encoder if "image" in media else None
        encoder = build_encoder(part.encoder, kind, image_encoder=image)
        bridge = build_bridge(part.bridge, encoder.out_dim, hidden, key=f"model.media.{kind}.bridge",
                              frames=getattr(encoder, "time_steps", 1))
        from_scratch.add(f"media.{kind}.bridge")
        if encoder.from_scratch:
            from_scratch.add(f"media.{kind}.encoder")
        if any(True for _ in encoder.parameters()):  # a video encoder on the shared image tower has none
            encoder = apply_tuning(encoder, cfg.tuning.mode(kind, "encoder"), cfg.tuning.lora,
                                   f"tuning.media.{kind}.encoder")
        encode_context = bridge.context_encoder() if bridge.context else None
        bridge = apply_tuning(bridge, cfg.tuning.mode(kind, "bridge"), cfg.tuning.lora, f"tuning.media.{kind}.bridge")
        media[kind] = MediaPart(encoder, bridge, encode_context)
    return media


def names_to_save(model) -> list[str]:
    """State-dict names of the trainable parameters plus every tensor of parts built from scratch. Tied tensors
    (e.g. an LM head sharing the embedding) are listed once, under their first name; loading restores the tie.
    Names only, so sharded engines can gather just these tensors."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    prefixes = tuple(f"{part}." for part in getattr(model, "from_scratch", ()))
    out, seen = [], set()
    for n, t in model.state_dict(keep_vars=True).items():
        if (n in trainable or (prefixes and n.startswith(prefixes))) and id(t) not in seen:
            seen.add(id(t))
            out.append(n)
    return out


def weights_to_save(model) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {n: state[n].detach().contiguous() for n in names_to_save(model)}


def load_weights(model, ckpt: Path, field: str = "checkpoint") -> list[str]:
    """Load `ckpt/model.safetensors` into `model`. Keys absent from the model are an error; returns the loaded keys.

    Stage 2 may wrap the LLM with LoRA while stage 1 saved a plain bridge: keys match by name, so the bridge loads
    and the new LoRA weights keep their fresh init.
    """
    from safetensors.torch import load_file

    path = ckpt / "model.safetensors" if ckpt.is_dir() else ckpt
    if not path.is_file():
        raise ConfigError(f"{field}: no model.safetensors in {ckpt}")
    state = {_current_name(k): v for k, v in load_file(str(path)).items()}
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ConfigError(f"{field}: {path} has {len(unknown)} weights this model lacks, e.g. {unknown[:3]}; "
                          "was it trained with a different model config?")
    bad = [k for k, v in state.items() if own[k].shape != v.shape]
    if bad:
        raise ConfigError(f"{field}: shape mismatch for {bad[:3]} ({state[bad[0]].shape} vs {own[bad[0]].shape})")
    model.load_state_dict(state, strict=False)
    return list(state)


LEGACY_PREFIXES = ("encoder.", "bridge.")
"""Checkpoints written before media kinds held the image encoder and bridge at the top level."""


def _current_name(name: str) -> str:
    return f"media.image.{name}" if name.startswith(LEGACY_PREFIXES) else name


PREFIX = "step-"
"""Checkpoint directories are `run_dir/checkpoints/step-NNNNNN`; `.tmp-step-*` ones are incomplete and never listed."""


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first by step number (names outgrow their 6-digit padding); training
    writes them, inference and resume read them."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))
