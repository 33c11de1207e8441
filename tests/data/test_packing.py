"""Packing and batching: packed rows give each sample the same loss as unpacked ones; positions are exact."""
import random

import pytest
import torch

from mmtune.data.packing import Batcher, DataState, collate, to_device
from mmtune.data.pipeline import iterate_batches
from mmtune.data.shards import Item, expand_shards
from mmtune.errors import DataError
from mmtune.models.build import build_model
from mmtune.models.objectives import per_sample_loss
from mmtune.train.trainer import sample_encoder
from tests.helpers import VLM, tiny_config, write_image_shards, write_text_shards


def _encoded(cfg, model, tok, shards):
    enc = sample_encoder(cfg, model, tok)
    from mmtune.data.stream import ShardStream

    return [it.value for it in ShardStream(shards, enc, shuffle=False)]


@pytest.mark.parametrize("modality", ["text", "image"])
def test_packed_loss_equals_unpacked(tmp_path, modality):
    write = write_text_shards if modality == "text" else write_image_shards
    shards = write(tmp_path / "d", 12)
    cfg = tiny_config(tmp_path / "run", shards, *(VLM if modality == "image" else []))
    model, tok = build_model(cfg)
    model.eval()
    samples = _encoded(cfg, model, tok, shards)
    unpacked = collate([[s] for s in samples], tok.pad_token_id)
    packed_rows = [samples[i:i + 4] for i in range(0, len(samples), 4)]
    packed = collate(packed_rows, tok.pad_token_id)
    assert packed["packed"] and not unpacked["packed"]
    with torch.no_grad():
        a, b = per_sample_loss(model, unpacked), per_sample_loss(model, packed)
    assert a.keys() == b.keys() and len(a) == 12
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-5), k


def test_collate_positions_restart_and_media_count(tmp_path):
    shards = write_image_shards(tmp_path / "d", 8)
    cfg = tiny_config(tmp_path / "run", shards, *VLM)
    model, tok = build_model(cfg)
    samples = _encoded(cfg, model, tok, shards)
    batch = collate([samples[:3], samples[3:5]], tok.pad_token_id)
    row = batch["position_ids"][0].tolist()
    n0 = len(samples[0]["input_ids"])
    assert row[:n0] == list(range(n0)) and row[n0] == 0
    n_images = sum(len(s["media"].get("image", ())) for s in samples[:5])
    assert int((batch["input_ids"] == -200).sum()) == n_images * model.media_tokens["image"]


def _items(lengths):
    return [Item(i, value={"id": str(i), "input_ids": [1] * n, "labels": [1] * n, "modality": "text"})
            for i, n in enumerate(lengths)]


def _counted_items(lengths):
    """Every 7th position a skipped sample, every 5th sample truncated: what the counters see."""
    items = _items(lengths)
    for item in items:
        if item.index % 7 == 3:
            item.value, item.error, item.reason = None, f"shard.tar key {item.index}: bad", "bad_sample"
        elif item.index % 5 == 0:
            item.value["truncated"] = True
    return items


def _padding(batches) -> float:
    cells = sum(len(rows) * max(sum(len(s["input_ids"]) for s in r) for r in rows) for rows, _ in batches)
    return 1 - sum(len(s["input_ids"]) for rows, _ in batches for r in rows for s in r) / cells


def _cut_rows(rng, rows: int, max_len: int) -> list[int]:
    """Lengths of `rows` full rows cut into 2-5 pieces, shuffled: a perfect packing exists."""
    lengths = []
    for _ in range(rows):
        cuts = sorted(rng.sample(range(1, max_len), rng.randint(1, 4)))
        lengths += [b - a for a, b in zip([0, *cuts], [*cuts, max_len])]
    rng.shuffle(lengths)
    return lengths


def test_packing_fills_rows_to_the_known_optimum():
    rng = random.Random(0)
    one_window = list(Batcher(8, 64, packing=True, window=8)(iter(_items(_cut_rows(rng, 64, 64))), DataState()))
    assert sum(len(rows) for rows, _ in one_window) == 64 and _padding(one_window) == 0
    # windows (16 batches by default) end wherever their token budget does, so their last rows may be short
    windows = list(Batcher(8, 64, packing=True)(iter(_items(_cut_rows(rng, 256, 64))), DataState()))
    assert _padding(windows) < 0.01


