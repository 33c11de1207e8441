"""Point clouds from .npy, .pcd (ascii, binary, binary_compressed) and .ply (ascii, binary little/big endian) bytes.

Every reader returns float32 [N, 6]: xyz, then rgb in 0..1 (0.5 grey when the file has no colour). A header whose
point count disagrees with the data is a DataError naming the file and both counts, never a silently short or
zero-padded cloud. `PointsLoader` then centres the cloud, scales it into the unit sphere and samples N points with
a generator seeded by the bytes, so a sample reads the same in every epoch and worker.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np

from mmtune.errors import DataError

GREY = 0.5


def read_points(data: bytes, where: str) -> np.ndarray:
    """Bytes of a .npy, .pcd or .ply file (told apart by their first bytes) -> float32 [N, 6]."""
    try:
        if data.startswith(b"\x93NUMPY"):
            return _npy(data, where)
        if data.startswith(b"ply"):
            return _ply(data, where)
        if b"\nDATA " in data[:4096] or data.startswith(b"VERSION") or data.startswith(b"#"):
            return _pcd(data, where)
    except (ValueError, IndexError, KeyError) as e:
        raise DataError(f"{where}: malformed point cloud: {e}") from None
    raise DataError(f"{where}: not a point cloud in a format mmtune reads (.npy, .pcd, .ply), {len(data)} bytes")


def _with_colour(xyz: np.ndarray, rgb: np.ndarray | None) -> np.ndarray:
    rgb = np.full_like(xyz, GREY) if rgb is None else rgb
    return np.concatenate([xyz, rgb], axis=1).astype(np.float32)


def _npy(data: bytes, where: str) -> np.ndarray:
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.ndim != 2 or array.shape[1] not in (3, 6):
        raise DataError(f"{where}: .npy point cloud must be N x 3 or N x 6, got shape {list(array.shape)}")
    rgb = array[:, 3:6].astype(np.float32) if array.shape[1] == 6 else None
    if rgb is not None and rgb.max(initial=0) > 1:
        rgb = rgb / 255
    return _with_colour(array[:, :3].astype(np.float32), rgb)


def _header(data: bytes, end: bytes, where: str) -> tuple[list[str], int]:
    at = data.find(end)
    if at < 0:
        raise DataError(f"{where}: point cloud header has no {end.decode().strip()!r} line")
    stop = data.find(b"\n", at + 1) + 1
    return data[:stop].decode("ascii", errors="replace").splitlines(), stop


def _counted(found: int, declared: int, where: str, what: str) -> None:
    if found != declared:
        raise DataError(f"{where}: header declares {declared} {what} but the data holds {found}")


# ---- PCD (Point Cloud Library) ----

_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4",
              ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4"}


def _pcd(data: bytes, where: str) -> np.ndarray:
    lines, body = _header(data, b"\nDATA ", where)
    head = {line.split()[0]: line.split()[1:] for line in lines if line.strip() and not line.startswith("#")}
    names, sizes, types = head["FIELDS"], [int(s) for s in head["SIZE"]], head["TYPE"]
    counts = [int(c) for c in head.get("COUNT", ["1"] * len(names))]
    points, mode = int(head["POINTS"][0]), head["DATA"][0]
    dtype = np.dtype([(n, "<" + _PCD_TYPES[(t, s)], (c,)) for n, t, s, c in zip(names, types, sizes, counts)])
    payload = data[body:]
    if mode == "ascii":
        rows = [line.split() for line in payload.decode("ascii").splitlines() if line.strip()]
        _counted(len(rows), points, where, "points")
        flat = np.array(rows, dtype=np.float64)
        table = np.zeros(points, dtype)
        at = 0
        for n, c in zip(names, counts):
            table[n] = flat[:, at:at + c].reshape(points, c).astype(dtype[n].base)
            at += c
    elif mode == "binary":
        _counted(len(payload) // dtype.itemsize, points, where, "points")
        table = np.frombuffer(payload[:points * dtype.itemsize], dtype)
    elif mode == "binary_compressed":
        table = _pcd_compressed(payload, dtype, points, where)
    else:
        raise DataError(f"{where}: PCD DATA {mode!r} is not ascii, binary or binary_compressed")
    xyz = np.stack([table[a][:, 0] for a in "xyz"], axis=1).astype(np.float32)
    colour = next((n for n in ("rgb", "rgba") if n in names), None)
    return _with_colour(xyz, _packed_rgb(table[colour][:, 0]) if colour else None)


def _pcd_compressed(payload: bytes, dtype: np.dtype, points: int, where: str) -> np.ndarray:
    """binary_compressed: two uint32 sizes, then LZF data holding each field's values contiguously."""
    compressed, raw_size = np.frombuffer(payload[:8], "<u4")
    raw = lzf_decompress(payload[8:8 + int(compressed)], int(raw_size), where)
    _counted(len(raw) // dtype.itemsize, points, where, "points")
    table, at = np.zeros(points, dtype), 0
    for name in dtype.names:
        field = dtype[name]
        size = field.itemsize * points
        table[name] = np.frombuffer(raw[at:at + size], field.base).reshape(points, *field.shape)
        at += size
    return table


def lzf_decompress(data: bytes, size: int, where: str) -> bytes:
    """LZF (liblzf's format, as PCL writes it): literal runs and back references."""
    out, i = bytearray(), 0
    while i < len(data):
        ctrl = data[i]
        i += 1
        if ctrl < 32:  # ctrl + 1 literal bytes
            out += data[i:i + ctrl + 1]
            i += ctrl + 1
            continue
        length = ctrl >> 5
        if length == 7:
            length += data[i]
            i += 1
        start = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
        i += 1
        if start < 0:
            raise DataError(f"{where}: corrupt LZF data (a back reference before the start)")
        for k in range(length + 2):  # may overlap what it writes
            out.append(out[start + k])
    if len(out) != size:
        raise DataError(f"{where}: LZF data decompresses to {len(out)} bytes, the header says {size}")
    return bytes(out)


def _packed_rgb(values: np.ndarray) -> np.ndarray:
    """PCL packs 8-bit r, g, b into the bits of one 4-byte field (float or uint)."""
    bits = np.ascontiguousarray(values).view(np.uint32) if values.dtype.itemsize == 4 else values.astype(np.uint32)
    return np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=1).astype(np.float32) / 255


