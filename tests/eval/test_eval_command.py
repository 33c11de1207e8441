"""`mmtune eval` on a checkpoint trained here: its scores are the demo's and the trainer's numbers for the same
model and data, bad records are named or counted, and MT-bench dumps hold every turn."""
import json
from pathlib import Path

import pytest
from PIL import Image

from data_builders.synth.shapes import write_demo_shards
from mmtune import finetune
from mmtune.cli import main
from mmtune.data.sample import Message
from mmtune.demo import accuracy_callback, held_out_questions
from mmtune.eval.choice import choice_accuracy
from mmtune.eval.rouge import mean_rouge_l
from mmtune.infer.generate import generate, load_checkpoint
from tests.helpers import VLM, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval_run")
    shards = write_demo_shards(tmp / "data", 32, 12, image_size=32)
    finetune(tiny_config(tmp / "run", shards["train"], *VLM, "train.steps=3", f"data.eval={shards['eval']}"))
    return tmp / "run", shards["eval"]


class Log:
    def say(self, line):
        pass


def _eval(capsys, *argv):
    code = main(["eval", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_vqa_accuracy_is_what_the_demo_reports(capsys, trained, tmp_path):
    run, eval_shards = trained
    model, tokenizer, cfg = load_checkpoint(run)
    callback = accuracy_callback(held_out_questions(eval_shards, 100))
    callback.cfg = cfg
    expected = callback("end", step=3, model=model, tokenizer=tokenizer, log=Log())["accuracy"]
    code, out, err = _eval(capsys, "--ckpt", str(run), "--task", "vqa", "--data", *eval_shards, "--out",
                           str(tmp_path), "--max-new-tokens", "8")
    assert code == 0, err
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["accuracy"] == expected and result["count"] == 12
    assert f"| accuracy | {expected:.4f} |" in out
    assert set(result["per_task"]) == {json.loads(l)["task"] for l in (tmp_path / "predictions.jsonl").open()}
    assert (tmp_path / "results.md").read_text() in out


def test_loss_matches_the_trainers_eval_loss(capsys, trained, tmp_path):
    run, eval_shards = trained
    logged = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    final = [r["eval_loss"] for r in logged if "eval_loss" in r][-1]
    code, out, err = _eval(capsys, "--ckpt", str(run), "--task", "loss", "--data", *eval_shards, "--out",
                           str(tmp_path))
    assert code == 0, err
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["loss"] == pytest.approx(final, abs=1e-5)
    assert result["perplexity"] == pytest.approx(2.718281828 ** final, rel=1e-5)


def _questions(folder: Path) -> Path:
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "red.png")
    records = [
        {"id": "q1", "question": "What colour is it?", "image": "red.png", "choices": ["red", "blue"], "answer": "A"},
        {"id": "q2", "question": "Is it a square?", "choices": ["yes", "no"], "answer": "no", "task": "shape"},
        {"id": "q3", "messages": [{"role": "user", "content": "<image>\nDescribe it."}], "image": ["red.png"],
         "choices": ["a red square", "a blue circle", "nothing"], "answer": "(A)"},
    ]
    path = folder / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_choice_and_rouge_on_jsonl_score_the_generated_answers(capsys, trained, tmp_path):
    run = trained[0]
    questions = _questions(tmp_path)
    model, tokenizer, cfg = load_checkpoint(run)
    image = Image.open(tmp_path / "red.png").convert("RGB")
    prompts = [[Message("user", "<image>\nWhat colour is it?\nA. red\nB. blue\n"
                                "Answer with the option's letter from the given choices directly.")],
               [Message("user", "Is it a square?\nA. yes\nB. no\n"
                                "Answer with the option's letter from the given choices directly.")],
               [Message("user", "<image>\nDescribe it.\nA. a red square\nB. a blue circle\nC. nothing\n"
                                "Answer with the option's letter from the given choices directly.")]]
    answers = generate(model, tokenizer, cfg, prompts, [[image], [], [image]], max_new_tokens=16)
    expected = choice_accuracy(answers, ["A", "B", "A"], [["red", "blue"], ["yes", "no"], ["a red square",
                               "a blue circle", "nothing"]], ["", "shape", ""])
    code, _, err = _eval(capsys, "--ckpt", str(run), "--task", "choice", "--data", str(questions), "--out",
                         str(tmp_path / "choice"))
    assert code == 0, err
    result = json.loads((tmp_path / "choice" / "results.json").read_text())
    assert {k: result[k] for k in expected} == expected
    code, _, err = _eval(capsys, "--ckpt", str(run), "--task", "rouge", "--data", str(questions), "--out",
                         str(tmp_path / "rouge"), "--max-new-tokens", "16")
    assert code == 0, err
    result = json.loads((tmp_path / "rouge" / "results.json").read_text())
    assert result["rouge_l"] == pytest.approx(mean_rouge_l(answers, ["A", "no", "(A)"]))


def test_bad_records_are_named_or_counted(capsys, trained, tmp_path):
    run = trained[0]
    path = _questions(tmp_path)
    lines = path.read_text().splitlines()
    lines[1] = json.dumps({"id": "q2", "question": "Is it a square?"})  # no answer
    lines.append(json.dumps({"question": "What is it?", "image": "missing.png", "answer": "x"}))
    path.write_text("\n".join(lines) + "\n")
    code, _, err = _eval(capsys, "--ckpt", str(run), "--task", "vqa", "--data", str(path))
    assert code == 2 and err == f"error: {path}:2: field 'answer': missing\n"
    code, out, err = _eval(capsys, "--ckpt", str(run), "--task", "vqa", "--data", str(path), "--on-error", "skip")
    assert code == 0, err
    assert "| count | 2 |" in out and "| skipped_bad_record | 2 |" in out
    path.write_text(lines[3] + "\n")
    code, _, err = _eval(capsys, "--ckpt", str(run), "--task", "vqa", "--data", str(path))
    assert code == 2 and f"{path}:1: field 'image': no such file {tmp_path / 'missing.png'}" in err


def test_mtbench_dump_answers_both_turns(capsys, trained, tmp_path):
    run = trained[0]
    questions = [{"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Make it shorter."]},
                 {"question_id": 82, "category": "math", "turns": ["What is 2+2?", "And 3+3?"]}]
    path = tmp_path / "question.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    code, _, err = _eval(capsys, "--ckpt", str(run), "--task", "mtbench", "--data", str(path), "--out",
                         str(tmp_path / "answers"), "--model-id", "tiny", "--max-new-tokens", "5")
    assert code == 0, err
    records = [json.loads(l) for l in (tmp_path / "answers" / "tiny.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in records] == [81, 82]
    model, tokenizer, cfg = load_checkpoint(run)
    for q, r in zip(questions, records):
        assert r["model_id"] == "tiny" and r["answer_id"] and len(r["choices"]) == 1
        first, second = r["choices"][0]["turns"]
        history = [Message("user", q["turns"][0])]
        assert first == generate(model, tokenizer, cfg, [history], max_new_tokens=5)[0]
        history += [Message("assistant", first), Message("user", q["turns"][1])]
        assert second == generate(model, tokenizer, cfg, [history], max_new_tokens=5)[0]
