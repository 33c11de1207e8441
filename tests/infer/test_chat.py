"""`mmtune chat`: one-shot and interactive answers are the greedy answers of `generate` on the trained checkpoint,
images travel with the first turn only, and bad images or placeholder counts are named, not tracebacks."""
import io
from pathlib import Path

import pytest
from PIL import Image

from mmtune import finetune
from mmtune.cli import main
from mmtune.data.sample import Message
from mmtune.infer.generate import generate, load_checkpoint
from tests.helpers import EXAMPLE_IMAGE, VLM, tiny_config, write_image_shards, write_text_shards



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
    assert out == f"mmtune chat: empty line or Ctrl-D to quit\nyou> model> {answer1}\nyou> model> {answer2}\nyou> "


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
