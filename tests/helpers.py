"""Small builders shared by tests: synthetic text/image samples written as shards, and tiny run configs."""
from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image

from mmtune.config import load_config
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


def tiny_config(out_dir: Path, shards: list[str], *overrides: str):
    return load_config(None, [f"data.train={shards}", f"train.out_dir={out_dir}", "model.llm=tiny:llama",
                              "data.max_len=96", "train.batch_size=4", "train.steps=4", "train.warmup=1",
                              "train.eval_every=1000", "train.save_every=1000", *overrides])
