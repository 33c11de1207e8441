"""Pins mmtune/eval/vqa.py: answer normalisation, exact match, overall and per-task accuracy."""
import pytest

from mmtune.errors import DataError
from mmtune.eval.vqa import accuracy, exact_match, normalize_answer


@pytest.mark.parametrize("raw, expected", [
    ("Red", "red"),
    ("  The red one. ", "red 1"),
    ("An apple!", "apple"),
    ("two", "2"),
    ("Ten", "10"),
    ("2.5 meters", "2.5 meters"),
    ("2.", "2"),
    ("1,000", "1000"),
    ("1,2", "1 2"),
    ("don't", "dont"),
    ("It\u2019s", "its"),
    ("dark-blue", "dark blue"),
    ("snake_case", "snake case"),
    ("", ""),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("pred, ref, same", [
    ("2", "two", True),
    ("Two.", "two", True),
    ("the circle", "circle", True),
    ("CIRCLE!", "circle", True),
    ("circles", "circle", False),
    ("red circle", "red", False),
    ("three", "2", False),
    ("theatre", "atre", False),  # articles are whole words only
])
def test_exact_match(pred, ref, same):
    assert exact_match(pred, ref) is same


def test_accuracy_overall_and_per_task():
    preds = ["Red", "2", "square", "left", "blue"]
    refs = ["red", "two", "circle", "left", "green"]
    tasks = ["color", "count", "shape", "position", "color"]
    result = accuracy(preds, refs, tasks)
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert (result["correct"], result["count"]) == (3, 5)
    assert result["per_task"] == {
        "color": {"accuracy": 0.5, "correct": 1, "count": 2},
        "count": {"accuracy": 1.0, "correct": 1, "count": 1},
        "position": {"accuracy": 1.0, "correct": 1, "count": 1},
        "shape": {"accuracy": 0.0, "correct": 0, "count": 1},
    }
    assert list(result["per_task"]) == sorted(result["per_task"])
    assert accuracy(preds, refs)["per_task"] == {}


def test_accuracy_rejects_misaligned_or_bad_input():
    with pytest.raises(DataError, match="2 predictions, 3 references; they must align"):
        accuracy(["a", "b"], ["a", "b", "c"])
    with pytest.raises(DataError, match="2 predictions, 2 references, 1 tasks"):
        accuracy(["a", "b"], ["a", "b"], ["color"])
    with pytest.raises(DataError, match="no predictions to score"):
        accuracy([], [])
    with pytest.raises(DataError, match="prediction 1 is NoneType, expected str"):
        accuracy(["red", None], ["red", "blue"])
