"""Generation (greedy or sampled) from a trained model, the way it was trained: same template, same media splicing.

`load_checkpoint` rebuilds the model from the checkpoint's own config.yaml, so inference cannot pick a different
template or bridge than training used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from mmtune.config import RunConfig, load_config
from mmtune.data.pipeline import stack_fields
from mmtune.data.sample import Message, media_instructions
from mmtune.data.templates import render_prompt, stop_token_ids
from mmtune.errors import ConfigError


def load_checkpoint(path: str | Path):
    """A checkpoint directory, or a run directory (its newest checkpoint) -> (model, tokenizer, cfg)."""
    from mmtune.models.build import list_checkpoints, load_weights

    path = Path(path)
    if not (path / "config.yaml").is_file() or not (path / "model.safetensors").is_file():
        found = list_checkpoints(path)
        if not found:
            raise ConfigError(f"--ckpt: {path} is neither a checkpoint nor a run directory (no checkpoints found)")
        path = found[-1]
    cfg = load_config(path / "config.yaml")
    cfg.model.init_from = ""
    model, tokenizer, cfg = load_model(cfg)
    load_weights(model, path)
    return model, tokenizer, cfg


def load_model(source: str | Path | RunConfig):
    """(model in eval mode, tokenizer, cfg): a checkpoint's (`load_checkpoint`), or for a RunConfig the model its
    recipe builds before training (pretrained weights, new parts at their initialisation)."""
    from mmtune.models.kinds import get_kind

    if not isinstance(source, RunConfig):
        return load_checkpoint(source)
    model, tokenizer = get_kind(source.model.kind).build(source)
    return model.eval(), tokenizer, source


@torch.no_grad()
def generate(model, tokenizer, cfg: RunConfig, conversations: list[list[Message]], images: list[list] | None = None,
             max_new_tokens: int = 64, media: list[dict[str, list[bytes]]] | None = None, *,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0,
             stop: tuple[str, ...] = (), seed: int | None = None, use_cache: bool = True,
             on_text: Callable[[str], None] | None = None) -> list[str]:
    """Answer each conversation (ending with a user turn); `images[i]` are PIL images for its `<image>`
    placeholders, `media[i]` the file bytes for its `<video>` and `<points>` placeholders, by kind and in order
    (read by that kind's encoder as in training). Prompts are left-padded into one batch and decoded with a KV cache (`use_cache=False` recomputes
    every step: same tokens, for checking). temperature 0 is greedy; above it, tokens are sampled (top_p, top_k;
    0 = no top-k cut), reproducibly for a given `seed` without touching the global RNG. Each answer ends at the
    template's end token or `max_new_tokens`, and is cut before the first of the `stop` strings. The repetition
    penalty acts on generated tokens only: the prompt goes in as embeddings (media spliced), not as ids.
    `on_text` (one conversation only) receives the answer piece by piece as it is generated; the pieces join to
    exactly the answer returned (`AnswerStream`)."""
    if on_text is not None and len(conversations) != 1:
        raise ValueError(f"on_text streams one answer, but {len(conversations)} conversations were given")
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
                                 stop_strings=list(stop) or None, tokenizer=tokenizer if stop else None,
                                 streamer=AnswerStream(tokenizer, stop, on_text) if on_text else None, **sampling)
    # Decoder-only models given only inputs_embeds return just the new tokens.
    return [answer_text(tokenizer, row.tolist(), stop) for row in out]


def _media_context(model, conversations: list[list[Message]], items: dict, dev) -> dict:
    """Each item's instruction, encoded by its kind's context bridge as in training (SampleEncoder)."""
    context = {}
    for kind, part in model.media.items():
        if part.encode_context and kind in items:
            encoded = [part.encode_context(text) for msgs in conversations
                       for k, text in media_instructions(msgs) if k == kind]
            context[kind] = {name: torch.as_tensor(a, device=dev) for name, a in stack_fields(encoded).items()}
    return context


def answer_text(tokenizer, ids: list[int], stop: tuple[str, ...]) -> str:
    """The answer generated tokens spell: decoded without special tokens, cut before the first stop string,
    stripped."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return text[:_first_stop(text, stop)].strip()


def _first_stop(text: str, stop: tuple[str, ...]) -> int:
    """Where the first stop string in `text` begins (its length when none is in it)."""
    return min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))


class AnswerStream:
    """A transformers streamer (`put` token ids, `end`) that hands `on_text` each new piece of the answer.

    After each token it decodes everything generated so far and passes on only text that no later token can change:
    it holds back an incomplete UTF-8 character (decoded as U+FFFD), trailing whitespace (the answer is stripped,
    and tokenizers may join a space to what follows), and an ending that may be the start of a stop string. So the
    printed text is always a prefix of the final answer, and `end` passes on the rest of exactly `answer_text`.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...], on_text: Callable[[str], None]):
        self.tokenizer, self.stop, self.on_text = tokenizer, stop, on_text
        self.ids: list[int] = []
        self.shown = ""

    def put(self, value: torch.Tensor) -> None:
        """First the prompt's ids (none for a decoder-only model fed embeddings), then each new token."""
        self.ids += value.reshape(-1).tolist()
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).rstrip("\ufffd")
        self._show(text[:self._settled_length(text)].strip())

    def end(self) -> None:
        self._show(answer_text(self.tokenizer, self.ids, self.stop), last=True)

    def _settled_length(self, text: str) -> int:
        """Where the text stops being final: at the first stop string in it, or where a suffix of it begins that
        a stop string starts with (a stop string completed by later tokens may begin there)."""
        partial = min((len(text) - n for s in self.stop for n in range(1, len(s)) if text.endswith(s[:n])),
                      default=len(text))
        return min(_first_stop(text, self.stop), partial)

    def _show(self, settled: str, last: bool = False) -> None:
        """Pass on what `settled` adds to the text shown so far; the last call always reaches `on_text` (perhaps
        with ""), so a caller can tell that the answer has begun and ended."""
        if settled.startswith(self.shown):
            piece, self.shown = settled[len(self.shown):], settled
            if piece or last:
                self.on_text(piece)
