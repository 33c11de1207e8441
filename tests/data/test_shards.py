"""Shards: standard WebDataset tars; a stream that splits across ranks and workers without loss or repeat,
resumes from an index, and names truncated shards."""
import random

import pytest
import torch

from mmtune.data.shards import ShardSink, count_samples, expand_shards, iter_refs, read_sample
from mmtune.data.stream import ShardStream
from mmtune.errors import DataError
from tests.helpers import image_sample, write_text_shards


def _ids(stream, workers=0):
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=lambda x: x)
    return [(it.index, it.value.id) for it in loader]


def test_webdataset_reads_our_shards(tmp_path):
    import webdataset as wds

    rng = random.Random(0)
    with ShardSink(tmp_path, "train", maxcount=3) as sink:
        for i in range(7):
            sink.write(image_sample(i, rng))
    shards = sorted(str(p) for p in tmp_path.glob("train-*.tar"))
    assert len(shards) == 3 and count_samples(shards) == 7
    records = list(wds.WebDataset(shards, shardshuffle=False, empty_check=False))
    assert len(records) == 7 and all({"json", "0.png"} <= set(r) for r in records)


def test_round_trip_keeps_bytes(tmp_path):
    rng = random.Random(0)
    original = image_sample(0, rng, n_images=2)
    with ShardSink(tmp_path, "x") as sink:
        sink.write(original)
    (ref,) = iter_refs(str(tmp_path / "x-000000.tar"))
    back = read_sample(ref)
    assert back.messages == original.messages and back.data == original.data and back.media == original.media


def test_sink_refuses_a_directory_with_old_shards(tmp_path):
    write_text_shards(tmp_path, 3)
    with pytest.raises(DataError, match="already holds train shards"):
        ShardSink(tmp_path, "train")


@pytest.mark.parametrize("world, workers", [(1, 2), (2, 1), (2, 2), (3, 2)])
def test_ranks_and_workers_partition_the_epoch(tmp_path, world, workers):
    shards = write_text_shards(tmp_path, 45, shard_size=7)
    single = [i for _, i in _ids(ShardStream(shards, lambda s: s, epoch=1, seed=5, shuffle_buffer=10))]
    assert sorted(single) == sorted(f"s{i:05d}" for i in range(45))
    per_rank = [_ids(ShardStream(shards, lambda s: s, epoch=1, seed=5, shuffle_buffer=10, rank=r, world=world),
                     workers) for r in range(world)]
    for r, items in enumerate(per_rank):
        assert [ix for ix, _ in items] == list(range(len(items)))  # local indices in order despite workers
        assert [i for _, i in items] == single[r::world]


def test_start_resumes_mid_epoch(tmp_path):
    shards = write_text_shards(tmp_path, 30, shard_size=8)
    full = _ids(ShardStream(shards, lambda s: s, seed=2, shuffle_buffer=6))
    assert _ids(ShardStream(shards, lambda s: s, seed=2, shuffle_buffer=6, start=11), workers=2) == full[11:]


def test_epochs_reshuffle(tmp_path):
    shards = write_text_shards(tmp_path, 30, shard_size=8)
    a = _ids(ShardStream(shards, lambda s: s, epoch=0, shuffle_buffer=6))
    b = _ids(ShardStream(shards, lambda s: s, epoch=1, shuffle_buffer=6))
    assert a != b and sorted(x for _, x in a) == sorted(x for _, x in b)


def test_truncated_shard_is_reported_with_its_name(tmp_path):
    shards = write_text_shards(tmp_path, 20, shard_size=20)
    data = open(shards[0], "rb").read()
    open(shards[0], "wb").write(data[:len(data) // 2])
    items = list(ShardStream(shards, lambda s: s, shuffle=False))
    assert items[-1].reason == "bad_shard" and "train-000000.tar: truncated or corrupt tar" in items[-1].error
    assert all(it.error is None for it in items[:-1]) and len(items) > 1


def test_expand_shards_names_what_is_missing(tmp_path):
    write_text_shards(tmp_path, 20, shard_size=8)
    assert len(expand_shards([str(tmp_path / "train-{000000..000002}.tar")])) == 3
    assert len(expand_shards([str(tmp_path)])) == 3
    with pytest.raises(DataError, match=r"data\.eval: no shard found at '.*nothing-\*\.tar'"):
        expand_shards([str(tmp_path / "nothing-*.tar")], "data.eval")


def test_unsafe_member_paths_are_refused(tmp_path):
    import io
    import tarfile

    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("../escape.json")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(DataError, match=r"'\.\./escape\.json' has an absolute or '\.\.' path"):
        list(iter_refs(str(path)))
