"""MT-bench generation dumps: FastChat's `question.jsonl` in, its model-answer JSONL out, for a judge to grade.

A question is `{"question_id", "category", "turns": [first, second]}`; every turn is answered with the previous
turns and answers in view, as FastChat's gen_model_answer.py does. An answer record is `{"question_id",
"answer_id", "model_id", "choices": [{"index": 0, "turns": [answer1, answer2]}], "tstamp"}`.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Callable

from mmtune.data.jsonl import json_object, numbered_lines
from mmtune.data.sample import Message
from mmtune.errors import DataError


def read_questions(path: Path) -> list[dict]:
    """Question records, each checked for a question_id and a non-empty list of string turns."""
    questions = []
    for where, line in numbered_lines(path, "--data"):
        q = json_object(line, where)
        if "question_id" not in q:
            raise DataError(f"{where}: field 'question_id': missing")
        turns = q.get("turns")
        if not (isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns)):
            raise DataError(f"{where}: field 'turns': expected a non-empty list of strings")
        questions.append(q)
    return questions


def answer_turns(questions: list[dict], answer: Callable[[list[list[Message]]], list[str]]) -> list[list[str]]:
    """Each question's answers, turn by turn: `answer` gets every conversation still open at that turn (a batch)."""
    answers: list[list[str]] = [[] for _ in questions]
    for turn in range(max(len(q["turns"]) for q in questions)):
        open_ = [i for i, q in enumerate(questions) if turn < len(q["turns"])]
        conversations = [_conversation(questions[i]["turns"][:turn + 1], answers[i]) for i in open_]
        for i, text in zip(open_, answer(conversations)):
            answers[i].append(text)
    return answers


def _conversation(turns: list[str], answers: list[str]) -> list[Message]:
    messages = []
    for i, turn in enumerate(turns):
        messages.append(Message("user", turn))
        if i < len(answers):
            messages.append(Message("assistant", answers[i]))
    return messages


def write_answers(path: Path, questions: list[dict], answers: list[list[str]], model_id: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for q, turns in zip(questions, answers):
            record = {"question_id": q["question_id"], "answer_id": uuid.uuid4().hex, "model_id": model_id,
                      "choices": [{"index": 0, "turns": turns}], "tstamp": time.time()}
            f.write(json.dumps(record) + "\n")
    return path
