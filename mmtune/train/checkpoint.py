"""Atomic checkpoints: everything needed to resume exactly, written to a temporary directory and renamed.

A checkpoint directory `step-000100/` holds model.safetensors (trainable weights + parts built from scratch),
adapter/ (peft format, when the LLM uses LoRA), the optimizer state (optimizer.pt, or the engine's own sharded
files), scheduler.pt, rng-rankR.pt per rank, trainer_state.json (step, counters, world size, and per rank the data
position and skip counts) and config.yaml. A crash mid-write leaves only a `.tmp-*` directory, which is never
resumed from and is removed by the next rotation.
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
from mmtune.models.build import PREFIX, list_checkpoints
from mmtune.train.engine import Engine


def rng_state() -> dict:
    """This process's RNG states (CPU, CUDA where present, Python, NumPy) as tensors and tuples, so they load with
    torch.load(weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def save(run_dir: Path, step: int, engine: Engine, model, scheduler, trainer_state: dict, cfg: RunConfig,
         keep_last: int) -> Path:
    """Called on every rank. Each rank writes its part into `.tmp-step-N`; only after all have finished (barrier)
    does the main rank rename it, so a directory named `step-N` is always complete."""
    ckpt_root = run_dir / "checkpoints"
    final = ckpt_root / f"{PREFIX}{step:06d}"
    tmp = ckpt_root / f".tmp-{PREFIX}{step:06d}"
    if engine.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    engine.barrier()
    engine.save_state(tmp, model)
    torch.save(rng_state(), tmp / f"rng-rank{engine.rank}.pt")
    ranks = engine.gather({"data": trainer_state["data"], "counts": trainer_state["counts"]})
    engine.barrier()
    if engine.is_main:
        shared = {k: v for k, v in trainer_state.items() if k not in ("data", "counts")}
        (tmp / "trainer_state.json").write_text(json.dumps({**shared, "world_size": engine.world, "ranks": ranks},
                                                           indent=1))
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        save_config(cfg, tmp / "config.yaml")
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
        rotate(run_dir, keep_last)
    engine.barrier()
    return final


def write_weights(ckpt: Path, model, weights: dict[str, torch.Tensor]) -> None:
    """model.safetensors, and the LoRA part also as a peft `adapter/` (from the same whole tensors, so a sharded
    engine's adapter is as complete as a single process's)."""
    save_file(weights, str(ckpt / "model.safetensors"))
    if hasattr(getattr(model, "llm", None), "peft_config"):
        llm_part = {k[len("llm."):]: v for k, v in weights.items() if k.startswith("llm.")}
        model.llm.save_pretrained(str(ckpt / "adapter"), state_dict=llm_part)


def rotate(run_dir: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints; remove older ones and unfinished `.tmp-*` left by a crash."""
    root = run_dir / "checkpoints"
    for unfinished in root.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(unfinished, ignore_errors=True)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(path: Path) -> None:
    """Flush every file below `path`, then the directory entries themselves."""
    for f in path.iterdir():
        if f.is_dir():
            _fsync_tree(f)
        elif f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def load(ckpt: Path, engine: Engine, model, scheduler) -> dict:
    """Restore a checkpoint written by the same number of processes; returns this rank's trainer state."""
    state = json.loads((ckpt / "trainer_state.json").read_text())
    saved_world = state.pop("world_size")
    if saved_world != engine.world:
        raise ConfigError(f"--resume: {ckpt} was written by {saved_world} process(es), this run has {engine.world}; "
                          f"the data position and RNG are per rank, so resume with {saved_world} processes "
                          f"(torchrun --nproc_per_node ...), or start a new run from its weights with "
                          f"model.init_from={ckpt}")
    engine.load_state(ckpt, model)
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(ckpt / f"rng-rank{engine.rank}.pt", weights_only=True))
    return {**state, **state.pop("ranks")[engine.rank]}
