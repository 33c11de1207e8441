"""Stream the records of a JSON array or JSON Lines file, with memory bounded by the largest record, not the file.

A file whose first non-blank character is `[` is a JSON array, parsed one element at a time with
json.JSONDecoder.raw_decode over a buffer holding about one chunk plus the element being parsed; a file starting
with `{` is JSON Lines. `.gz` files are decompressed on the fly. A malformed JSON Lines line becomes a record
carrying its error, since the next line can still be read; malformed JSON inside an array raises DataError,
since nothing after it can be trusted.
"""
from __future__ import annotations

import codecs
import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

from data_builders.common import MALFORMED_JSON, RecordError, Where
from mmtune.errors import DataError

CHUNK = 1 << 20
"""Characters read at a time; a record longer than this grows the buffer to fit it."""
_DECODER = json.JSONDecoder()
_NON_WS = re.compile(r"[^ \t\n\r]")


@dataclass(frozen=True)
class Record:
    """One element of the file: its value, or (for a bad JSON Lines line) the error that replaces it."""
    number: int
    line: int
    value: Any = None
    error: RecordError | None = None


def read_records(path: Path) -> Iterator[Record]:
    """Records of `path` in file order. Raises DataError naming the file (and record and line) when unreadable."""
    with _open(path) as f:
        try:
            first = _first_char(f)
            f.seek(0)
            if first == "[":
                yield from _ArrayReader(f, path).records()
            elif first == "{":
                yield from _json_lines(f, path)
            else:
                found = repr(first) if first else "nothing but whitespace"
                raise DataError(f"{path}: expected a JSON array or JSON Lines of objects, found {found} at the start")
        except UnicodeDecodeError:
            raise _not_utf8(path) from None


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


def _not_utf8(path: Path) -> DataError:
    """The error for a file that is not UTF-8, at the byte offset of its first bad byte in the file.

    A text stream's UnicodeDecodeError only knows the position inside the chunk it was decoding, so the file is
    decoded once more here, in binary, counting bytes (in the decompressed text for .gz files).
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes of the file before `chunk`
    with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            pending = len(decoder.getstate()[0])  # bytes of an unfinished character, decoded together with `chunk`
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                unit = " of the decompressed text" if path.suffix == ".gz" else ""
                bad = e.object[e.start:e.end].hex(" ")
                return DataError(f"{path}: not valid UTF-8 text at byte {offset - pending + e.start}{unit} "
                                 f"({e.reason}: {bad})")
            if not chunk:
                return DataError(f"{path}: not valid UTF-8 text")  # only if the file changed while it was read
            offset += len(chunk)


def _first_char(f: IO[str]) -> str:
    while chunk := f.read(4096):
        if match := _NON_WS.search(chunk):
            return match.group()
    return ""


def _json_lines(f: IO[str], path: Path) -> Iterator[Record]:
    """One record per non-blank line; blank lines are neither records nor errors."""
    number = 0
    for line_no, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            yield Record(number, line_no, json.loads(line))
        except json.JSONDecodeError as e:
            error = Where(path, number, line_no).error(None, f"malformed JSON at column {e.colno}: {e.msg}",
                                                       MALFORMED_JSON)
            yield Record(number, line_no, error=error)
        number += 1


class _ArrayReader:
    """Incremental parser of one top-level JSON array; `buf[pos:]` is the unparsed text read so far."""

    def __init__(self, f: IO[str], path: Path):
        self.f, self.path = f, path
        self.buf, self.pos, self.eof = "", 0, False
        self.line, self.line_pos = 1, 0  # `line` is the line number at buf[line_pos]

    def records(self) -> Iterator[Record]:
        self._next_char()
        self.pos += 1  # the opening '['
        number = 0
        if self._next_char() == "]":
            self.pos += 1
        else:
            while True:
                self._next_char()
                line = self._line_at(self.pos)
                yield Record(number, line, self._decode(number))
                number += 1
                char = self._next_char()
                self.pos += 1
                if char == "]":
                    break
                if char != ",":
                    found = repr(char) if char else "the end of the file"
                    raise self._error(number - 1, f"expected ',' or ']' after the record, found {found}")
        if self._next_char():
            raise self._error(number, "unexpected data after the closing ']' of the array")

    def _decode(self, number: int) -> Any:
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if self._maybe_cut(e) and self._more():
                    continue
                raise self._error(number, f"malformed JSON: {e.msg}", e.pos) from None
            if end == len(self.buf) and self._more():
                continue  # a bare number or literal may go on in the next chunk
            self.pos = end
            return value

    def _maybe_cut(self, e: json.JSONDecodeError) -> bool:
        """Whether the error may only mean the record goes on past the buffer (retrying then costs one re-parse)."""
        return not self.eof and (e.msg.startswith("Unterminated string") or e.pos >= len(self.buf) - 16)

    def _next_char(self) -> str:
        """Move `pos` to the next non-whitespace character and return it ('' at the end of the file)."""
        while True:
            match = _NON_WS.search(self.buf, self.pos)
            if match:
                self.pos = match.start()
                return match.group()
            self.pos = len(self.buf)
            if not self._more():
                return ""

    def _more(self) -> bool:
        """Drop the parsed text and append the next chunk (at least doubling the buffer); False at end of file."""
        if self.eof:
            return False
        self._line_at(self.pos)
        self.buf, self.pos, self.line_pos = self.buf[self.pos:], 0, 0
        chunk = self.f.read(max(CHUNK, len(self.buf)))
        self.eof = not chunk
        self.buf += chunk
        return not self.eof

    def _line_at(self, pos: int) -> int:
        """Line number at `pos` (>= the last position asked for), counting newlines incrementally."""
        self.line += self.buf.count("\n", self.line_pos, pos)
        self.line_pos = pos
        return self.line

    def _error(self, number: int, message: str, pos: int | None = None) -> DataError:
        line = self._line_at(max(self.pos if pos is None else pos, self.line_pos))
        return DataError(f"{Where(self.path, number, line)}: {message} (a JSON array cannot be read past this "
                         "point; fix the file)")
