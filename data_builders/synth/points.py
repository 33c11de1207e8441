"""Synthetic point clouds for the point-cloud demo: points on the surface of a sphere, cube, cylinder, cone or
torus, stretched a little along each axis, scaled, rotated at random, moved and jittered with noise, in one colour.
Written as real files, .npy (xyz + rgb in 0..1) and binary .ply (float xyz, uchar rgb) in turn, so both of
mmtune's readers are on the demo's path. Sample i derives from `random.Random(f"points-{seed}-{i}")` alone.
"""
from __future__ import annotations

import io
import itertools
import math
import random
from pathlib import Path
from typing import Iterator

import numpy as np

from data_builders.synth.shapes import COLORS, qa_sample, write_splits
from mmtune.data.sample import Sample
from mmtune.errors import ConfigError

SOURCE = "synth/points"
CLASSES = ("sphere", "cube", "cylinder", "cone", "torus")
ANSWERS = {"shape": CLASSES}
QUESTIONS = ("What shape is this point cloud?", "Which solid do these points lie on?", "What object is this?")
POINTS = 512
NOISE = 0.02
"""Standard deviation of the jitter, relative to the shape's unit size."""


def generate(n: int, seed: int, points: int = POINTS) -> Iterator[Sample]:
    """`n` samples, deterministic from `seed`: a shape question about one cloud of `points` points."""
    if n < 0 or points < 1:
        raise ConfigError(f"synth points: n must be >= 0 and points >= 1, got n={n}, points={points}")
    return itertools.islice(_stream(seed, points), n)


def _stream(seed: int, points: int) -> Iterator[Sample]:
    for i in itertools.count():
        rng = random.Random(f"points-{seed}-{i}")
        shape = rng.choice(CLASSES)
        np_rng = np.random.default_rng(rng.getrandbits(64))
        xyz = posed(surface(shape, points, np_rng), np_rng)
        rgb = np.tile(np.array(COLORS[rng.choice(tuple(COLORS))], np.float32) / 255, (points, 1))
        member, data = ("cloud.ply", ply_bytes(xyz, rgb)) if i % 2 else ("cloud.npy", npy_bytes(xyz, rgb))
        yield qa_sample(f"points-{seed}-{i:07d}", SOURCE, "shape", [(rng.choice(QUESTIONS), shape)],
                        [("points", member, data)])


def surface(shape: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points spread uniformly over the surface of a unit-sized `shape`, [n, 3]."""
    if shape == "sphere":
        v = rng.normal(size=(n, 3))
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    if shape == "cube":  # a random face, a uniform point on it
        p = rng.uniform(-1, 1, size=(n, 3))
        axis = rng.integers(0, 3, n)
        p[np.arange(n), axis] = rng.choice([-1.0, 1.0], n)
        return p
    if shape == "cylinder":  # radius 1, height 2: the side holds 2/3 of the area
        angle, height = rng.uniform(0, 2 * math.pi, n), rng.uniform(-1, 1, n)
        radius = np.where(rng.uniform(size=n) < 2 / 3, 1.0, np.sqrt(rng.uniform(size=n)))
        height = np.where(radius < 1.0, rng.choice([-1.0, 1.0], n), height)
        return np.stack([radius * np.cos(angle), radius * np.sin(angle), height], axis=1)
    if shape == "cone":  # radius 1, height 2, apex up: the side holds sqrt(5) / (1 + sqrt(5)) of the area
        angle, r = rng.uniform(0, 2 * math.pi, n), np.sqrt(rng.uniform(size=n))
        side = rng.uniform(size=n) < math.sqrt(5) / (1 + math.sqrt(5))
        height = np.where(side, 1 - 2 * r, -1.0)
        return np.stack([r * np.cos(angle), r * np.sin(angle), height], axis=1)
    if shape == "torus":  # tube radius 0.35 around a circle of radius 1; the outer side has more area
        big, small = 1.0, 0.35
        u, v = rng.uniform(0, 2 * math.pi, 4 * n), rng.uniform(0, 2 * math.pi, 4 * n)
        keep = rng.uniform(size=4 * n) < (big + small * np.cos(v)) / (big + small)
        u, v = u[keep][:n], v[keep][:n]
        ring = big + small * np.cos(v)
        return np.stack([ring * np.cos(u), ring * np.sin(u), small * np.sin(v)], axis=1)
    raise ConfigError(f"synth points: unknown shape {shape!r}; one of {CLASSES}")


def posed(xyz: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stretched by 0.85-1.15 along each axis, scaled by 0.5-2, rotated uniformly at random, moved, jittered."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = q * np.sign(np.diag(r))  # uniform over orthogonal matrices; reflections are shapes too
    scale = rng.uniform(0.5, 2.0)
    out = (xyz * rng.uniform(0.85, 1.15, 3)) @ rotation.T * scale + rng.uniform(-3, 3, 3)
    return (out + rng.normal(scale=NOISE * scale, size=out.shape)).astype(np.float32)


def npy_bytes(xyz: np.ndarray, rgb: np.ndarray) -> bytes:
    """An N x 6 float32 .npy file: xyz, then rgb in 0..1."""
    buf = io.BytesIO()
    np.save(buf, np.concatenate([xyz, rgb], axis=1).astype(np.float32))
    return buf.getvalue()


def ply_bytes(xyz: np.ndarray, rgb: np.ndarray) -> bytes:
    """A binary little-endian PLY file of float xyz and uchar red, green, blue vertices."""
    vertex = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    table = np.empty(len(xyz), vertex)
    for axis, name in enumerate("xyz"):
        table[name] = xyz[:, axis]
    for channel, name in enumerate(("red", "green", "blue")):
        table[name] = np.round(rgb[:, channel] * 255)
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(xyz)}\n"
              + "".join(f"property {t} {n}\n" for n, t in
                        zip(vertex.names, ("float", "float", "float", "uchar", "uchar", "uchar")))
              + "end_header\n")
    return header.encode("ascii") + table.tobytes()


def write_demo_shards(out_dir: str | Path, n_train: int, n_eval: int, seed: int = 0, points: int = POINTS,
                      shard_size: int = 1000) -> dict:
    """`train-*.tar` and `eval-*.tar` in `out_dir`, from streams seeded 2*seed and 2*seed+1. Returns
    {"train": [paths], "eval": [paths], "chance": eval chance accuracy}."""
    splits = {"train": list(generate(n_train, 2 * seed, points))}
    return write_splits(out_dir, splits, _stream(2 * seed + 1, points), n_eval, ANSWERS, shard_size)
