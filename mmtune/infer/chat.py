"""`mmtune chat`: a conversation with a trained checkpoint (one-shot, or interactive with `/image PATH` and
`/reset`, answers printed as they are generated), and batch answers from a JSONL file of prompts. Every answer is
`generate`'s, so the model sees the prompt the way it was trained."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from mmtune.config import MEDIA_KINDS, RunConfig
from mmtune.data.media import decode_image
from mmtune.data.jsonl import json_object, numbered_lines
from mmtune.data.sample import Message
from mmtune.errors import UserError
from mmtune.infer.generate import generate, load_model

COMMANDS = "/image PATH (or /video, /points) attaches a file to the next turn, /reset starts a new conversation"


def read_media(model, kind: str, path: str | Path, where: str):
    """A media file for `kind` (images decoded, so a bad one fails now); `where` names the flag, command or line."""
    if kind not in model.media:
        what = "is text-only" if not model.media else f"has no {kind} encoder"
        raise UserError(f"{where}: the checkpoint {what} (its recipe has no model.media.{kind})")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{where}: no such file {path}")
    data = path.read_bytes()
    return decode_image(data, f"{where}: {path}") if kind == "image" else data


def place_media(text: str, counts: dict[str, int]) -> str:
    """Put one placeholder per new item of a kind in front of a turn that has none; otherwise the counts must match."""
    for kind, n in counts.items():
        placeholder = f"<{kind}>"
        if n and placeholder not in text:
            text = f"{placeholder}\n" * n + text
        if (found := text.count(placeholder)) != n:
            raise UserError(f"the prompt has {found} {placeholder} placeholder(s) for {n} {kind}(s); "
                            f"attach one {kind} per placeholder")
    return text


def _generate(model, tokenizer, cfg, conversations: list[list[Message]], media: list[dict], max_new_tokens: int,
              on_text: Callable[[str], None] | None = None):
    """Answers to conversations whose media are {kind: items} (decoded images, file bytes for the other kinds)."""
    images = [m["image"] for m in media]
    return generate(model, tokenizer, cfg, conversations, images if any(images) else None,
                    max_new_tokens=max_new_tokens, media=media, on_text=on_text)


class Chat:
    """One conversation: media attached go with the next turn, and every later turn is answered with them in view."""

    def __init__(self, model, tokenizer, cfg, max_new_tokens: int):
        self.model, self.tokenizer, self.cfg, self.max_new_tokens = model, tokenizer, cfg, max_new_tokens
        self.reset()

    def reset(self) -> None:
        self.history: list[Message] = []
        self.media = {kind: [] for kind in MEDIA_KINDS}
        self.pending = {kind: [] for kind in MEDIA_KINDS}

    def attach(self, kind: str, path: str | Path, where: str | None = None) -> None:
        """Attach a file to the next turn; `where` names the flag or command in errors (default: the kind)."""
        self.pending[kind].append(read_media(self.model, kind, path, where or kind))

    def ask(self, text: str, on_text: Callable[[str], None] | None = None) -> str:
        """The answer to one user turn, also handed piece by piece to `on_text` as it is generated (see
        `generate`); a turn that fails leaves the conversation (and what is attached) as it was."""
        turn = self.history + [Message("user", place_media(text, {k: len(v) for k, v in self.pending.items()}))]
        media = {kind: self.media[kind] + self.pending[kind] for kind in MEDIA_KINDS}
        answer = _generate(self.model, self.tokenizer, self.cfg, [turn], [media], self.max_new_tokens, on_text)[0]
        self.history, self.media = turn + [Message("assistant", answer)], media
        self.pending = {kind: [] for kind in MEDIA_KINDS}
        return answer


def open_chat(source: str | Path | RunConfig, max_new_tokens: int = 128) -> Chat:
    """A conversation with a checkpoint (or a run directory's newest), or, given a RunConfig, with the model its
    recipe builds before training (`mmtune chat` and `mmtune.load`)."""
    return Chat(*load_model(source), max_new_tokens)


def say(chat: Chat, text: str, prefix: str = "") -> None:
    """Print the answer to `text` as it is generated, after `prefix`; nothing is printed for a turn that fails
    before generation starts."""
    started = False

    def show(piece: str) -> None:
        nonlocal started
        if not started:
            print(prefix, end="")
            started = True
        print(piece, end="", flush=True)

    chat.ask(text, on_text=show)
    print()


def interactive(chat: Chat) -> None:
    """Read turns and commands from stdin until an empty line or end of input; a bad turn is reported, not fatal."""
    print(f"mmtune chat: {COMMANDS}; empty line or Ctrl-D to quit")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        try:
            if text.startswith("/"):
                command(chat, text)
            else:
                say(chat, text, "model> ")
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)


def command(chat: Chat, text: str) -> None:
    """`/reset`, or `/image PATH` (`/video`, `/points`): what is attached waits for the next turn."""
    name, _, arg = text[1:].partition(" ")
    if name == "reset" and not arg:
        chat.reset()
        print("(new conversation)")
    elif name in MEDIA_KINDS and arg.strip():
        chat.attach(name, arg.strip(), f"/{name}")
        print(f"({name} attached to the next turn)")
    else:
        raise UserError(f"unknown command {text!r}; {COMMANDS}")


def read_prompts(path: Path, model) -> list[tuple[dict, str, dict]]:
    """(record, prompt with placeholders, media) per non-empty line of a JSONL file of {"prompt", "images"?};
    image paths are relative to the file's folder. Everything is checked before the first answer."""
    prompts = []
    for where, line in numbered_lines(path, "--input"):
        record = json_object(line, where)
        if not isinstance(record.get("prompt"), str):
            raise UserError(f'{where}: expected {{"prompt": "...", "images": [paths]}} with a string prompt')
        if unknown := sorted(set(record) - {"prompt", "images"}):
            raise UserError(f"{where}: unknown key(s) {unknown} (known: prompt, images)")
        paths = record.get("images", [])
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise UserError(f"{where}: images must be a list of paths, got {paths!r}")
        media = {kind: [] for kind in MEDIA_KINDS}
        media["image"] = [read_media(model, "image", path.parent / p, f"{where}: images[{i}]")
                          for i, p in enumerate(paths)]
        try:
            text = place_media(record["prompt"], {kind: len(items) for kind, items in media.items()})
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        prompts.append((record, text, media))
    return prompts


def answer_file(chat: Chat, source: Path, target: Path, batch_size: int) -> int:
    """Each input record with its "answer" added, in input order, generated `batch_size` prompts at a time (each
    prompt alone, outside the chat's conversation)."""
    prompts = read_prompts(source, chat.model)
    with open(target, "w") as out:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            answers = _generate(chat.model, chat.tokenizer, chat.cfg, [[Message("user", text)] for _, text, _ in batch],
                                [media for _, _, media in batch], chat.max_new_tokens)
            for (record, _, _), answer in zip(batch, answers):
                out.write(json.dumps({**record, "answer": answer}) + "\n")
    return len(prompts)
