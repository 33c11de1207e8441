"""ROUGE-L: longest common subsequence of words between a generated and a reference text.

Tokenised as Google's `rouge-score` does without stemming (lowercase, runs of [a-z0-9], everything else separates),
so numbers match its `RougeScorer(["rougeL"])`; implemented here (a 20-line LCS) rather than adding a dependency.
"""
from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, by dynamic programming over one row (O(len(a) * len(b)))."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> dict:
    """{"precision", "recall", "f1"}: LCS over prediction length, over reference length, and their harmonic mean
    (all 0 when either text has no word)."""
    pred, ref = tokens(prediction), tokens(reference)
    lcs = lcs_length(pred, ref)
    if not lcs:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    p, r = lcs / len(pred), lcs / len(ref)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r)}


def mean_rouge_l(preds: list[str], refs: list[str]) -> dict:
    """ROUGE-L precision, recall and F1 averaged over aligned items, with their count."""
    scores = [rouge_l(p, r) for p, r in zip(preds, refs, strict=True)]
    return {k: sum(s[k] for s in scores) / max(len(scores), 1) for k in ("precision", "recall", "f1")} | {
        "count": len(scores)}
