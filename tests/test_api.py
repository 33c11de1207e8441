"""The Python API is the command line's functions: README's "Python API" block runs as written (tiny model, from a
directory that holds the repository's samples/), and each wrapper reaches the function its command calls."""
import re
from pathlib import Path

import pytest

import mmtune

ROOT = Path(__file__).resolve().parents[1]


def readme_block(heading: str) -> str:
    """The first ```python block under `## heading` in README.md."""
    section = (ROOT / "README.md").read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_python_api_block_runs(tmp_path, monkeypatch, capsys):
    (tmp_path / "samples").symlink_to(ROOT / "samples")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(readme_block("Python API"), "README.md (Python API)", "exec"), scope)
    out = capsys.readouterr().out
    assert f"{scope['answer']}\nheld-out perplexity {scope['scores']['perplexity']:.1f}\n" in out
    assert Path(scope["run"]["checkpoint"]).is_dir() and scope["scores"]["supervised_tokens"] > 0
    assert (tmp_path / "exported" / "alpaca" / "model.safetensors").is_file()
    assert (tmp_path / "data" / "alpaca").is_dir()  # written where the script ran, not in the repository


def test_unknown_export_format_is_named(tmp_path):
    with pytest.raises(mmtune.ConfigError, match="unknown export format 'gguf'; choose one of hf, peft, llava"):
        mmtune.export(tmp_path, tmp_path / "out", format="gguf")


def test_an_editor_is_loaded_only_from_an_editor_checkpoint(tmp_path):
    from tests.helpers import tiny_config, write_text_shards

    run = mmtune.finetune(tiny_config(tmp_path / "run", write_text_shards(tmp_path / "d", 8), "train.steps=1"))
    with pytest.raises(mmtune.ConfigError, match="holds a model.kind=lm model, not an image editor"):
        mmtune.load_editor(run["checkpoint"])
