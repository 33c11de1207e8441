"""What the image editor's UNet cross-attends to (`model.editor.text_encoder`): the instruction through a frozen
text encoder (`minilm`; `clip`, Stable Diffusion's, the one a diffusers pipeline can hold), or the multimodal LLM
reading the input image and the instruction (`llm`), projected to the UNet's cross-attention width.

A conditioner has two halves. Its `prompt` (a plain object, run in the DataLoader workers) turns an instruction
and the input image into ids (and, for the LLM, the image as its encoder reads it). The module turns a batch of
those into [B, T, width] states and a [B, T] mask (None: every position is attended, Stable Diffusion's
convention), swapping in the unconditional inputs per sample where conditioning dropout drops the text (the empty
instruction) or the image (the LLM's prompt without it; the UNet's zero image latent is the editor's part).
"""
from __future__ import annotations

import dataclasses
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mmtune.config import RunConfig, check_choice, from_dict
from mmtune.data.sample import Message
from mmtune.errors import ConfigError, DataError


@dataclass
class MiniLMArgs:
    source: str = "minilm-l6"
    """A registered weight (mmtune.models.weights) or a local Hugging Face encoder directory (AutoModel)."""

    def __post_init__(self):
        from mmtune.models.weights import WEIGHTS

        if self.source not in WEIGHTS and not Path(self.source).expanduser().is_dir():
            raise ConfigError(f"model.editor.text_encoder.args.source: {self.source!r} is neither a registered "
                              f"weight ({sorted(WEIGHTS)}) nor a local directory")


@dataclass
class ClipArgs:
    path: str = ""
    """A local directory holding a transformers CLIPTextModel; empty: one built from `config` (random weights)."""
    config: dict = field(default_factory=dict)
    """CLIPTextConfig keys over SMALL_CLIP_TEXT (hidden_size, num_hidden_layers, ...) when `path` is empty."""

    def __post_init__(self):
        if self.path and not Path(self.path).expanduser().is_dir():
            raise ConfigError(f"model.editor.text_encoder.args.path: no such directory {self.path!r}")
        if self.path and self.config:
            raise ConfigError("model.editor.text_encoder.args: set path (a trained CLIP text tower) or config "
                              "(a new one), not both")


@dataclass
class LLMArgs:
    queries: int = 0
    """N learned query tokens appended to the prompt; their last hidden states condition the UNet. 0: the last
    hidden states of every prompt position (masked to the prompt)."""

    def __post_init__(self):
        if self.queries < 0:
            raise ConfigError(f"model.editor.text_encoder.args.queries must be >= 0, got {self.queries}")


# ---- worker side: instruction (+ image) -> ids ----

@dataclass
class TextPrompt:
    """The instruction's ids, cut to `max_len` keeping the closing special token the encoder was trained with."""
    tokenizer: object
    max_len: int

    def __call__(self, instruction: str, image, where: str) -> dict:
        ids = self.tokenizer(instruction)["input_ids"]
        truncated = len(ids) > self.max_len
        if truncated:
            ids = ids[:self.max_len - 1] + ids[-1:]
        return {"input_ids": ids, "truncated": truncated}


@dataclass
class LLMPrompt:
    """The LLM's prompt in the recipe's chat template, a user turn `<image>` + newline + the instruction, with and
    without the image (`input_ids`, `text_ids`), and the image as the LLM's image encoder reads it."""
    tokenizer: object
    template: str
    system_prompt: str | None
    image_tokens: int
    transform: object
    max_len: int

    def __call__(self, instruction: str, image, where: str) -> dict:
        full = self.render(instruction, True, where)
        if len(full) > self.max_len:
            raise DataError(f"{where}: the LLM's prompt has {len(full)} tokens (image included), over "
                            f"data.max_len={self.max_len}")
        return {"input_ids": full, "text_ids": self.render(instruction, False, where),
                "cond_image": self.transform(image).numpy(), "truncated": False}

    def render(self, instruction: str, with_image: bool, where: str = "") -> list[int]:
        from mmtune.data.templates import render_prompt

        content = f"<image>\n{instruction}".rstrip() if with_image else instruction
        return render_prompt([Message("user", content)], self.tokenizer, self.template,
                             system_prompt=self.system_prompt, media_tokens={"image": self.image_tokens}, where=where)


# ---- the modules ----

