"""JSON Lines inputs of the commands (eval questions, MT-bench questions, chat prompts): numbered lines and one
object per line, with errors that name `file:line`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from mmtune.errors import DataError


def numbered_lines(path: Path, flag: str) -> Iterator[tuple[str, str]]:
    """(`path:N`, text) for every non-empty line; DataError naming `flag` when the file does not exist."""
    if not path.is_file():
        raise DataError(f"{flag}: no such file {path}")
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            yield f"{path}:{n}", line


def json_object(line: str, where: str) -> dict:
    """The JSON object on one line; DataError naming `where` for bad JSON or another JSON type."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record
