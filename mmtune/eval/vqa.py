"""VQA-style answer accuracy: normalise prediction and reference the same way, then compare them exactly.

The normalisation follows the idea of the official VQA evaluation, kept simple: lowercase; apostrophes dropped
("don't" -> "dont") and digit-group commas dropped ("1,000" -> "1000"); any other non-alphanumeric character
separates words, except a decimal point between digits; the articles a/an/the are dropped; the number words
zero-ten become digits, so "Two." matches "2". Unlike the official metric there is one reference per question
(no min(#matching annotators / 3, 1) score) and no contraction table.
"""
from __future__ import annotations

import re

from mmtune.errors import DataError

NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))}
ARTICLES = frozenset({"a", "an", "the"})
_APOSTROPHES = re.compile(r"['\u2019]")
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W_]+")


def normalize_answer(s: str) -> str:
    """Canonical form of an answer: space-separated lowercase tokens, articles removed, numbers as digits."""
    s = _DIGIT_COMMA.sub("", _APOSTROPHES.sub("", s.lower()))
    return " ".join(NUMBER_WORDS.get(t, t) for t in _TOKEN.findall(s) if t not in ARTICLES)


def exact_match(pred: str, ref: str) -> bool:
    """True when prediction and reference are equal after normalize_answer."""
    return normalize_answer(pred) == normalize_answer(ref)


def accuracy(preds: list[str], refs: list[str], tasks: list[str] | None = None) -> dict:
    """Exact-match accuracy over aligned lists.

    Returns `{"accuracy", "correct", "count", "per_task": {task: {"accuracy", "correct", "count"}}}`; per_task
    is empty when `tasks` is None. Raises DataError when the lists are empty, differ in length, or hold a
    non-string (e.g. a failed generation left as None), naming the index.
    """
    if len(preds) != len(refs) or (tasks is not None and len(tasks) != len(refs)):
        raise DataError(f"vqa accuracy: {len(preds)} predictions, {len(refs)} references"
                        + (f", {len(tasks)} tasks" if tasks is not None else "") + "; they must align")
    if not refs:
        raise DataError("vqa accuracy: no predictions to score")
    for name, values in (("prediction", preds), ("reference", refs)):
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise DataError(f"vqa accuracy: {name} {i} is {type(v).__name__}, expected str")
    return summarise([exact_match(p, r) for p, r in zip(preds, refs)], tasks)


def summarise(hits: list[bool], tasks: list[str] | None = None) -> dict:
    """Accuracy of per-item hits, overall and per task (sorted by name; empty when `tasks` is None)."""
    per_task: dict[str, list[bool]] = {}
    for task, hit in zip(tasks or [], hits):
        per_task.setdefault(task, []).append(hit)
    return {**_score(hits), "per_task": {t: _score(per_task[t]) for t in sorted(per_task)}}


def _score(hits: list[bool]) -> dict:
    return {"accuracy": sum(hits) / len(hits), "correct": sum(hits), "count": len(hits)}
