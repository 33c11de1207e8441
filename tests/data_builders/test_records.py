"""The streaming reader: JSON arrays parsed element by element in bounded memory, JSON Lines line by line."""
from __future__ import annotations

import gzip
import json
import re
import tracemalloc

import pytest

from data_builders import records
from data_builders.records import read_records
from mmtune.errors import DataError

TRICKY = [
    {"text": "a ] and a , and a \" quote", "n": 12345678901234567890, "f": -1.5e-3},
    {"nested": [[1, 2], {"k": [True, False, None]}], "uni": "ünïcødé 漢字 🙂"},
    {"long": "x" * 300},
    {},
]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_array_is_parsed_the_same_at_every_chunk_size(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(records, "CHUNK", chunk)
    path = tmp_path / "a.json"
    path.write_text(json.dumps(TRICKY, indent=2, ensure_ascii=False))
    got = list(read_records(path))
    assert [r.value for r in got] == TRICKY
    assert [r.number for r in got] == [0, 1, 2, 3]
    lines = path.read_text().splitlines()
    assert [lines[r.line - 1].strip() for r in got] == ["{", "{", "{", "{}"]


def test_bare_numbers_are_not_cut_at_a_chunk_boundary(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "CHUNK", 2)
    path = tmp_path / "n.json"
    path.write_text("[123456, 7,\n 89]")
    assert [r.value for r in read_records(path)] == [123456, 7, 89]


def test_empty_array_and_bom(tmp_path):
    path = tmp_path / "e.json"
    path.write_bytes(b"\xef\xbb\xbf [ ] \n")
    assert list(read_records(path)) == []


def test_json_lines_skip_blank_lines_and_keep_line_numbers(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n{"a": 4}\n')
    got = list(read_records(path))
    assert [(r.number, r.line, r.value) for r in got] == [(0, 1, {"a": 1}), (1, 3, {"a": 2}), (2, 4, None),
                                                           (3, 5, {"a": 4})]
    assert got[2].error is not None and got[2].error.reason == "malformed_json"
    assert str(got[2].error).startswith(f"{path} record 2 (line 4): malformed JSON at column")


def test_gzip_json_lines(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"a": 1}\n{"a": 2}\n')
    assert [r.value for r in read_records(path)] == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("text, match", [
    ('[{"a": 1},\n {"a": }]', r"a\.json record 1 \(line 2\): malformed JSON: Expecting value"),
    ('[{"a": 1},\n {"a": 2}', r"a\.json record 1 \(line 2\): expected ',' or '\]' after the record, found the end"),
    ('[{"a": 1} {"a": 2}]', r"a\.json record 0 \(line 1\): expected ',' or '\]' after the record, found '\{'"),
    ('[{"a": 1}]\n[{"a": 2}]', r"a\.json record 1 \(line 2\): unexpected data after the closing '\]'"),
    ('[{"a": "unterminated}]', r"a\.json record 0 \(line 1\): malformed JSON: Unterminated string"),
    ("   \n  ", r"a\.json: expected a JSON array or JSON Lines of objects, found nothing but whitespace"),
    ('"text"', r"a\.json: expected a JSON array or JSON Lines of objects, found '\"'"),
])
def test_malformed_arrays_raise_naming_file_record_and_line(tmp_path, monkeypatch, text, match):
    monkeypatch.setattr(records, "CHUNK", 4)  # the error must not depend on where a chunk ends
    path = tmp_path / "a.json"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        list(read_records(path))


def test_invalid_utf8_raises_naming_the_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b'[{"a": "\xff\xfe"}]')
    with pytest.raises(DataError, match=r"a\.json: not valid UTF-8"):
        list(read_records(path))


@pytest.mark.parametrize("suffix, unit", [(".json", ""), (".json.gz", " of the decompressed text")])
def test_invalid_utf8_past_a_mebibyte_names_its_byte_offset_in_the_file(tmp_path, suffix, unit):
    # Two-byte characters after a 7-byte head: some straddle the boundaries of the decode chunks.
    head = '[{"a":"'.encode() + "é".encode() * 1_500_000
    assert len(head) > 2 * records.CHUNK and (records.CHUNK - 7) % 2
    path = tmp_path / f"a{suffix}"
    with (gzip.open if suffix.endswith(".gz") else open)(path, "wb") as f:
        f.write(head + b'\xff"}]')
    with pytest.raises(DataError, match=rf"a{re.escape(suffix)}: not valid UTF-8 text at byte {len(head)}{unit} "
                                        r"\(invalid start byte: ff\)"):
        list(read_records(path))


def test_reading_an_array_holds_a_few_chunks_not_the_file(tmp_path):
    path = tmp_path / "big.json"
    record = {"instruction": "x" * 200, "output": "y" * 200}
    with open(path, "w") as f:
        f.write("[" + ",\n".join(json.dumps(record) for _ in range(40_000)) + "]")
    size = path.stat().st_size
    tracemalloc.start()
    count = sum(1 for _ in read_records(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 40_000
    # The text alone would be `size`; a reader that loads the file cannot stay under half of it.
    assert peak < 6 * records.CHUNK < size / 2, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB file"