class TextConditioner(nn.Module):
    """A frozen text encoder's last hidden states. With `fixed_length`, every instruction is padded to `max_len`
    tokens, all attended by the encoder and the UNet (Stable Diffusion's CLIP convention, which its pipelines
    reproduce); otherwise only the instruction's own tokens are."""

    def __init__(self, model, tokenizer, max_len: int, fixed_length: bool):
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.prompt = TextPrompt(tokenizer, max_len)
        self.width = model.config.hidden_size
        self.pad_id = tokenizer.pad_token_id
        self.fixed_length = max_len if fixed_length else 0
        self.register_buffer("empty_ids", torch.tensor(tokenizer("")["input_ids"]), persistent=False)

    def fit(self, width: int) -> None:
        if width != self.width:
            raise ConfigError(f"model.editor: the UNet cross-attends to {width}-wide states; the text encoder "
                              f"gives {self.width} (set model.editor.unet.cross_attention_dim={self.width})")

    def train(self, mode: bool = True):
        """Frozen: eval mode always (dropout would otherwise change its features)."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, batch: dict, drop_text: torch.Tensor, drop_image: torch.Tensor):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        width = self.fixed_length or max(ids.shape[1], len(self.empty_ids))
        ids = nn.functional.pad(ids.masked_fill(mask == 0, self.pad_id), (0, width - ids.shape[1]), value=self.pad_id)
        mask = nn.functional.pad(mask, (0, width - mask.shape[1]))
        empty_ids = torch.full_like(ids[0], self.pad_id)
        empty_ids[:len(self.empty_ids)] = self.empty_ids
        empty_mask = (torch.arange(width, device=ids.device) < len(self.empty_ids)).long()
        ids = torch.where(drop_text[:, None], empty_ids, ids)
        if self.fixed_length:
            return self.model(input_ids=ids).last_hidden_state, None
        mask = torch.where(drop_text[:, None], empty_mask, mask)
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask


class LLMConditioner(nn.Module):
    """The multimodal LLM (`lm`, tuned by tuning.llm/encoder/bridge) reads the prompt; `projector` (and `queries`,
    when set) always train. Dropping the text swaps in the prompt of the empty instruction; dropping the image
    takes the image out of the prompt, so the three guidance passes condition on (image, text), (image) and
    nothing, in the LLM as in the UNet's image latent."""

    def __init__(self, lm, prompt: LLMPrompt, queries: int):
        super().__init__()
        self.lm, self.prompt = lm, prompt
        lm.media_pass_always = True  # a batch whose images are all dropped still uses (and syncs) the image part
        self.width = lm.llm.get_input_embeddings().embedding_dim
        std = float(lm.llm.get_input_embeddings().weight.std())
        self.queries = nn.Parameter(torch.randn(queries, self.width) * std) if queries else None
        self.projector: nn.Linear | None = None
        self.unconditional = {True: prompt.render("", True), False: prompt.render("", False)}
        """The empty instruction's prompt, with (text dropped) and without the image (both dropped)."""

    def fit(self, width: int) -> None:
        self.projector = nn.Linear(self.width, width)

    def forward(self, batch: dict, drop_text: torch.Tensor, drop_image: torch.Tensor):
        prompts = self._prompts(batch, drop_text.tolist(), drop_image.tolist())
        n, queries = len(prompts), (0 if self.queries is None else len(self.queries))
        device = batch["input_ids"].device
        width = max(len(p) for p in prompts) + queries
        ids = torch.zeros(n, width, dtype=torch.long)
        seq_ids = torch.full((n, width), -1, dtype=torch.long)
        slots = torch.zeros(n, width, dtype=torch.bool)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = torch.tensor(p)
            seq_ids[i, :len(p) + queries] = i
            slots[i, len(p):len(p) + queries] = True
        ids, seq_ids, slots = ids.to(device), seq_ids.to(device), slots.to(device)
        images = batch["cond_image"][~drop_image]
        embeds = self.lm.embed(ids, {"image": images} if len(images) else {})
        if queries:
            embeds = embeds.masked_scatter(slots[..., None], self.queries.to(embeds.dtype).expand(n, -1, -1))
        rows = {"seq_ids": seq_ids, "position_ids": torch.arange(width, device=device).expand(n, -1)}
        hidden = self.lm.hidden_states(rows, embeds)
        if queries:
            return self.projector(hidden[slots].view(n, queries, -1)), None
        mask = (seq_ids >= 0).long()
        return self.projector(hidden), mask

    def _prompts(self, batch: dict, drop_text: list[bool], drop_image: list[bool]) -> list[list[int]]:
        """Each sample's prompt as its dropout draw asks."""
        with_image, without = (_rows(batch[k], batch[m]) for k, m in (("input_ids", "attention_mask"),
                                                                      ("text_ids", "text_mask")))
        return [self.unconditional[not no_image] if no_text else without[i] if no_image else with_image[i]
                for i, (no_text, no_image) in enumerate(zip(drop_text, drop_image))]


def _rows(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[:int(length)].tolist() for row, length in zip(ids.cpu(), mask.sum(1).cpu())]


