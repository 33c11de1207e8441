"""Small builders shared by tests: synthetic text/image samples written as shards, tiny run configs, and process
trees whose every descendant can be found."""
from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch.utils.data._utils import MP_STATUS_CHECK_INTERVAL

from mmtune.config import RunConfig, load_config
from mmtune.data.sample import Media, Message, Sample
from mmtune.data.shards import ShardSink

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
"""The small real files vendored with the repository (samples/README.md lists their sources and licences)."""
EXAMPLE_IMAGE = SAMPLES / "images" / "example.jpg"

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def text_sample(i: int, rng: random.Random) -> Sample:
    question = " ".join(rng.choices(WORDS, k=rng.randint(2, 30)))
    answer = " ".join(rng.choices(WORDS, k=rng.randint(1, 20)))
    return Sample(id=f"s{i:05d}", source="test", messages=[Message("user", question), Message("assistant", answer)])


def image_sample(i: int, rng: random.Random, n_images: int = 1, size: int = 32) -> Sample:
    data, media = {}, []
    for j in range(n_images):
        buf = io.BytesIO()
        Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3))).save(buf, format="PNG")
        data[f"{j}.png"] = buf.getvalue()
        media.append(Media("image", f"{j}.png"))
    placeholders = "".join("<image>" for _ in range(n_images))
    s = text_sample(i, rng)
    user = Message("user", f"{placeholders}\n{s.messages[0].content}")
    return Sample(id=s.id, source="test", messages=[user, s.messages[1]], media=media, data=data)


def write_text_shards(out: Path, n: int, seed: int = 0, prefix: str = "train", shard_size: int = 16) -> list[str]:
    rng = random.Random(seed)
    with ShardSink(out, prefix, maxcount=shard_size) as sink:
        for i in range(n):
            sink.write(text_sample(i, rng))
    return [str(p) for p in sorted(Path(out).glob(f"{prefix}-*.tar"))]


def write_image_shards(out: Path, n: int, seed: int = 0, prefix: str = "train") -> list[str]:
    rng = random.Random(seed)
    with ShardSink(out, prefix, maxcount=16) as sink:
        for i in range(n):
            sink.write(image_sample(i, rng, n_images=rng.choice([0, 1, 2])))
    return [str(p) for p in sorted(Path(out).glob(f"{prefix}-*.tar"))]


VLM = ["model.encoder={name: clip, args: {arch: mmtune-vit-tiny}}", "model.bridge={name: mlp2x_gelu}",
       "tuning.encoder=full"]
XATTN = ["model.fusion={name: cross_attention, args: {heads: 2, dim_head: 16}}",
         "model.bridge={name: resampler, args: {latents: 4, depth: 1, heads: 2, dim_head: 16}}"]
"""With VLM: a small resampler whose tokens gated cross-attention blocks attend to (Flamingo's path)."""


def tiny_config(out_dir: Path, shards: list[str], *overrides: str):
    return load_config(None, [f"data.train={shards}", f"train.out_dir={out_dir}", "model.llm=tiny:llama",
                              "data.max_len=96", "train.batch_size=4", "train.steps=4", "train.warmup=1",
                              "train.eval_every=1000", "train.save_every=1000", *overrides])


PROMPTLY_S = MP_STATUS_CHECK_INTERVAL / 2
"""Below the interval at which torch's own watchdog lets an idle orphaned DataLoader worker exit, so a test that
waits this long for processes to die sees the kill, not the watchdog."""


class ProcessTree:
    """A command started in a session of its own, with a marker in its environment, so every process it starts
    (children, grandchildren, even those that start a session of their own) can be found. Leaving the `with` block
    kills what is still alive, so a failing test leaks nothing."""

    def __init__(self, cmd: list[str], **popen):
        self.marker = f"MMTUNE_TEST_TREE={uuid.uuid4().hex}"
        name, value = self.marker.split("=")
        self.proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", name: value},
                                     start_new_session=True, **popen)

    def alive(self) -> list[int]:
        """Pids of the tree's live processes; zombies (which hold no memory) are left out."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                state, _, _, session = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:4]
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:  # gone meanwhile, or another user's
                continue
            if state != "Z" and (int(session) == self.proc.pid or self.marker.encode() in environ):
                found.append(int(entry.name))
        return found

    def kill_root(self, seconds: float) -> list[int]:
        """SIGKILL the command itself; the tree's processes still alive `seconds` later."""
        self.proc.kill()
        self.proc.wait()
        deadline = time.monotonic() + seconds
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left

    def __enter__(self) -> ProcessTree:
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()
        for pid in self.alive():
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(pid, signal.SIGKILL)


@dataclass
class Saved:
    """A checkpoint and the mmtune model it holds, still in memory (LoRA unmerged): the reference outputs."""
    ckpt: Path
    model: object
    tokenizer: object
    cfg: RunConfig


def save_checkpoint(run_dir: Path, *overrides: str) -> Saved:
    """A checkpoint of a tiny model (of any model.kind) whose saved weights (LoRA's B included, which starts at
    zero) are perturbed, so each part, and the LoRA merge, changes the outputs. Frozen pretrained parts are not
    saved, so not perturbed."""
    import torch

    from mmtune.models.build import weights_to_save
    from mmtune.models.kinds import get_kind
    from mmtune.train import checkpoint
    from mmtune.train.engine import Engine

    cfg = load_config(None, ["model.llm=tiny:llama", f"train.out_dir={run_dir}", *overrides])
    model, tokenizer = get_kind(cfg.model.kind).build(cfg)
    gen = torch.Generator().manual_seed(0)
    saved = weights_to_save(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in saved:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    engine = Engine({}, cfg.train)
    engine.wrap(model, lambda params: torch.optim.SGD(params, lr=0.1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(engine.optimizer, lambda _: 1.0)
    ckpt = checkpoint.save(run_dir, 1, engine, model, scheduler, {"step": 1, "data": {}, "counts": {}}, cfg,
                           keep_last=1)
    return Saved(ckpt, model.eval(), tokenizer, cfg)
