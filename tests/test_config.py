"""Config loading: typed fields, dotted overrides, errors that name the file and key; every recipe validates."""
import ast
import re
from pathlib import Path

import pytest
import yaml

import mmtune.config
from mmtune.bridges import build_bridge
from mmtune.config import ConfigError, apply_override, load_config, save_config
from mmtune.encoders import build_encoder
from mmtune.recipe import load_recipe

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))
GOOD_RECIPE = Path(__file__).parent.parent / "configs" / "demo" / "vlm_tiny.yaml"


def recipe_problems(path: Path) -> list[str]:
    """What in a recipe would fail only once a run starts: registry names and the LLM source (load_recipe checks
    them), then the encoder and bridge built from their arguments (small or random towers: about a second)."""
    try:
        cfg = load_recipe(path)
        for kind, part in cfg.model.media.parts().items():
            build_bridge(part.bridge, build_encoder(part.encoder, kind).out_dim, 8)
    except ConfigError as e:
        return [str(e)]
    return []


def test_configs_found():
    assert len(CONFIGS) >= 6


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parent.parent)))
def test_every_recipe_names_known_components_with_valid_arguments(path):
    assert recipe_problems(path) == []


@pytest.mark.parametrize("override, field", [
    ("data.template=chatmll", "data.template"),
    ("train.objective=dpo", "train.objective"),
    ("tuning.bridge=lorra", "tuning.bridge"),
    ("model.llm=tiny:lama", "model.llm"),
    ("model.llm=smollm2-1.7b", "model.llm"),
    ("model.media.image.encoder.name=clipp", "model.media.image.encoder.name"),
    ("model.media.image.encoder.args.archh=mmtune-vit-demo", "model.media.image.encoder.args.archh"),
    ("model.media.image.encoder.args.arch=mmtune-vit-huge", "model.media.image.encoder.args.arch"),
    ("model.media.image.encoder.args.layer=12", "model.media.image.encoder.args.layer"),
    ("model.media.image.bridge.name=mlp_gelu", "model.media.image.bridge.name"),
    ("model.media.image.bridge.args={hidden: 32}", "model.media.image.bridge.args.hidden"),
])
def test_a_broken_recipe_is_caught(tmp_path, override, field):
    raw = yaml.safe_load(GOOD_RECIPE.read_text())
    apply_override(raw, override)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    problems = recipe_problems(path)
    assert len(problems) == 1 and field in problems[0], problems


def test_overrides_and_types(tmp_path):
    cfg = load_config(None, ["train.lr=1e-4", "train.steps=7", "data.packing=true", "data.train=[a.tar, b.tar]",
                             "tuning.lora.r=4", "model.encoder={name: clip}", "model.bridge={name: linear}"])
    assert cfg.train.lr == 1e-4 and cfg.train.steps == 7 and cfg.data.packing is True
    assert cfg.data.train == ["a.tar", "b.tar"] and cfg.tuning.lora.r == 4
    assert cfg.model.media.image.bridge.name == "linear" and cfg.model.encoder is None  # shorthand moved there


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=3e-4", "model.encoder={name: clip, args: {arch: x}}",
                             "model.bridge={name: mlp2x_gelu}"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", r"unknown key train\.lrr; did you mean train\.lr\?"),
    ("trian.lr=1", r"unknown key trian; did you mean train\?"),
    ("train.steps=abc", r"train\.steps must be int, got 'abc'"),
    ("train.steps=1.5", r"train\.steps must be int"),
    ("data.packing=maybe", r"data\.packing must be bool"),
    ("data.overlong=cut", r"data\.overlong must be one of \['truncate', 'skip', 'error'\]"),
    ("train.batch_size=0", r"train\.batch_size must be > 0"),
    ("model.encoder={name: clip}", r"model\.media\.image\.bridge must be set"),
    ("model.media.video={bridge: {name: linear}}", r"model\.media\.video\.encoder must be set"),
    ("train.lr", r"expected section\.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_file_names_the_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml: unknown key train\.stepz; did you mean train\.steps\?"):
        load_config(path)
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")
@pytest.mark.parametrize("key, ours", [
    ("train.max_steps", "train.steps"), ("train.learning_rate", "train.lr"),
    ("train.per_device_train_batch_size", "train.batch_size"), ("train.gradient_accumulation_steps", "train.grad_accum"),
    ("train.num_train_epochs", "train.epochs"), ("data.max_seq_length", "data.max_len"),
    ("train.cutoff_len", "data.max_len"), ("tuning.lora_r", "tuning.lora.r"),
])
def test_names_from_other_tools_suggest_ours(key, ours):
    with pytest.raises(ConfigError, match=rf"unknown key {re.escape(key)}; did you mean {re.escape(ours)}\?"):
        load_config(None, [f"{key}=1"])


def test_every_config_field_is_documented():
    """Each field of the schema carries a docstring (the README sends readers to config.py for them)."""
    tree = ast.parse(Path(mmtune.config.__file__).read_text())
    missing = []
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for field, after in zip(cls.body, cls.body[1:] + [None]):
            documented = isinstance(after, ast.Expr) and isinstance(getattr(after, "value", None), ast.Constant)
            if isinstance(field, ast.AnnAssign) and not documented:
                missing.append(f"{cls.name}.{field.target.id}")
    assert not missing, missing
