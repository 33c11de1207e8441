"""Generation (greedy or sampled) from a trained model, the way it was trained: same template, same media splicing.

`load_checkpoint` rebuilds the model from the checkpoint's own config.yaml, so inference cannot pick a different
template or bridge than training used.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmtune.config import RunConfig, load_config
from mmtune.data.pipeline import stack_fields
from mmtune.data.sample import Message, media_instructions
from mmtune.data.templates import render_prompt, stop_token_ids
from mmtune.errors import ConfigError


def load_checkpoint(path: str | Path):
    """A checkpoint directory, or a run directory (its newest checkpoint) -> (model, tokenizer, cfg)."""
    from mmtune.models.build import list_checkpoints, load_weights
    from mmtune.models.kinds import get_kind

    path = Path(path)
    if not (path / "config.yaml").is_file() or not (path / "model.safetensors").is_file():
        found = list_checkpoints(path)
        if not found:
            raise ConfigError(f"--ckpt: {path} is neither a checkpoint nor a run directory (no checkpoints found)")
        path = found[-1]
    cfg = load_config(path / "config.yaml")
    cfg.model.init_from = ""
    model, tokenizer = get_kind(cfg.model.kind).build(cfg)
    load_weights(model, path)
    return model.eval(), tokenizer, cfg


@torch.no_grad()
def generate(model, tokenizer, cfg: RunConfig, conversations: list[list[Message]], images: list[list] | None = None,
             max_new_tokens: int = 64, media: list[dict[str, list[bytes]]] | None = None, *,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0,
             stop: tuple[str, ...] = (), seed: int | None = None, use_cache: bool = True) -> list[str]:
    """Answer each conversation (ending with a user turn); `images[i]` are PIL images for its `<image>`
    placeholders, `media[i]` the file bytes for its `<video>` and `<points>` placeholders, by kind and in order
    (read by that kind's encoder as in training). Prompts are left-padded into one batch and decoded with a KV cache (`use_cache=False` recomputes
    every step: same tokens, for checking). temperature 0 is greedy; above it, tokens are sampled (top_p, top_k;
    0 = no top-k cut), reproducibly for a given `seed` without touching the global RNG. Each answer ends at the
    template's end token or `max_new_tokens`, and is cut before the first of the `stop` strings. The repetition
    penalty acts on generated tokens only: the prompt goes in as embeddings (media spliced), not as ids."""
    dev = next(model.parameters()).device
    prompts = [render_prompt(msgs, tokenizer, cfg.data.template, system_prompt=cfg.data.system_prompt,
                             media_tokens=model.media_tokens or None) for msgs in conversations]
    items = {}
    if images and any(images):
        items["image"] = [model.media["image"].encoder.transform(img) for imgs in images for img in imgs]
    for kind, part in model.media.items():
        files = [data for per in media or [] for data in per.get(kind, []) if kind != "image"]
        if files:
            items[kind] = [torch.as_tensor(part.encoder.preprocess(data, f"{kind} {i}")) for i, data in enumerate(files)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=dev)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=dev)
    embeds = model.embed(ids, {kind: torch.stack(v).to(dev) for kind, v in items.items()},
                         _media_context(model, conversations, items, dev))
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k} if temperature > 0 \
        else {"do_sample": False}
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        out = model.llm.generate(inputs_embeds=embeds, attention_mask=attention, max_new_tokens=max_new_tokens,
                                 eos_token_id=stop_token_ids(tokenizer, cfg.data.template), pad_token_id=pad_id,
                                 repetition_penalty=repetition_penalty, use_cache=use_cache,
                                 stop_strings=list(stop) or None, tokenizer=tokenizer if stop else None, **sampling)
    # Decoder-only models given only inputs_embeds return just the new tokens.
    return [_cut(tokenizer.decode(row, skip_special_tokens=True), stop).strip() for row in out]


def _media_context(model, conversations: list[list[Message]], items: dict, dev) -> dict:
    """Each item's instruction, encoded by its kind's context bridge as in training (SampleEncoder)."""
    context = {}
    for kind, part in model.media.items():
        if part.encode_context and kind in items:
            encoded = [part.encode_context(text) for msgs in conversations
                       for k, text in media_instructions(msgs) if k == kind]
            context[kind] = {name: torch.as_tensor(a, device=dev) for name, a in stack_fields(encoded).items()}
    return context


def _cut(text: str, stop: tuple[str, ...]) -> str:
    """The text before the first stop string in it."""
    return text[:min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))]
