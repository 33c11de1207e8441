"""Pins the answer readers and scores of mmtune eval: option-letter extraction, reference letters, ROUGE-L
against hand-computed values."""
import pytest

from mmtune.errors import DataError
from mmtune.eval.choice import choice_accuracy, extract_choice, reference_letter
from mmtune.eval.rouge import lcs_length, mean_rouge_l, rouge_l

CHOICES = ["a cat", "a dog", "two birds", "none of these"]


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"),
    ("(C)", "C"),
    ("D.", "D"),
    ("A)", "A"),
    ("B. a dog", "B"),
    ("(B) a dog, clearly", "B"),
    ("The answer is C.", "C"),
    ("Answer: (A)", "A"),
    ("answer: D", "D"),
    ("I think the answer is B because of the fur.", "B"),
    ("A dog", "B"),  # the text of an option; "A" is an article here, not a letter
    ("It shows a dog sitting.", "B"),
    ("Two birds!", "C"),
    ("E", None),  # beyond the four options
    ("I am not sure", None),
    ("a cat or a dog", None),  # names two options
    ("(A) or (B)", None),
])
def test_extract_choice(answer, letter):
    assert extract_choice(answer, CHOICES) == letter


def test_extract_choice_without_options_reads_letters_only():
    assert extract_choice("The answer is E.") == "E"
    assert extract_choice("a dog") is None


@pytest.mark.parametrize("reference, letter", [("B", "B"), ("(d)", None), ("two birds", "C"), ("C.", "C")])
def test_reference_letter(reference, letter):
    if letter is None:
        with pytest.raises(DataError, match=r"q.jsonl:3: field 'answer' '\(d\)' is neither an option letter \(A-D\)"):
            reference_letter(reference, CHOICES, "q.jsonl:3")
    else:
        assert reference_letter(reference, CHOICES, "q.jsonl:3") == letter


def test_choice_accuracy_counts_unparsed_answers():
    result = choice_accuracy(["B", "the answer is A", "no idea", "(C)"], ["B", "B", "A", "C"], [CHOICES] * 4,
                             ["x", "x", "y", "y"])
    assert (result["correct"], result["count"], result["unparsed"]) == (2, 4, 1)
    assert result["per_task"]["x"]["accuracy"] == 0.5


@pytest.mark.parametrize("a, b, length", [
    ("a b c d", "a c d", 3), ("a b", "c d", 0), ("", "a", 0), ("a b c b d a b", "b d c a b a", 4)])
def test_lcs_length(a, b, length):
    assert lcs_length(a.split(), b.split()) == length


def test_rouge_l_hand_computed():
    # LCS "the cat on the mat": 5 of 6 words each side
    assert rouge_l("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(
        {"precision": 5 / 6, "recall": 5 / 6, "f1": 5 / 6})
    # LCS "the gunman": P = 2/4, R = 2/6, F = 2PR / (P + R) = 0.4
    assert rouge_l("police killed the gunman", "the gunman was killed by police") == pytest.approx(
        {"precision": 0.5, "recall": 1 / 3, "f1": 0.4})
    assert rouge_l("", "anything") == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert mean_rouge_l(["a b", "x"], ["a b", "y"]) == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "count": 2})
