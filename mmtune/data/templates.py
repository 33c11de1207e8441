"""Chat templates: messages -> token ids and labels whose loss mask comes from how the ids were built.

Labels are -100 everywhere except assistant content and the end-of-turn token(s) closing it; they are not shifted
(the loss shifts once). Built-in templates are role -> (prefix, suffix) tables rendered segment by segment, each
segment tokenised on its own with its own supervised flag, so a mask never depends on re-finding turns in a
rendered string. The "tokenizer" template uses the tokenizer's own chat template: it finds assistant spans by
rendering prefixes of the conversation and checks that the labelled tokens decode back to exactly those spans.
Placeholders (`<image>`, `<video>`, `<points>`) become runs of MEDIA_TOKEN_IDS that the model replaces with encoder
features; they count toward max_len like any token.

Special strings in the tables: `<s>` means "begin a sequence" and becomes the tokenizer's bos token when the
tokenizer adds one itself (Llama, Mistral), else nothing (GPT-2, Qwen, SmolLM2, whose declared bos `<|im_start|>`
is never added). A template's end-of-turn string (`</s>`, `<|im_end|>`) is kept where the tokenizer has it as one
token, else replaced everywhere in the table by the tokenizer's eos token: vicuna_v1 on SmolLM2 ends turns with
`<|im_end|>`, chatml on Llama with `</s>`. The end of an assistant turn is always one real token id.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Protocol, Sequence

from mmtune.data.sample import PLACEHOLDER_RE, PLACEHOLDERS, ROLES, Message
from mmtune.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase as Tokenizer

MEDIA_TOKEN_IDS = {"image": -200, "video": -201, "points": -202}
"""Sentinel ids the model replaces with encoder features; never valid vocabulary ids."""
_KIND_OF = {v: k for k, v in MEDIA_TOKEN_IDS.items()}
IGNORE = -100
BOS = "<s>"

Piece = tuple[str | list[int], bool]
"""Text to tokenise (or ready ids: media runs, end tokens) and whether its tokens are supervised."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    """IGNORE (-100) except supervised tokens, which equal input_ids there; not shifted."""
    truncated: bool = False
    """Cut to max_len. A media run is never split: a cut inside one moves back to where that run starts."""


def has_target(enc: Encoded) -> bool:
    """Whether any token is supervised; a sample truncated before its answer has none and must be counted."""
    return any(label != IGNORE for label in enc.labels)


class Template(Protocol):
    """What a registered template does for one conversation; `where` prefixes error messages."""

    def encode(self, messages: Sequence[Message], tokenizer: Tokenizer, system_prompt: str | None,
               media_tokens: dict[str, int] | None, where: str) -> tuple[list[int], list[int]]: ...

    def render_prompt(self, messages: Sequence[Message], tokenizer: Tokenizer, system_prompt: str | None,
                      media_tokens: dict[str, int] | None, where: str) -> list[int]: ...

    def stop_token_ids(self, tokenizer: Tokenizer) -> list[int]: ...


@dataclass(frozen=True)
class TableTemplate:
    """A fixed format: text around each message, tokenised piece by piece (torchtune's prompt-template idea)."""
    name: str
    roles: dict[str, tuple[str, str]]
    """role -> (prefix, suffix). The assistant prefix is the generation prompt; the assistant suffix up to and
    including `end` is supervised, the rest of it is not. Without a "system" entry, system prompts are ignored."""
    end: str
    """The string that ends an assistant turn (see the module docstring for tokenizers that lack it)."""
    start: str = ""
    """Text before the first message."""
    default_system: str | None = None
    system_in_first_user: bool = False
    """llama2: the system block sits inside the first user turn, right after its prefix."""

    def encode(self, messages, tokenizer, system_prompt, media_tokens, where) -> tuple[list[int], list[int]]:
        return _tokenize_pieces(self._pieces(messages, tokenizer, system_prompt, media_tokens, where), tokenizer)

    def render_prompt(self, messages, tokenizer, system_prompt, media_tokens, where) -> list[int]:
        pieces = self._pieces(messages, tokenizer, system_prompt, media_tokens, where, generation_prompt=True)
        return _tokenize_pieces(pieces, tokenizer)[0]

    def stop_token_ids(self, tokenizer) -> list[int]:
        return _unique([self.resolve(tokenizer)[3], tokenizer.eos_token_id])

    def resolve(self, tokenizer) -> tuple[dict[str, tuple[str, str]], str, str, int]:
        """(roles, start) with the special strings replaced for this tokenizer, then the end text and its id."""
        end, end_id = self.end, _single_id(tokenizer, self.end)
        if end_id is None:
            end = tokenizer.eos_token
            end_id = _single_id(tokenizer, end) if end else None
            if end_id is None:
                raise ConfigError(f"template {self.name}: the tokenizer has no single token for {self.end!r} "
                                  f"and no eos token to end assistant turns with")
        bos = tokenizer.bos_token if _adds_bos(tokenizer) else ""

        def sub(text: str) -> str:
            return text.replace(BOS, bos).replace(self.end, end)

        return {role: (sub(p), sub(s)) for role, (p, s) in self.roles.items()}, sub(self.start), end, end_id

    def _pieces(self, messages, tokenizer, system_prompt, media_tokens, where,
                generation_prompt: bool = False) -> list[Piece]:
        roles, start, end, end_id = self.resolve(tokenizer)
        out: list[Piece] = [(start, False)]
        held: list[Piece] = []  # llama2's system block, waiting for the first user turn
        for field, m in _with_system(messages, system_prompt, self.default_system, where):
            if held and m.role != "user":
                raise DataError(f"{where}{field}: template {self.name} puts the system prompt inside the first "
                                f"user turn, but a {m.role} turn comes first")
            if m.role not in roles:
                continue
            prefix, suffix = roles[m.role]
            body = _content(m, field, media_tokens, where)
            if m.role == "assistant":
                head, _, tail = suffix.partition(end)
                out += [(prefix, False), *body, (head, True), ([end_id], True), (tail, False)]
            elif m.role == "system" and self.system_in_first_user:
                held = [(prefix, False), *body, (suffix, False)]
            else:
                out += [(prefix, False), *held, *body, (suffix, False)]
                held = []
        if held:
            raise DataError(f"{where}messages: template {self.name} needs a user turn after the system prompt")
        return out + [(roles["assistant"][0], False)] if generation_prompt else out


@dataclass(frozen=True)
class TokenizerTemplate:
    """The tokenizer's own chat_template: ids equal tokenizer.apply_chat_template(conversation) (without media)."""
    name: str = "tokenizer"

    def encode(self, messages, tokenizer, system_prompt, media_tokens, where) -> tuple[list[int], list[int]]:
        conv = self._conversation(messages, tokenizer, system_prompt, media_tokens, where)
        text = _render(tokenizer, conv, False, where)
        spans = [self._span(tokenizer, conv, i, text, where) for i, m in enumerate(conv) if m["role"] == "assistant"]
        ids, offsets = _tokenize_rendered(tokenizer, text, conv, media_tokens, where)
        labels = [t if b > a and any(s <= a and b <= e for s, e in spans) else IGNORE
                  for t, (a, b) in zip(ids, offsets)]
        for s, e in spans:
            inside = [j for j, (a, b) in enumerate(offsets) if labels[j] != IGNORE and s <= a and b <= e]
            got = _decode_run(tokenizer, ids, inside)
            if got != text[s:e]:
                raise ConfigError(f"{where}template tokenizer: assistant text {text[s:e]!r} is labelled as tokens "
                                  f"that decode to {got!r}; a token crosses the boundary between the generation "
                                  f"prompt and the answer, so this chat template cannot be used for training")
        return ids, labels

    def render_prompt(self, messages, tokenizer, system_prompt, media_tokens, where) -> list[int]:
        conv = self._conversation(messages, tokenizer, system_prompt, media_tokens, where)
        return _tokenize_rendered(tokenizer, _render(tokenizer, conv, True, where), conv, media_tokens, where)[0]

    def stop_token_ids(self, tokenizer) -> list[int]:
        conv = self._conversation([Message("user", "Hi"), Message("assistant", "Hello")], tokenizer, None, None, "")
        prompt = _render(tokenizer, conv[:1], True, "")
        turn = _render(tokenizer, conv, False, "")[len(prompt):]
        end = _turn_end(turn, "Hello", tokenizer, "")[1]
        return _unique([tokenizer.convert_tokens_to_ids(end), tokenizer.eos_token_id])

    def _conversation(self, messages, tokenizer, system_prompt, media_tokens, where) -> list[dict[str, str]]:
        """Messages as the dicts apply_chat_template takes, after checking the placeholders."""
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("template tokenizer: this tokenizer has no chat_template; pick one of "
                              f"{', '.join(n for n in TEMPLATES if n != self.name)}")
        pairs = _with_system(messages, system_prompt, None, where)
        for field, m in pairs:
            _content(m, field, media_tokens, where)  # raises on a bad placeholder
        return [{"role": m.role, "content": m.content} for _, m in pairs]

    def _span(self, tokenizer, conv, i, text, where) -> tuple[int, int]:
        """Character span of assistant turn `i` in `text`: from the end of its generation prompt through its end
        token. Each render must extend the previous one, or the spans would be guesses."""
        if i == 0:
            raise DataError(f"{where}messages[0]: the tokenizer's chat template needs a turn before the first "
                            f"assistant turn")
        prompt = _render(tokenizer, conv[:i], True, where)
        turn = _render(tokenizer, conv[:i + 1], False, where)
        if not (turn.startswith(prompt) and text.startswith(turn)):
            raise ConfigError(f"{where}template tokenizer: the chat template is not prefix-stable (rendering "
                              f"messages up to turn {i} with the generation prompt, then through turn {i}, then all, "
                              f"does not extend each previous text), so this chat template cannot be used for "
                              f"training; pick a built-in template")
        return len(prompt), len(prompt) + _turn_end(turn[len(prompt):], conv[i]["content"], tokenizer, where)[0]


TEMPLATES: dict[str, Template] = {
    # LLaVA stage 1: "<image>" + caption + end. LLaVA ends with "\n"; eos is one token and lets generation stop.
    "plain": TableTemplate("plain", {"user": ("", ""), "assistant": ("", "</s>")}, end="</s>", start=BOS),
    # LLaVA conv_vicuna_v1: "{system} USER: {user} ASSISTANT: {assistant}</s>USER: ..."
    "vicuna_v1": TableTemplate(
        "vicuna_v1",
        {"system": ("", " "), "user": ("USER: ", " "), "assistant": ("ASSISTANT: ", "</s>")},
        end="</s>", start=BOS,
        default_system="A chat between a curious user and an artificial intelligence assistant. "
                       "The assistant gives helpful, detailed, and polite answers to the user's questions."),
    # Llama-2-chat: "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ..."
    "llama2": TableTemplate(
        "llama2",
        {"system": ("<<SYS>>\n", "\n<</SYS>>\n\n"), "user": (BOS + "[INST] ", " [/INST]"), "assistant": (" ", " </s>")},
        end="</s>", system_in_first_user=True),
    # No default system prompt: no system block unless one is given (the "tokenizer" template keeps a model's own).
    "chatml": TableTemplate(
        "chatml",
        {role: (f"<|im_start|>{role}\n", "<|im_end|>\n") for role in ROLES},
        end="<|im_end|>"),
    "tokenizer": TokenizerTemplate(),
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ConfigError(f"unknown template {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def encode(messages: Sequence[Message], tokenizer: Tokenizer, template: str, *, system_prompt: str | None = None,
           media_tokens: dict[str, int] | None = None, max_len: int | None = None, where: str = "") -> Encoded:
    """Token ids and labels for training a causal LM on every assistant turn.

    The system prompt is the conversation's own system message if it has one, else `system_prompt`, else the
    template's default. `media_tokens[kind]` is the number of positions one media item of that kind takes.
    Raises DataError (prefixed by `where`, e.g. the shard and key) on a placeholder in an assistant turn or one
    with no media_tokens entry. Cuts once from the right to `max_len`; the caller counts samples left without
    any supervised token (`has_target`).
    """
    ids, labels = get_template(template).encode(messages, tokenizer, system_prompt, media_tokens, _prefix(where))
    return _truncate(Encoded(ids, labels), max_len, media_tokens)


def render_prompt(messages: Sequence[Message], tokenizer: Tokenizer, template: str, *,
                  system_prompt: str | None = None, media_tokens: dict[str, int] | None = None,
                  where: str = "") -> list[int]:
    """Ids to generate from: all messages, then the assistant prefix. Training saw exactly these ids before the
    answer: encode(messages + [answer]) starts with them."""
    return get_template(template).render_prompt(messages, tokenizer, system_prompt, media_tokens, _prefix(where))


def encode_seq2seq(messages: Sequence[Message], tokenizer: Tokenizer, template: str, *,
                   system_prompt: str | None = None, media_tokens: dict[str, int] | None = None,
                   max_len: int | None = None, where: str = "") -> Encoded:
    """For encoder-decoder LLMs (T5): input_ids = everything before the last assistant turn as a generation prompt;
    labels = that turn's content + eos, all supervised, as the decoder's own sequence (not aligned with input_ids).
    Earlier assistant turns are context only. max_len cuts each side from the right."""
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=None)
    if last is None:
        raise DataError(f"{_prefix(where)}messages: no assistant turn to learn from")
    answer = messages[last]
    if tokenizer.eos_token_id is None:
        raise ConfigError("encode_seq2seq: the tokenizer has no eos token to end the target with")
    _content(answer, f"messages[{last}].content", media_tokens, _prefix(where))
    prompt = _truncate(Encoded(render_prompt(messages[:last], tokenizer, template, system_prompt=system_prompt,
                                             media_tokens=media_tokens, where=where), []), max_len, media_tokens)
    labels = tokenizer.encode(answer.content, add_special_tokens=False) + [tokenizer.eos_token_id]
    cut = labels[:max_len] if max_len is not None else labels
    return Encoded(prompt.input_ids, cut, truncated=prompt.truncated or len(cut) < len(labels))


def stop_token_ids(tokenizer: Tokenizer, template: str) -> list[int]:
    """Ids that end an assistant turn (the template's end token, then eos), for generation."""
    return get_template(template).stop_token_ids(tokenizer)


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _unique(ids: list[int | None]) -> list[int]:
    return list(dict.fromkeys(i for i in ids if i is not None))


def _single_id(tokenizer, text: str) -> int | None:
    """The id of `text` if it is one token of this tokenizer (decoding back to it: an unknown word is not)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 and tokenizer.decode(ids) == text else None


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its bos token in front of plain text by itself (asked, not assumed)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer.encode("a")[:1] == [bos]


def _with_system(messages, system_prompt, default, where) -> list[tuple[str, Message]]:
    """(field name for errors, message) pairs, the system prompt resolved: the conversation's own system message,
    else `system_prompt`, else `default`."""
    pairs = [(f"messages[{i}].content", m) for i, m in enumerate(messages)]
    for field, m in pairs:
        if m.role not in ROLES:
            raise DataError(f"{where}{field.replace('content', 'role')}: unknown role {m.role!r}, "
                            f"expected one of {ROLES}")
    if messages and messages[0].role == "system":
        return pairs
    text = system_prompt if system_prompt is not None else default
    return ([("system_prompt", Message("system", text))] if text else []) + pairs


def _content(m: Message, field: str, media_tokens, where) -> list[Piece]:
    """A message's content as pieces, each placeholder replaced by its media run (never supervised)."""
    supervised = m.role == "assistant"
    pieces: list[Piece] = []
    pos = 0
    for match in PLACEHOLDER_RE.finditer(m.content):
        if supervised:
            raise DataError(f"{where}{field}: placeholder {match.group()} in an assistant turn; media can only be "
                            f"model input")
        run = _media_run(match.group(), media_tokens, field, where)
        pieces += [(m.content[pos:match.start()], False), (run, False)]
        pos = match.end()
    return pieces + [(m.content[pos:], supervised)]


def _media_run(placeholder: str, media_tokens, field: str, where: str) -> list[int]:
    kind = PLACEHOLDERS[placeholder]
    count = (media_tokens or {}).get(kind)
    if count is None:
        raise DataError(f"{where}{field}: placeholder {placeholder} but the model takes no {kind} input "
                        f"(media_tokens={media_tokens})")
    if count < 1:
        raise ConfigError(f"media_tokens[{kind!r}] must be >= 1, got {count}")
    return [MEDIA_TOKEN_IDS[kind]] * count


def _tokenize_pieces(pieces: list[Piece], tokenizer) -> tuple[list[int], list[int]]:
    """Tokenise each run of neighbouring text pieces with the same flag as one string; ids pass through."""
    ids: list[int] = []
    labels: list[int] = []
    for (is_text, supervised), group in groupby(pieces, key=lambda p: (isinstance(p[0], str), p[1])):
        items = [item for item, _ in group]
        new = (tokenizer.encode("".join(items), add_special_tokens=False) if is_text
               else [t for run in items for t in run])
        ids += new
        labels += new if supervised else [IGNORE] * len(new)
    return ids, labels


def _render(tokenizer, conv: list[dict[str, str]], generation_prompt: bool, where: str) -> str:
    from jinja2 import TemplateError  # transformers' optional chat-template dependency; only this template needs it

    try:
        return tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as e:
        raise DataError(f"{where}messages: the tokenizer's chat template refused this conversation: {e}") from None


def _turn_end(turn: str, content: str, tokenizer, where: str) -> tuple[int, str]:
    """(end offset, end token) of an assistant turn rendered after its generation prompt: the first special token
    after the content closes it; whatever follows (a newline, say) is not supervised."""
    at = turn.find(content)
    if at < 0:
        raise ConfigError(f"{where}template tokenizer: the chat template rewrites assistant content, so assistant "
                          f"turns cannot be supervised verbatim; pick a built-in template")
    specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    hits = [(turn.find(s, at + len(content)), -len(s), s) for s in specials]
    hits = [h for h in hits if h[0] >= 0]
    if not hits:
        raise ConfigError(f"{where}template tokenizer: the chat template ends an assistant turn with no special "
                          f"token, so generation could not learn to stop; pick a built-in template")
    pos, _, token = min(hits)  # the earliest; the longest where two start together
    return pos + len(token), token


def _tokenize_rendered(tokenizer, text: str, conv, media_tokens, where) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character offsets of a rendered chat: one tokenizer call per stretch between placeholders (one in
    all without media, as apply_chat_template makes), each placeholder replaced by its media run."""
    expected = sum(len(PLACEHOLDER_RE.findall(m["content"])) for m in conv)
    found = list(PLACEHOLDER_RE.finditer(text))
    if len(found) != expected:
        raise DataError(f"{where}messages: the chat template output holds {len(found)} media placeholders, the "
                        f"messages {expected}")
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    pos = 0
    for match in [*found, None]:
        stop = match.start() if match else len(text)
        enc = tokenizer(text[pos:stop], add_special_tokens=False, return_offsets_mapping=True)
        ids += enc["input_ids"]
        offsets += [(pos + a, pos + b) for a, b in enc["offset_mapping"]]
        if match:
            run = _media_run(match.group(), media_tokens, "messages", where)
            ids += run
            offsets += [match.span()] * len(run)
            pos = match.end()
    return ids, offsets


def _decode_run(tokenizer, ids: list[int], positions: list[int]) -> str:
    """Text of ids at `positions`, decoded after the token before them: SentencePiece drops a leading space at the
    start of a decode, which would hide a real difference or invent one."""
    if not positions:
        return ""
    first = positions[0]
    context = ids[first - 1:first] if first > 0 and ids[first - 1] >= 0 else []
    opts = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
    return tokenizer.decode(context + [ids[j] for j in positions], **opts)[len(tokenizer.decode(context, **opts)):]


def _truncate(enc: Encoded, max_len: int | None, media_tokens: dict[str, int] | None) -> Encoded:
    """Cut from the right to max_len, once; a cut inside a media run moves back to that run's start."""
    if max_len is None or len(enc.input_ids) <= max_len:
        return enc
    if max_len <= 0:
        raise ConfigError(f"max_len must be > 0, got {max_len}")
    cut, sentinel = max_len, enc.input_ids[max_len]
    if sentinel < 0:  # runs of one kind may sit back to back: count whole runs from the block's start
        start = cut
        while start > 0 and enc.input_ids[start - 1] == sentinel:
            start -= 1
        run = media_tokens[_KIND_OF[sentinel]]
        cut = start + (cut - start) // run * run
    return Encoded(enc.input_ids[:cut], enc.labels[:cut], truncated=True)