def test_packing_is_deterministic_for_a_seed():
    lengths = [random.Random(2).randint(1, 40) for _ in range(300)]

    def ids(seed):
        return [[[s["id"] for s in r] for r in rows] for rows, _ in Batcher(4, 64, packing=True, seed=seed,
                                                                            window=4)(iter(_items(lengths)), DataState())]

    assert ids(1) == ids(1)
    assert ids(1) != ids(2)
    flat = lambda batches: sorted(i for rows in batches for r in rows for i in r)  # noqa: E731
    assert flat(ids(1)) == flat(ids(2))


@pytest.mark.parametrize("packing", [False, True])
def test_batcher_resumes_exactly_from_any_state(packing):
    rng = random.Random(0)
    items = _counted_items([rng.randint(1, 30) for _ in range(200)])
    batcher = Batcher(4, 64, packing=packing, group_by_length=True, window=4, on_error="skip")
    full, counts_after = [], []
    for batch in batcher(iter(items), DataState()):
        full.append(batch)
        counts_after.append(dict(batcher.counts))  # what a checkpoint after this batch saves
    assert any(state.skip_batches > 0 for _, state in full)  # some states lie inside a window
    for k in range(1, len(full)):
        state = full[k - 1][1]
        resumed = Batcher(4, 64, packing=packing, group_by_length=True, window=4, on_error="skip")
        resumed.counts.update(counts_after[k - 1])
        tail = list(resumed(iter(items[state.start:]), state))
        assert [rows for rows, _ in tail] == [rows for rows, _ in full[k:]], k
        assert resumed.counts == batcher.counts, k
    assert batcher.counts == {"skipped_bad_sample": sum(it.error is not None for it in items),
                              "truncated": sum(it.error is None and "truncated" in it.value for it in items)}
    seen = [s["id"] for rows, _ in full for row in rows for s in row]
    assert sorted(seen, key=int) == [str(i) for i in range(200) if i % 7 != 3]  # nothing repeated, nothing lost


def test_packing_respects_max_len_and_batch_size():
    items = _items([10, 50, 20, 64, 5, 30, 33] * 10)
    batches = list(Batcher(2, 64, packing=True, window=3)(iter(items), DataState()))
    assert len(batches) > 5
    for rows, _ in batches:
        assert len(rows) <= 2
        assert all(sum(len(s["input_ids"]) for s in row) <= 64 for row in rows)


def test_length_grouping_reduces_padding(tmp_path):
    rng = random.Random(1)
    items = _items([rng.randint(1, 60) for _ in range(256)])

    def pad(batcher):
        total = real = 0
        for rows, _ in batcher(iter(items), DataState()):
            width = max(sum(len(s["input_ids"]) for s in r) for r in rows)
            total += width * len(rows)
            real += sum(len(s["input_ids"]) for r in rows for s in r)
        return 1 - real / total

    assert pad(Batcher(8, 64, group_by_length=True)) < pad(Batcher(8, 64, group_by_length=False)) / 2


def test_failed_items_raise_or_count():
    items = _items([5, 5]) + [Item(2, error="shard.tar key '7': bad image", reason="bad_sample")]
    with pytest.raises(DataError, match=r"shard\.tar key '7': bad image"):
        list(Batcher(2, 64, on_error="raise")(iter(items), DataState()))
    b = Batcher(2, 64, on_error="skip")
    assert len(list(b(iter(items), DataState()))) == 1 and b.counts["skipped_bad_sample"] == 1


def test_iterate_batches_with_workers_matches_main_process(tmp_path):
    shards = write_text_shards(tmp_path / "d", 40, shard_size=7)
    cfg = tiny_config(tmp_path / "run", shards)
    model, tok = build_model(cfg)
    enc = sample_encoder(cfg, model, tok)

    def ids(workers):
        it = iterate_batches(expand_shards(shards), enc, Batcher(4, 96, seed=3), tok.pad_token_id, DataState(),
                             seed=3, shuffle_buffer=8, num_workers=workers, epochs=2)
        return [b["sample_ids"] for b, _ in it]

    assert ids(0) == ids(2)


def test_to_device_moves_media_tensors_too():
    """`media` holds one tensor per kind in a nested dict; a GPU run needs them on the GPU with the ids."""
    batch = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "media": {"image": torch.zeros(1, 3, 2, 2)},
             "sample_ids": ["a"]}
    moved = to_device(batch, torch.device("meta"))
    assert moved["input_ids"].is_meta and moved["media"]["image"].is_meta and moved["sample_ids"] == ["a"]
