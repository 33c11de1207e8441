"""`mmtune chat`: one-shot, interactive and batch (--input/--output) answers are the greedy answers of `generate` on
the trained checkpoint, printed as they are generated, images go with the turn they are attached to (--image: the
first; /image PATH: the next), /reset starts over, and bad images, placeholder counts, commands or input lines are named, not tracebacks."""
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmtune import finetune
from mmtune.cli import main
from mmtune.data.sample import Message
from mmtune.infer.chat import Chat, interactive
from mmtune.infer.generate import generate, load_checkpoint
from tests.helpers import EXAMPLE_IMAGE, VLM, tiny_config, write_image_shards, write_text_shards

BANNER = ("mmtune chat: /image PATH (or /video, /points) attaches a file to the next turn, /reset starts a new "
          "conversation; empty line or Ctrl-D to quit\n")


@pytest.fixture(scope="module")
def vlm_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("chat_vlm")
    finetune(tiny_config(tmp / "run", write_image_shards(tmp / "d", 16), *VLM, "train.steps=2"))
    return tmp / "run"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("chat_text")
    finetune(tiny_config(tmp / "run", write_text_shards(tmp / "d", 16), "train.steps=1"))
    return tmp / "run"


def _chat(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["chat", *argv, "--max-new-tokens", "6"])
    out, err = capsys.readouterr()
    return code, out, err


def test_one_shot_with_an_image_prints_the_greedy_answer(capsys, vlm_run):
    code, out, err = _chat(capsys, "--ckpt", str(vlm_run), "--image", str(EXAMPLE_IMAGE), "--prompt", "What is this?")
    assert code == 0, err
    model, tokenizer, cfg = load_checkpoint(vlm_run)
    image = Image.open(EXAMPLE_IMAGE).convert("RGB")
    expected = generate(model, tokenizer, cfg, [[Message("user", "<image>\nWhat is this?")]], [[image]],
                        max_new_tokens=6)[0]
    assert out == expected + "\n"


def test_interactive_session_keeps_the_history_and_the_first_images(capsys, monkeypatch, vlm_run):
    monkeypatch.setattr("sys.stdin", io.StringIO("Describe it.\nAnd again?\n\n"))
    code, out, err = _chat(capsys, "--ckpt", str(vlm_run), "--image", str(EXAMPLE_IMAGE))
    assert code == 0, err
    model, tokenizer, cfg = load_checkpoint(vlm_run)
    image = Image.open(EXAMPLE_IMAGE).convert("RGB")
    first = [Message("user", "<image>\nDescribe it.")]
    answer1 = generate(model, tokenizer, cfg, [first], [[image]], max_new_tokens=6)[0]
    second = first + [Message("assistant", answer1), Message("user", "And again?")]
    answer2 = generate(model, tokenizer, cfg, [second], [[image]], max_new_tokens=6)[0]
    assert out == f"{BANNER}you> model> {answer1}\nyou> model> {answer2}\nyou> "


class _Writes(io.StringIO):
    """stdout that records each write, to see an answer arrive in pieces."""

    def __init__(self):
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        if text:
            self.writes.append(text)
        return super().write(text)


def test_interactive_answers_are_printed_as_they_are_generated(monkeypatch, vlm):
    monkeypatch.setattr("sys.stdin", io.StringIO("Describe it.\n"))
    monkeypatch.setattr("sys.stdout", stdout := _Writes())
    interactive(Chat(*vlm, max_new_tokens=12))
    answer = generate(*vlm, [[Message("user", "Describe it.")]], max_new_tokens=12)[0]
    start = stdout.writes.index("model> ") + 1
    pieces = stdout.writes[start:stdout.writes.index("\n", start)]
    assert "".join(pieces) == answer and len(pieces) > 1, pieces


def test_a_bad_turn_in_a_session_is_reported_and_the_session_goes_on(capsys, monkeypatch, vlm_run):
    monkeypatch.setattr("sys.stdin", io.StringIO("<image><image> two?\none\n"))
    code, out, err = _chat(capsys, "--ckpt", str(vlm_run), "--image", str(EXAMPLE_IMAGE))
    assert code == 0
    assert "2 <image> placeholder(s) for 1 image(s)" in err
    assert out.count("model> ") == 1


def _fails(capsys, message: str, *argv: str) -> None:
    code, _, err = _chat(capsys, *argv)
    assert code == 2 and "Traceback" not in err
    assert message in err, err


def test_missing_image_is_named(capsys, vlm_run, tmp_path):
    _fails(capsys, f"--image: no such file {tmp_path / 'nope.png'}",
           "--ckpt", str(vlm_run), "--image", str(tmp_path / "nope.png"), "--prompt", "hi")


