"""Exact resume: a run killed with SIGKILL and resumed gives the same loss at every step, the same samples in the
same order and the same counts of truncated and skipped samples as the uninterrupted run; text alone, and text,
image, video and point-cloud samples mixed in one run, grouped by modality or packed."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from data_builders.synth import points, video
from mmtune.data.shards import ShardSink
from tests.helpers import image_sample, text_sample, write_text_shards

pytestmark = pytest.mark.slow

RECIPE = {
    "model": {"llm": "tiny:llama"},
    "tuning": {"llm": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1}},  # dropout: the RNG must resume too
    # max_len 40 truncates some samples and leaves others with no answer (counted); the kill lands inside a
    # length-grouping window (16 batches), whose items are read again on resume and must not be counted twice
    "data": {"template": "chatml", "max_len": 40, "shuffle_buffer": 16, "num_workers": 2, "on_error": "skip"},
    "train": {"steps": 14, "batch_size": 2, "grad_accum": 2, "lr": 1e-3, "warmup": 2, "log_every": 1,
              "save_every": 1, "keep_last": 2, "eval_every": 1000},
}


def _run(config: Path, *extra: str, kill_at_step: int | None = None) -> None:
    cmd = [sys.executable, "-m", "mmtune.cli", "train", str(config), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_at_step is None:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
        return
    marker = Path(yaml.safe_load(config.read_text())["train"]["out_dir"]) / "checkpoints" / f"step-{kill_at_step:06d}"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def _history(run_dir: Path):
    losses = {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if "loss" in r}
    order = [r["ids"] for r in map(json.loads, (run_dir / "samples.jsonl").read_text().splitlines())]
    counts = {r["step"]: {k: v for k, v in r.items() if k.startswith(("skipped_", "truncated"))}
              for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r}
    return losses, order, counts


def _killed_and_resumed(tmp_path: Path, recipe: dict, kill_at_step: int):
    """Histories of the uninterrupted run and of the run SIGKILLed after `kill_at_step` and resumed, which must
    agree bit for bit in loss and in sample order at every step."""
    def config(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**recipe, "train": {**recipe["train"], "out_dir": str(tmp_path / name)}}))
        return path

    _run(config("full"))
    _run(config("killed"), kill_at_step=kill_at_step)
    last = recipe["train"]["steps"]
    assert not (tmp_path / "killed" / "checkpoints" / f"step-{last:06d}").exists()
    _run(config("killed"), "--resume")
    full, resumed = _history(tmp_path / "full"), _history(tmp_path / "killed")
    full_loss, full_order, _ = full
    assert sorted(full_loss) == list(range(1, last + 1))
    assert resumed[0] == full_loss  # bit-identical, every step
    assert resumed[1] == full_order
    return full, resumed


def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
    shards = write_text_shards(tmp_path / "data", 60, shard_size=9)
    recipe = {**RECIPE, "data": {**RECIPE["data"], "train": shards}}
    (_, full_order, full_counts), (_, _, resumed_counts) = _killed_and_resumed(tmp_path, recipe, kill_at_step=5)
    assert full_counts[14]["truncated"] > 0 and full_counts[14]["skipped_no_target"] > 0, full_counts[14]
    assert resumed_counts == full_counts  # every counter, at every step
    ids = [i for step in full_order for i in step]
    assert len(ids) > 40 and len(set(ids[:40])) == 40  # no repeats within the first epoch (60 samples, some skipped)


MEDIA = {"image": {"encoder": {"name": "clip", "args": {"arch": "mmtune-vit-tiny"}}, "bridge": {"name": "mlp2x_gelu"}},
         "video": {"encoder": {"name": "frames", "args": {"frames": 2}}, "bridge": {"name": "linear"}},
         "points": {"encoder": {"name": "pointnet", "args": {"points": 64, "tokens": 4, "neighbours": 8, "width": 32}},
                    "bridge": {"name": "linear"}}}


MIXED = 48
"""Samples of the mixed run: ids s00000-s00011 text-only, s00012-s00023 images, then video-* and points-*."""


def write_mixed_shards(out: Path) -> list[str]:
    """A quarter each of text-only, image (one or two), video (a synthetic AVI) and point-cloud (.npy or .ply)
    samples, in a seeded random order."""
    rng = random.Random(0)
    quarter = MIXED // 4
    samples = [text_sample(i, rng) for i in range(quarter)]
    samples += [image_sample(quarter + i, rng, n_images=rng.choice([1, 2])) for i in range(quarter)]
    samples += [*video.generate(quarter, seed=0, frames=4), *points.generate(quarter, seed=0, points=128)]
    rng.shuffle(samples)
    with ShardSink(out, "train", maxcount=10) as sink:
        for sample in samples:
            sink.write(sample)
    return [str(p) for p in sorted(out.glob("train-*.tar"))]


def _modality(sample_id: str) -> str:
    if sample_id.startswith(("video", "points")):
        return sample_id.split("-")[0]
    return "text" if int(sample_id[1:]) < MIXED // 4 else "image"


@pytest.mark.parametrize("packing", [False, True], ids=["grouped", "packed"])
def test_mixed_modalities_resume_exactly(tmp_path, packing):
    """Batches of text-only, image, video and point-cloud samples (grouped by modality, or packed into shared rows)
    train through two DataLoader workers, LoRA dropout and every kind's encoder, and resume exactly."""
    recipe = {"model": {"llm": "tiny:llama", "media": MEDIA},
              "tuning": {"llm": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1}, "encoder": "full"},
              "data": {"template": "chatml", "max_len": 96, "num_workers": 2, "packing": packing,
                       "shuffle_buffer": 16, "train": write_mixed_shards(tmp_path / "data")},
              "train": {"steps": 10, "batch_size": 2, "grad_accum": 2, "lr": 1e-3, "warmup": 2, "log_every": 1,
                        "save_every": 1, "keep_last": 2, "eval_every": 1000}}
    (_, full_order, _), _ = _killed_and_resumed(tmp_path, recipe, kill_at_step=4)
    ids = [i for step in full_order for i in step]
    assert {_modality(i) for i in ids} == {"text", "image", "video", "points"}
