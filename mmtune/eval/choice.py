"""Multiple-choice accuracy (ScienceQA, PMC-VQA, MMMU style): find the option letter in a free-form answer.

Models answer "B", "(B)", "B. a cat", "The answer is B." or just the option's text; `extract_choice` reads each of
these, in that order of trust (a hedge such as "(A) or (B)" names no single option), and returns None when nothing names exactly one option (scored wrong, and counted as
`unparsed` so a formatting problem is not mistaken for a knowledge problem).
"""
from __future__ import annotations

import re
import string

from mmtune.errors import DataError
from mmtune.eval.vqa import normalize_answer, summarise

_ALONE = re.compile(r"\(?([A-Z])\)?[.):]?")
_STATED = re.compile(r"\b[Aa]nswer(?:\s+is)?\s*(?:[Oo]ption\s*)?:?\s*\(?([A-Z])\b(?!['\u2019]\w)")
_LEADING = re.compile(r"^\(?([A-Z])[.):]\s")
_BRACKETED = re.compile(r"\(([A-Z])\)")


def option_letters(n: int) -> str:
    if not 1 <= n <= 26:
        raise DataError(f"multiple choice: {n} options; expected 1 to 26 (A-Z)")
    return string.ascii_uppercase[:n]


def extract_choice(answer: str, choices: list[str] | None = None) -> str | None:
    """The option letter `answer` picks, or None. Letters beyond the options (`choices` given) are not read."""
    letters = option_letters(len(choices)) if choices else string.ascii_uppercase
    text = answer.strip()
    if (m := _ALONE.fullmatch(text)) and m.group(1) in letters:
        return m.group(1)
    for patterns in ((_STATED,), (_LEADING, _BRACKETED)):
        found = {m.group(1) for p in patterns for m in p.finditer(text)} & set(letters)
        if len(found) == 1:
            return found.pop()
    return _by_text(text, choices or [])


def _by_text(answer: str, choices: list[str]) -> str | None:
    """The one option whose normalised text equals, or else appears as whole words in, the answer."""
    said = normalize_answer(answer)
    texts = [normalize_answer(c) for c in choices]
    for matches in ([i for i, t in enumerate(texts) if t == said],
                    [i for i, t in enumerate(texts) if t and re.search(rf"(?<!\S){re.escape(t)}(?!\S)", said)]):
        if len(matches) == 1:
            return string.ascii_uppercase[matches[0]]
    return None


def reference_letter(reference: str, choices: list[str] | None, where: str) -> str:
    """A reference given as a letter ("B", "(B)") or as one option's text -> its letter; DataError otherwise."""
    letters = option_letters(len(choices)) if choices else string.ascii_uppercase
    if (m := _ALONE.fullmatch(reference.strip())) and m.group(1) in letters:
        return m.group(1)
    texts = [normalize_answer(c) for c in choices or []]
    if texts.count(normalize_answer(reference)) == 1:
        return string.ascii_uppercase[texts.index(normalize_answer(reference))]
    raise DataError(f"{where}: field 'answer' {reference!r} is neither an option letter ({letters[0]}-{letters[-1]}) "
                    "nor the text of exactly one option")


def choice_accuracy(preds: list[str], refs: list[str], choices: list[list[str] | None],
                    tasks: list[str] | None = None) -> dict:
    """Accuracy of the letters extracted from `preds` against reference letters; adds "unparsed" (answers that
    named no single option)."""
    picked = [extract_choice(p, c) for p, c in zip(preds, choices)]
    result = summarise([p == r for p, r in zip(picked, refs)], tasks)
    return {**result, "unparsed": sum(p is None for p in picked)}
