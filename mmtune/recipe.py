"""A recipe is a RunConfig whose every name resolves: the schema is checked by config.py, the registry names here.

Names are checked when the recipe is loaded, before a model is built or a DataLoader worker starts, so a typo in
`data.template` ends the run with one line and a suggestion instead of a worker's traceback at the first sample.
This module sits above config.py and every registry (model kinds, objectives and their args, templates,
encoders, bridges, the fusion, LLM sources, the image editor's conditioners).
"""
from __future__ import annotations

import difflib
from pathlib import Path

from mmtune.config import RunConfig, check_choice, load_config
from mmtune.errors import ConfigError


def load_recipe(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> RunConfig:
    """YAML + `a.b=value` overrides -> a RunConfig whose types, keys and registry names are all valid."""
    cfg = load_config(find_recipe(path) if path is not None else None, overrides, base)
    check_names(cfg, str(path) if path is not None else "config")
    return cfg


PACKAGED = Path(__file__).parent / "configs"
"""Recipes shipped with mmtune (the repository's configs/ links here), usable by name from any directory."""


def find_recipe(path: str | Path) -> Path:
    """`path` as given when it exists, else the shipped recipe of that name (`demo/vlm_tiny.yaml`, with or
    without a leading `configs/`); a path that is neither is returned as is for load_config to report."""
    given = Path(path)
    if given.exists():
        return given
    name = given.relative_to("configs") if given.parts[:1] == ("configs",) else given
    shipped = PACKAGED / name
    return shipped if shipped.is_file() and not given.is_absolute() else given


def check_names(cfg: RunConfig, where: str = "config") -> None:
    """Raise ConfigError naming the file, the key, the unknown name and the closest known one."""
    from mmtune.models.kinds import KINDS
    from mmtune.models.objectives import objective_args

    try:
        check_choice(cfg.model.kind, KINDS, "model.kind")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    objective_args(cfg, where)  # the objective's name, typed args and the model kind it trains; names `where`
    if cfg.model.kind == "lm":
        _check_lm_names(cfg, where)
    elif cfg.model.kind == "image_editor":
        _check_editor_names(cfg, where)


def _check_editor_names(cfg: RunConfig, where: str) -> None:
    """The conditioner's name and typed args; the LLM conditioner's LLM, template and image part as for a
    language model."""
    from mmtune.models.conditioning import text_encoder_args

    text_encoder_args(cfg, where)  # names `where` itself
    if cfg.model.editor.text_encoder.name == "llm":
        _check_lm_names(cfg, where)


def _check_lm_names(cfg: RunConfig, where: str) -> None:
    """Template, LLM source, encoder (and its args) and bridge of a language-model recipe."""
    from mmtune.data.templates import TEMPLATES
    from mmtune.encoders import encoder_args

    try:
        check_choice(cfg.data.template, TEMPLATES, "data.template")
        _check_llm(cfg.model.llm)
        _check_media(cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    for kind, part in cfg.model.media.parts().items():
        encoder_args(part.encoder, kind, where)  # names `where` itself


def _check_media(cfg: RunConfig) -> None:
    """Each kind's encoder name is one that serves the kind, its bridge name is known; the fusion and its args."""
    from mmtune.bridges import check_bridge
    from mmtune.encoders import encoder_class
    from mmtune.models.fusion import fusion_args

    for kind, part in cfg.model.media.parts().items():
        encoder_class(part.encoder, kind)
        check_bridge(part.bridge, f"model.media.{kind}.bridge")
    fusion_args(cfg.model.fusion)


def _check_llm(source: str) -> None:
    """`tiny:NAME` known, a registered package weight, or a path that exists (a directory or a .gguf file)."""
    from mmtune.models.llm import TINY, TINY_PREFIX
    from mmtune.models.weights import WEIGHTS

    if source.startswith(TINY_PREFIX):
        check_choice(source[len(TINY_PREFIX):], TINY, "model.llm", shown_prefix=TINY_PREFIX)
    elif source not in WEIGHTS and not Path(source).expanduser().exists():
        close = difflib.get_close_matches(source, [*WEIGHTS, *(TINY_PREFIX + n for n in TINY)], n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"model.llm: no such model {source!r} (a Hugging Face directory, a .gguf file, "
                          f"{TINY_PREFIX}NAME or one of {sorted(WEIGHTS)}){hint}")
