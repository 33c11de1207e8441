"""Atomic checkpoints: everything needed to resume exactly, written to a temporary directory and renamed.

A checkpoint directory `step-000100/` holds model.safetensors (trainable weights + parts built from scratch),
adapter/ (peft format, when the LLM uses LoRA), optimizer.pt, scheduler.pt, rng.pt, trainer_state.json (step,
data position, counters) and config.yaml. A crash mid-write leaves only a `.tmp-*` directory, which is ignored.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from mmtune.config import RunConfig, save_config
from mmtune.errors import ConfigError
from mmtune.models.build import load_weights, weights_to_save

PREFIX = "step-"


def rng_state() -> dict:
    """RNG states as tensors and tuples, so they load with torch.load(weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def save(run_dir: Path, step: int, model, optimizer, scheduler, trainer_state: dict, cfg: RunConfig,
         keep_last: int) -> Path:
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{PREFIX}{step:06d}"
    tmp = ckpt_root / f".tmp-{PREFIX}{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights_to_save(model), str(tmp / "model.safetensors"))
    if hasattr(model.llm, "peft_config"):
        model.llm.save_pretrained(str(tmp / "adapter"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    save_config(cfg, tmp / "config.yaml")
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first by step number (names outgrow their 6-digit padding)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def find(resume: str | bool, run_dir: Path) -> Path | None:
    """`True`/"latest" -> newest checkpoint of the run (None if there is none yet); a path -> that checkpoint."""
    if resume in (False, None, ""):
        return None
    if resume is True or resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(f"--resume: {path} is not a checkpoint directory (no trainer_state.json)")
    return path


def load(ckpt: Path, model, optimizer, scheduler) -> dict:
    load_weights(model, ckpt)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(ckpt / "rng.pt", weights_only=True))
    return json.loads((ckpt / "trainer_state.json").read_text())