# ---- PLY ----

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _ply(data: bytes, where: str) -> np.ndarray:
    lines, body = _header(data, b"end_header", where)
    fmt = next(line.split()[1] for line in lines if line.startswith("format"))
    elements = [line.split() for line in lines if line.startswith(("element", "property"))]
    if not elements or elements[0][:2] != ["element", "vertex"]:
        raise DataError(f"{where}: PLY's first element is not `vertex`")
    vertices = int(elements[0][2])
    props = []
    for line in elements[1:]:
        if line[0] == "element":
            break
        if line[1] == "list":
            raise DataError(f"{where}: PLY vertex property {line[-1]!r} is a list; vertices need scalar properties")
        props.append((line[2], _PLY_TYPES[line[1]]))
    if fmt == "ascii":
        rows = payload_rows = data[body:].decode("ascii").splitlines()
        rows = [r.split() for r in payload_rows[:vertices] if r.strip()]
        _counted(len(rows), vertices, where, "vertices")
        table = np.array([tuple(r[:len(props)]) for r in rows], dtype=[(n, "f8") for n, _ in props])
    else:
        order = {"binary_little_endian": "<", "binary_big_endian": ">"}[fmt]
        dtype = np.dtype([(n, order + t) for n, t in props])
        _counted(min(len(data) - body, vertices * dtype.itemsize) // dtype.itemsize, vertices, where, "vertices")
        table = np.frombuffer(data[body:body + vertices * dtype.itemsize], dtype)
    xyz = np.stack([table[a] for a in "xyz"], axis=1).astype(np.float32)
    colour = ("red", "green", "blue")
    rgb = None
    if all(c in table.dtype.names for c in colour):
        rgb = np.stack([table[c] for c in colour], axis=1).astype(np.float32) / 255
    return _with_colour(xyz, rgb)


# ---- normalisation and sampling ----

def normalise(cloud: np.ndarray) -> np.ndarray:
    """Centre at the centroid and scale so the farthest point is at distance 1 (colour unchanged)."""
    xyz = cloud[:, :3] - cloud[:, :3].mean(0)
    radius = float(np.linalg.norm(xyz, axis=1).max(initial=0))
    return np.concatenate([xyz / radius if radius > 0 else xyz, cloud[:, 3:]], axis=1).astype(np.float32)


def sample_points(cloud: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n points: a random subset, or every point plus random repeats when the cloud has fewer."""
    rng = np.random.default_rng(seed)
    if len(cloud) >= n:
        return cloud[rng.choice(len(cloud), n, replace=False)]
    return cloud[np.concatenate([np.arange(len(cloud)), rng.choice(len(cloud), n - len(cloud))])]


class PointsLoader:
    """A point encoder's `preprocess`: bytes -> [points, 6] (xyz in the unit sphere, rgb), sampled reproducibly."""

    def __init__(self, points: int):
        self.points = points

    def __call__(self, data: bytes, where: str) -> np.ndarray:
        cloud = read_points(data, where)
        if len(cloud) == 0:
            raise DataError(f"{where}: point cloud has no points")
        if not np.isfinite(cloud).all():
            raise DataError(f"{where}: point cloud has NaN or infinite coordinates")
        seed = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
        return sample_points(normalise(cloud), self.points, seed)
