"""Point-cloud readers on real files and hand-written ones: every format and encoding, counts checked, sampling."""
import struct

import numpy as np
import pytest

from mmtune.data.points import PointsLoader, lzf_decompress, read_points
from mmtune.errors import DataError
from tests.helpers import SAMPLES

CLOUDS = SAMPLES / "pointcloud"
XYZ = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3]], np.float32)
RGB = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], np.uint8)


@pytest.mark.parametrize("name, points, coloured", [
    ("bunny.pcd", 397, False), ("colored_cloud.pcd", 1000, True), ("bunny.ply", 1889, False), ("cube.ply", 24, False)])
def test_real_files(name, points, coloured):
    cloud = read_points((CLOUDS / name).read_bytes(), name)
    assert cloud.shape == (points, 6) and cloud.dtype == np.float32 and np.isfinite(cloud).all()
    assert (cloud[:, 3:].std() > 0) == coloured


def test_cube_ply_is_the_unit_cube():
    cloud = read_points((CLOUDS / "cube.ply").read_bytes(), "cube.ply")
    assert set(np.unique(cloud[:, :3])) == {-1.0, 1.0}


def _ply(fmt: str, body: bytes, count: int = 4) -> bytes:
    head = (f"ply\nformat {fmt} 1.0\nelement vertex {count}\nproperty float x\nproperty float y\nproperty float z\n"
            "property uchar red\nproperty uchar green\nproperty uchar blue\nelement face 0\n"
            "property list uchar int vertex_indices\nend_header\n")
    return head.encode() + body


def _ply_binary(order: str) -> bytes:
    return b"".join(struct.pack(f"{order}fffBBB", *p, *c) for p, c in zip(XYZ.tolist(), RGB.tolist()))


@pytest.mark.parametrize("fmt, body", [
    ("ascii", "".join(f"{x} {y} {z} {r} {g} {b}\n" for (x, y, z), (r, g, b) in zip(XYZ.tolist(), RGB.tolist()))
     .encode()),
    ("binary_little_endian", _ply_binary("<")), ("binary_big_endian", _ply_binary(">"))])
def test_ply_encodings_with_colour(fmt, body):
    cloud = read_points(_ply(fmt, body), "x.ply")
    np.testing.assert_allclose(cloud[:, :3], XYZ)
    np.testing.assert_allclose(cloud[:, 3:], RGB / 255, atol=1e-6)


@pytest.mark.parametrize("fmt, body", [("ascii", b"0 0 0 1 2 3\n1 1 1 1 2 3\n"),
                                       ("binary_little_endian", _ply_binary("<")[:30])])
def test_ply_with_fewer_vertices_than_its_header_names_both_counts(fmt, body):
    with pytest.raises(DataError, match=r"x\.ply: header declares 4 vertices but the data holds 2"):
        read_points(_ply(fmt, body), "x.ply")


def _pcd(mode: str, body: bytes, points: int = 4) -> bytes:
    return (f"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F U\nCOUNT 1 1 1 1\nWIDTH {points}\n"
            f"HEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {points}\nDATA {mode}\n").encode() + body


PACKED = [(int(r) << 16) | (int(g) << 8) | int(b) for r, g, b in RGB]


def lzf_literals(raw: bytes) -> bytes:
    """The simplest valid LZF stream: literal runs of up to 32 bytes."""
    return b"".join(bytes([len(raw[i:i + 32]) - 1]) + raw[i:i + 32] for i in range(0, len(raw), 32))


@pytest.mark.parametrize("mode", ["ascii", "binary", "binary_compressed"])
def test_pcd_encodings_with_packed_colour(mode):
    if mode == "ascii":
        body = "".join(f"{x} {y} {z} {c}\n" for (x, y, z), c in zip(XYZ.tolist(), PACKED)).encode()
    elif mode == "binary":
        body = b"".join(struct.pack("<fffI", *p, c) for p, c in zip(XYZ.tolist(), PACKED))
    else:  # fields stored one after another, then LZF
        raw = XYZ[:, 0].tobytes() + XYZ[:, 1].tobytes() + XYZ[:, 2].tobytes() + np.array(PACKED, "<u4").tobytes()
        packed = lzf_literals(raw)
        body = struct.pack("<II", len(packed), len(raw)) + packed
    cloud = read_points(_pcd(mode, body), "x.pcd")
    np.testing.assert_allclose(cloud[:, :3], XYZ)
    np.testing.assert_allclose(cloud[:, 3:], RGB / 255, atol=1e-6)


def test_pcd_with_fewer_points_than_its_header_names_both_counts():
    with pytest.raises(DataError, match=r"x\.pcd: header declares 5 points but the data holds 4"):
        read_points(_pcd("binary", b"".join(struct.pack("<fffI", *p, 0) for p in XYZ.tolist()), points=5), "x.pcd")


def test_lzf_back_references_repeat_earlier_bytes():
    # literal "ab", then a back reference of length 4 at distance 2: "ababab"
    assert lzf_decompress(bytes([1]) + b"ab" + bytes([(2 << 5) | 0, 1]), 6, "x") == b"ababab"
    with pytest.raises(DataError, match="decompresses to 6 bytes, the header says 7"):
        lzf_decompress(bytes([1]) + b"ab" + bytes([(2 << 5) | 0, 1]), 7, "x")


@pytest.mark.parametrize("array", [XYZ, np.concatenate([XYZ, RGB], axis=1)])
def test_npy_with_and_without_colour(tmp_path, array):
    np.save(tmp_path / "c.npy", array)
    cloud = read_points((tmp_path / "c.npy").read_bytes(), "c.npy")
    np.testing.assert_allclose(cloud[:, :3], XYZ)


def test_npy_of_the_wrong_shape_is_refused(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((4, 4)))
    with pytest.raises(DataError, match=r"c\.npy: \.npy point cloud must be N x 3 or N x 6, got shape \[4, 4\]"):
        read_points((tmp_path / "c.npy").read_bytes(), "c.npy")


def test_loader_normalises_into_the_unit_sphere_and_samples_reproducibly():
    data = (CLOUDS / "bunny.ply").read_bytes()
    a, b = PointsLoader(256)(data, "bunny.ply"), PointsLoader(256)(data, "bunny.ply")
    assert a.shape == (256, 6) and np.array_equal(a, b)
    assert np.linalg.norm(a[:, :3], axis=1).max() <= 1 + 1e-5
    small = PointsLoader(64)((CLOUDS / "cube.ply").read_bytes(), "cube.ply")  # 24 points: all, plus repeats
    assert small.shape == (64, 6) and len(np.unique(small[:, :3], axis=0)) == 8
