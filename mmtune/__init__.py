"""mmtune: instruction tuning of language models, text-only and multimodal, from one YAML file.

The Python API is the command line's own functions, one per command (README "Python API"):

    import mmtune
    mmtune.build_data("alpaca", "samples/text/alpaca_en_demo.json", "data/alpaca", eval_fraction=0.05)
    cfg = mmtune.load_config("configs/text/alpaca_smollm2_lora.yaml", ["train.steps=50"])  # names checked too
    run = mmtune.finetune(cfg)                             # mmtune train
    print(mmtune.load(run["checkpoint"]).ask("Hi!"))       # mmtune chat
    mmtune.evaluate(run["checkpoint"], "loss", "data/alpaca/eval-*.tar")  # mmtune eval
    mmtune.export(run["checkpoint"], "merged", format="hf")               # mmtune export

(`finetune`, not `train`: `mmtune.train` is the package holding the loop.)
Heavy libraries (transformers, open_clip, peft) are imported on first use, so the CLI starts fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mmtune.config import RunConfig
from mmtune.errors import ConfigError, DataError, UserError
from mmtune.recipe import load_recipe as load_config

if TYPE_CHECKING:
    from data_builders.build import BuildReport
    from mmtune.infer.chat import Chat
    from mmtune.infer.edit import Editor

__version__ = "0.1.0"


def build_data(name: str, input: str | Path, out: str | Path, **options) -> BuildReport:
    """`mmtune build-data NAME --input INPUT --out OUT`: canonical shards from a source format; `options` as
    data_builders.build.build (eval_fraction, image_folder, on_error, limit, ...). Returns the counts."""
    from data_builders.build import build

    return build(name, input, out, **options)


def finetune(cfg: RunConfig, resume: str | bool = False, callbacks: list | None = None) -> dict:
    """Run the configured recipe, exactly as `mmtune train` does; returns the run summary (checkpoint path,
    loss-curve path, skip counts). `resume`: False, True (newest checkpoint of train.out_dir) or a path."""
    from mmtune.train.trainer import train

    return train(cfg, resume=resume, callbacks=callbacks)


def load(source: str | Path | RunConfig, max_new_tokens: int = 128) -> Chat:
    """`mmtune chat --ckpt SOURCE`: a conversation (`.ask(text)`, `.attach(kind, path)`, `.reset()`) with a
    checkpoint or run directory, or with the model a RunConfig builds before training (answers "before")."""
    from mmtune.infer.chat import open_chat

    return open_chat(source, max_new_tokens)


def evaluate(ckpt: str | Path, task: str, data: str | list[str], out: str | Path | None = None, **options) -> dict:
    """`mmtune eval --ckpt CKPT --task TASK --data DATA [--out OUT]`: the results (written to `out` when given);
    `options` as mmtune.eval.run.evaluate_checkpoint (batch_size, max_new_tokens, limit, on_error, model_id)."""
    from mmtune.eval.run import evaluate_checkpoint

    return evaluate_checkpoint(ckpt, task, data, out, **options)


def export(ckpt: str | Path, out: str | Path, format: str = "hf") -> Path:
    """`mmtune export --ckpt CKPT --out OUT --format FORMAT` (hf, peft or llava); returns the directory."""
    from mmtune.infer.export import export as export_checkpoint

    return export_checkpoint(ckpt, out, format)


def load_editor(ckpt: str | Path) -> Editor:
    """`mmtune edit --ckpt CKPT`: a trained image editor, `.edit(image or path, prompt)` -> PIL image."""
    from mmtune.infer.edit import load_editor as load_image_editor

    return load_image_editor(ckpt)


__all__ = ["RunConfig", "load_config", "build_data", "finetune", "load", "evaluate", "export", "load_editor",
           "ConfigError", "DataError", "UserError"]