# ---- builders ----

SMALL_CLIP_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "max_position_embeddings": 77}
"""The default CLIP text tower (args.config overrides it key by key): small enough for CPU tests and demos."""


def clip_vocab() -> tuple[dict[str, int], list[str]]:
    """openai/clip-vit's BPE vocabulary and merges, built from the file open_clip ships (as its SimpleTokenizer
    builds them; the special tokens under the names Hugging Face's CLIP tokenizers use)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    units = list(bytes_to_unicode().values())
    tokens = units + [u + "</w>" for u in units] + ["".join(m.split()) for m in merges]
    return {t: i for i, t in enumerate(tokens + ["<|startoftext|>", "<|endoftext|>"])}, merges


def clip_tokenizer(max_len: int):
    """A transformers CLIPTokenizer with CLIP's vocabulary that pads and truncates to `max_len`."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab()
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=max_len)


def write_clip_vocab(directory: Path) -> None:
    """vocab.json and merges.txt, the files slow and older CLIP tokenizers load (tokenizer.json is the fast one's)."""
    vocab, merges = clip_vocab()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _build_minilm(args: MiniLMArgs, cfg: RunConfig):
    from transformers import AutoModel, AutoTokenizer

    from mmtune.models.weights import WEIGHTS, resolve

    path = resolve(args.source) if args.source in WEIGHTS else Path(args.source).expanduser()
    model = AutoModel.from_pretrained(path)
    return TextConditioner(model, AutoTokenizer.from_pretrained(path), cfg.model.editor.max_text_len, False), set()


def _build_clip(args: ClipArgs, cfg: RunConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    if args.path:
        model, from_scratch = CLIPTextModel.from_pretrained(Path(args.path).expanduser()), set()
    else:
        unknown = sorted(set(args.config) - set(CLIPTextConfig().to_dict()))
        if unknown:
            raise ConfigError(f"model.editor.text_encoder.args.config: unknown CLIPTextConfig key {unknown[0]!r}")
        config = CLIPTextConfig(**{**SMALL_CLIP_TEXT, **args.config, "vocab_size": 49408, "bos_token_id": 49406,
                                   "eos_token_id": 49407, "pad_token_id": 49407})
        model, from_scratch = CLIPTextModel(config), {"text_encoder"}
    max_len = cfg.model.editor.max_text_len
    if max_len > model.config.max_position_embeddings:
        raise ConfigError(f"model.editor.max_text_len={max_len}: the CLIP text tower has "
                          f"{model.config.max_position_embeddings} positions")
    return TextConditioner(model, clip_tokenizer(max_len), max_len, True), from_scratch


def _build_llm(args: LLMArgs, cfg: RunConfig):
    """model.llm + model.media.image as in a language-model recipe (tuning applied); built from scratch parts are
    listed under the conditioner's name."""
    from mmtune.models.build import build_model

    lm, tokenizer = build_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from="")))
    image = lm.media["image"]
    prompt = LLMPrompt(tokenizer, cfg.data.template, cfg.data.system_prompt, image.num_tokens,
                       image.encoder.transform, cfg.data.max_len)
    return LLMConditioner(lm, prompt, args.queries), {f"text_encoder.lm.{p}" for p in lm.from_scratch}


TEXT_ENCODERS = {"minilm": (MiniLMArgs, _build_minilm), "clip": (ClipArgs, _build_clip), "llm": (LLMArgs, _build_llm)}
"""model.editor.text_encoder.name -> (its typed args, builder(args, cfg) -> (conditioner, state-dict prefixes of
the parts built from scratch))."""


def text_encoder_args(cfg: RunConfig, where: str = "config"):
    """The typed args of model.editor.text_encoder; raises ConfigError naming `where` and the key. The LLM mode
    needs the image kind its LLM reads the input image with."""
    spec = cfg.model.editor.text_encoder
    try:
        check_choice(spec.name, TEXT_ENCODERS, "model.editor.text_encoder.name")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    args = from_dict(TEXT_ENCODERS[spec.name][0], spec.args, where, "model.editor.text_encoder.args.")
    if spec.name == "llm" and cfg.model.media.image is None:
        raise ConfigError(f"{where}: model.editor.text_encoder=llm: the LLM reads the input image; set "
                          "model.media.image (its encoder and bridge)")
    return args


def build_text_encoder(cfg: RunConfig):
    """(conditioner, from-scratch prefixes) for model.editor.text_encoder; `conditioner.fit(width)` then sets the
    UNet's cross-attention width."""
    args = text_encoder_args(cfg)
    return TEXT_ENCODERS[cfg.model.editor.text_encoder.name][1](args, cfg)