def test_corrupt_image_is_named(capsys, vlm_run, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(EXAMPLE_IMAGE.read_bytes()[:300])
    _fails(capsys, f"{bad}: cannot decode image", "--ckpt", str(vlm_run), "--image", str(bad), "--prompt", "hi")


def test_placeholders_must_match_the_images(capsys, vlm_run):
    _fails(capsys, "2 <image> placeholder(s) for 1 image(s)",
           "--ckpt", str(vlm_run), "--image", str(EXAMPLE_IMAGE), "--prompt", "<image> and <image>?")
    _fails(capsys, "1 <image> placeholder(s) for 0 image(s)", "--ckpt", str(vlm_run), "--prompt", "<image> what?")


def test_an_image_for_a_text_only_checkpoint_is_refused(capsys, text_run):
    _fails(capsys, "is text-only", "--ckpt", str(text_run), "--image", str(EXAMPLE_IMAGE), "--prompt", "hi")


def test_text_only_one_shot(capsys, text_run):
    code, out, err = _chat(capsys, "--ckpt", str(text_run), "--prompt", "alpha beta")
    assert code == 0, err
    model, tokenizer, cfg = load_checkpoint(text_run)
    assert out == generate(model, tokenizer, cfg, [[Message("user", "alpha beta")]], max_new_tokens=6)[0] + "\n"


def _answers(run, conversations, images=None):
    model, tokenizer, cfg = load_checkpoint(run)
    return [generate(model, tokenizer, cfg, [conv], [imgs] if imgs else None, max_new_tokens=6)[0]
            for conv, imgs in zip(conversations, images or [None] * len(conversations))]


def test_image_command_attaches_to_the_next_turn(capsys, monkeypatch, vlm_run):
    monkeypatch.setattr("sys.stdin", io.StringIO(f"Hello.\n/image {EXAMPLE_IMAGE}\nWhat is this?\n"))
    code, out, err = _chat(capsys, "--ckpt", str(vlm_run))
    assert code == 0, err
    image = Image.open(EXAMPLE_IMAGE).convert("RGB")
    first = [Message("user", "Hello.")]
    [answer1] = _answers(vlm_run, [first])
    second = first + [Message("assistant", answer1), Message("user", "<image>\nWhat is this?")]
    [answer2] = _answers(vlm_run, [second], [[image]])
    assert out == (f"{BANNER}you> model> {answer1}\nyou> (image attached to the next turn)\n"
                   f"you> model> {answer2}\nyou> ")


def test_reset_starts_a_new_conversation_without_the_images(capsys, monkeypatch, vlm_run):
    monkeypatch.setattr("sys.stdin", io.StringIO("Describe it.\n/reset\nDescribe it.\n"))
    code, out, err = _chat(capsys, "--ckpt", str(vlm_run), "--image", str(EXAMPLE_IMAGE))
    assert code == 0, err
    image = Image.open(EXAMPLE_IMAGE).convert("RGB")
    [with_image] = _answers(vlm_run, [[Message("user", "<image>\nDescribe it.")]], [[image]])
    [fresh] = _answers(vlm_run, [[Message("user", "Describe it.")]])
    assert out == f"{BANNER}you> model> {with_image}\nyou> (new conversation)\nyou> model> {fresh}\nyou> "


def test_bad_commands_are_reported_and_the_session_goes_on(capsys, monkeypatch, text_run, tmp_path):
    monkeypatch.setattr("sys.stdin", io.StringIO(f"/imag x\n/image {EXAMPLE_IMAGE}\nhi\n"))
    code, out, err = _chat(capsys, "--ckpt", str(text_run))
    assert code == 0
    assert "unknown command '/imag x'" in err and "/image: the checkpoint is text-only" in err
    assert out.count("model> ") == 1


def test_batch_answers_every_line_in_order(capsys, vlm_run, tmp_path):
    shutil.copy(EXAMPLE_IMAGE, tmp_path / "photo.jpg")
    records = [{"prompt": "What is this?", "images": ["photo.jpg"]}, {"prompt": "alpha beta"},
               {"prompt": "Compare <image> and <image>.", "images": ["photo.jpg", "photo.jpg"]}]
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n\n"
                                            + json.dumps(records[2]) + "\n")
    code, out, err = _chat(capsys, "--ckpt", str(vlm_run), "--input", str(tmp_path / "prompts.jsonl"),
                           "--output", str(tmp_path / "answers.jsonl"), "--batch-size", "2")
    assert code == 0, err
    assert out == f"3 answers: {tmp_path / 'answers.jsonl'}\n"
    image = Image.open(EXAMPLE_IMAGE).convert("RGB")
    expected = _answers(vlm_run, [[Message("user", "<image>\nWhat is this?")], [Message("user", "alpha beta")],
                                  [Message("user", "Compare <image> and <image>.")]], [[image], None, [image, image]])
    written = [json.loads(l) for l in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert written == [{**r, "answer": a} for r, a in zip(records, expected)]


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('{"images": []}', "with a string prompt"),
    ('{"prompt": "hi", "image": ["a.jpg"]}', "unknown key(s) ['image'] (known: prompt, images)"),
    ('{"prompt": "hi", "images": "a.jpg"}', "images must be a list of paths"),
    ('{"prompt": "hi", "images": ["nope.jpg"]}', "images[0]: no such file"),
    ('{"prompt": "<image> <image>", "images": ["photo.jpg"]}', "2 <image> placeholder(s) for 1 image(s)"),
])
def test_a_bad_input_line_is_named(capsys, vlm_run, tmp_path, line, message):
    shutil.copy(EXAMPLE_IMAGE, tmp_path / "photo.jpg")
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "fine"}\n' + line + "\n")
    code, _, err = _chat(capsys, "--ckpt", str(vlm_run), "--input", str(source), "--output", str(tmp_path / "a"))
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"error: {source}:2: ") and message in err, err
    assert not (tmp_path / "a").exists()


def test_batch_flags_are_checked(capsys, text_run, tmp_path):
    _fails(capsys, "--input and --output go together", "--ckpt", str(text_run), "--input", str(tmp_path / "p"))
    _fails(capsys, "not with --prompt", "--ckpt", str(text_run), "--input", "p", "--output", "a", "--prompt", "hi")
    _fails(capsys, "--input: no such file", "--ckpt", str(text_run), "--input", str(tmp_path / "p"),
           "--output", str(tmp_path / "a"))
