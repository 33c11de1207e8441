"""Config loading: typed fields, dotted overrides, errors that name the file and key; every recipe validates."""
from pathlib import Path

import pytest
import yaml

from mmtune.bridges import build_bridge
from mmtune.config import ConfigError, ModelConfig, apply_override, load_config, save_config
from mmtune.data.templates import TEMPLATES
from mmtune.encoders import build_encoder
from mmtune.models.llm import TINY, TINY_PREFIX
from mmtune.models.weights import WEIGHTS, package_file
from mmtune.train.objectives import OBJECTIVES
from mmtune.tuning import TUNING

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))
GOOD_RECIPE = Path(__file__).parent.parent / "configs" / "demo" / "vlm_tiny.yaml"


def recipe_problems(path: Path) -> list[str]:
    """What in a recipe would fail only once a run starts: registry names, the LLM source, component arguments."""
    try:
        cfg = load_config(path)
    except ConfigError as e:
        return [str(e)]
    names = {"data.template": (cfg.data.template, TEMPLATES), "train.objective": (cfg.train.objective, OBJECTIVES),
             **{f"tuning.{part}": (getattr(cfg.tuning, part), TUNING) for part in ("llm", "encoder", "bridge")}}
    problems = [f"{key}: unknown name {name!r}" for key, (name, known) in names.items() if name not in known]
    return problems + llm_problems(cfg.model.llm) + component_problems(cfg.model)


def llm_problems(llm: str) -> list[str]:
    """model.llm must be a known tiny name, an installed WEIGHTS name, or an existing path."""
    if llm.startswith(TINY_PREFIX):
        return [] if llm[len(TINY_PREFIX):] in TINY else [f"model.llm: unknown tiny model {llm!r}"]
    if llm in WEIGHTS:
        try:
            return [] if package_file(llm).exists() else [f"model.llm: {llm!r} is missing from its package"]
        except ConfigError as e:
            return [f"model.llm: {e}"]
    return [] if Path(llm).exists() else [f"model.llm: {llm!r} is neither tiny:NAME, a WEIGHTS name nor a path"]


def component_problems(model: ModelConfig) -> list[str]:
    """Builds the encoder (small or randomly initialised: about a second) and the bridge from their arguments."""
    if model.encoder is None:
        return []
    try:
        encoder = build_encoder(model.encoder)
        build_bridge(model.bridge, encoder.out_dim, 8)
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
    ("model.encoder.name=clipp", "model.encoder.name"),
    ("model.encoder.args.archh=mmtune-vit-demo", "model.encoder.args.archh"),
    ("model.encoder.args.arch=mmtune-vit-huge", "model.encoder.args.arch"),
    ("model.encoder.args.layer=12", "model.encoder.args.layer"),
    ("model.bridge.name=mlp_gelu", "model.bridge.name"),
    ("model.bridge.args={hidden: 32}", "model.bridge.args.hidden"),
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
    assert cfg.data.train == ["a.tar", "b.tar"] and cfg.tuning.lora.r == 4 and cfg.model.bridge.name == "linear"


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
    ("model.encoder={name: clip}", r"model\.bridge must be set"),
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
