"""Chat templates: messages -> token ids and labels whose loss mask comes from how the ids were built.

Labels are -100 everywhere except assistant content and the end-of-turn token(s) closing it; they are not shifted
(the loss shifts once). Built-in templates are role -> (prefix, suffix) tables rendered segment by segment, each
segment tokenised on its own with its own supervised flag, so a mask never depends on re-finding turns in a
rendered string. The "tokenizer" template uses the tokenizer's own chat template: it finds assistant spans by
rendering prefixes of the conversation and checks that the labelled tokens decode back to exactly those spans.
Where a reply's first token would merge with the end of its generation prompt (a reply starting with "\n\n" after
a prompt ending in "\n"), the ids are cut between the two, as generation sees them. A failure that plain-text
messages of the same roles also meet is the chat template's (ConfigError); else it is the sample's (DataError, so
`data.on_error=skip` counts it as `skipped_bad_sample`).
Placeholders (`<image>`, `<video>`, `<points>`) become runs of MEDIA_TOKEN_IDS that the model replaces with encoder
features; they count toward max_len like any token.

Special strings in the tables: `<s>` means "begin a sequence" and becomes the tokenizer's bos token when the
tokenizer adds one itself (Llama, Mistral), else nothing (GPT-2, Qwen, SmolLM2, whose declared bos `<|im_start|>`
is never added). A template's end-of-turn string (`</s>`, `<|im_end|>`) is kept where the tokenizer has it as one
token, else replaced everywhere in the table by the tokenizer's eos token: vicuna_v1 on SmolLM2 ends turns with
`<|im_end|>`, chatml on Llama with `</s>`. The end of an assistant turn is always one real token id.

Message content is plain text. Special tokens are parsed only in the template's own text; special-token text in
content (`<|im_end|>`, `</s>`, `[INST]`) is tokenised as the characters it is, so a reply cannot end its turn early
nor a user message forge a role header, in training and in `render_prompt` alike. Where that cannot be done exactly
(the tokenizer tokenises the surrounding stretch differently alone than in place, or the chat template changes
content so that its place in the rendered text is unknown), the sample is refused with a DataError naming the
field and the token.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Iterable, NamedTuple, Protocol, Sequence

from mmtune.config import check_choice
from mmtune.data.sample import PLACEHOLDER_RE, PLACEHOLDERS, ROLES, Message
from mmtune.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase as Tokenizer

MEDIA_TOKEN_IDS = {"image": -200, "video": -201, "points": -202}
"""Sentinel ids the model replaces with encoder features; never valid vocabulary ids."""
_KIND_OF = {v: k for k, v in MEDIA_TOKEN_IDS.items()}
IGNORE = -100
BOS = "<s>"


class Piece(NamedTuple):
    item: str | list[int]
    """Text to tokenise, or ready ids (media runs, end tokens)."""
    supervised: bool
    field: str | None = None
    """The message field the text comes from (plain text, never special tokens); None for the template's text."""


Span = tuple[int, int, str]
"""Characters [start, end) of a text that come from one message, and that message's field for errors."""


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
        return _tokenize_pieces(self._pieces(messages, tokenizer, system_prompt, media_tokens, where), tokenizer,
                                where)

    def render_prompt(self, messages, tokenizer, system_prompt, media_tokens, where) -> list[int]:
        pieces = self._pieces(messages, tokenizer, system_prompt, media_tokens, where, generation_prompt=True)
        return _tokenize_pieces(pieces, tokenizer, where)[0]

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
        out: list[Piece] = [Piece(start, False)]
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
                out += [Piece(prefix, False), *body, Piece(head, True), Piece([end_id], True), Piece(tail, False)]
            elif m.role == "system" and self.system_in_first_user:
                held = [Piece(prefix, False), *body, Piece(suffix, False)]
            else:
                out += [Piece(prefix, False), *held, *body, Piece(suffix, False)]
                held = []
        if held:
            raise DataError(f"{where}messages: template {self.name} needs a user turn after the system prompt")
        return out + [Piece(roles["assistant"][0], False)] if generation_prompt else out


class _Unsupported(Exception):
    """The chat template cannot encode a conversation exactly. Whether that is the template's fault (ConfigError)
    or the sample's (DataError) is told by encoding plain-text messages of the same roles."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.reason = reason


def _template_fault(e: _Unsupported) -> ConfigError:
    return ConfigError(f"template tokenizer: {e.reason}, also with plain-text messages, so this chat template cannot "
                       f"be used for training; pick a built-in template")


@dataclass(frozen=True)
class TokenizerTemplate:
    """The tokenizer's own chat_template: ids equal tokenizer.apply_chat_template(conversation) (without media),
    except where message content holds special-token text (kept plain) or a token of a reply would merge with its
    generation prompt (then the ids are cut there: the prompt's, then the reply's, as inference sees them)."""
    name: str = "tokenizer"

    def encode(self, messages, tokenizer, system_prompt, media_tokens, where) -> tuple[list[int], list[int]]:
        return self._encode(messages, tokenizer, system_prompt, media_tokens, where, generation_prompt=False)

    def render_prompt(self, messages, tokenizer, system_prompt, media_tokens, where) -> list[int]:
        return self._encode(messages, tokenizer, system_prompt, media_tokens, where, generation_prompt=True)[0]

    def stop_token_ids(self, tokenizer) -> list[int]:
        _, conv = self._conversation([Message("user", "Hi"), Message("assistant", "Hello")], tokenizer, None, None,
                                     "")
        prompt = _render(tokenizer, conv[:1], True, "")
        turn = _render(tokenizer, conv, False, "")[len(prompt):]
        try:
            end = _turn_end(turn, "Hello", tokenizer, "messages[1].content")[1]
        except _Unsupported as e:
            raise _template_fault(e) from None
        return _unique([tokenizer.convert_tokens_to_ids(end), tokenizer.eos_token_id])

    def _encode(self, messages, tokenizer, system_prompt, media_tokens, where,
                generation_prompt: bool) -> tuple[list[int], list[int]]:
        """Ids as one tokenizer call makes them. On failure, plain-text messages of the same roles tell whose fault
        it is: the template's (ConfigError; also a generation prompt that merges with every reply, which would
        train unnatural token splits) or this sample's: then the ids are cut where a reply's token crosses its
        generation prompt, or the sample is refused (DataError)."""
        fields, conv = self._conversation(messages, tokenizer, system_prompt, media_tokens, where)
        try:
            return self._ids_and_labels(tokenizer, conv, fields, generation_prompt, media_tokens, where, cut=False)
        except _Unsupported:
            plain = [{"role": m["role"], "content": "Hello"} for m in conv]
            try:
                self._ids_and_labels(tokenizer, plain, fields, generation_prompt, None, where, cut=False)
            except _Unsupported as e:
                raise _template_fault(e) from None
        try:
            return self._ids_and_labels(tokenizer, conv, fields, generation_prompt, media_tokens, where, cut=True)
        except _Unsupported as e:
            raise DataError(f"{where}{e} (plain-text messages encode fine, so this sample's text is the cause)") \
                from None

    def _ids_and_labels(self, tokenizer, conv, fields, generation_prompt, media_tokens, where,
                        cut: bool) -> tuple[list[int], list[int]]:
        """Labels cover each assistant span; the labelled tokens must decode to exactly that span's text."""
        text = _render(tokenizer, conv, generation_prompt, where)
        spans = [self._span(tokenizer, conv, fields, i, text, where)
                 for i, m in enumerate(conv) if m["role"] == "assistant"]
        content = _content_spans(tokenizer, conv, fields, text, generation_prompt, where)
        ids, offsets = _tokenize_rendered(tokenizer, text, conv, media_tokens, content, [], where)
        labels, crossed = _span_labels(tokenizer, ids, offsets, spans, text)
        if crossed and cut:
            cuts = [at for (s, e, _), _ in crossed for at in (s, e)]
            ids, offsets = _tokenize_rendered(tokenizer, text, conv, media_tokens, content, cuts, where)
            labels, crossed = _span_labels(tokenizer, ids, offsets, spans, text)
        if crossed:
            (s, e, field), got = crossed[0]
            raise _Unsupported(field, f"assistant text {text[s:e]!r} is labelled as tokens that decode to {got!r}; "
                                      f"a token crosses the boundary between the generation prompt and the answer")
        return ids, labels

    def _conversation(self, messages, tokenizer, system_prompt, media_tokens,
                      where) -> tuple[list[str], list[dict[str, str]]]:
        """(field names for errors, messages as the dicts apply_chat_template takes), placeholders checked."""
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("template tokenizer: this tokenizer has no chat_template; pick one of "
                              f"{', '.join(n for n in TEMPLATES if n != self.name)}")
        pairs = _with_system(messages, system_prompt, None, where)
        for field, m in pairs:
            _content(m, field, media_tokens, where)  # raises on a bad placeholder
        return [field for field, _ in pairs], [{"role": m.role, "content": m.content} for _, m in pairs]

    def _span(self, tokenizer, conv, fields, i, text, where) -> Span:
        """Character span of assistant turn `i` in `text`: from the end of its generation prompt through its end
        token. Each render must extend the previous one, or the spans would be guesses."""
        if i == 0:
            raise DataError(f"{where}{fields[0]}: the tokenizer's chat template needs a turn before the first "
                            f"assistant turn")
        prompt = _render(tokenizer, conv[:i], True, where)
        turn = _render(tokenizer, conv[:i + 1], False, where)
        if not (turn.startswith(prompt) and text.startswith(turn)):
            raise _Unsupported(fields[i], f"the chat template is not prefix-stable (rendering messages up to turn "
                                          f"{i} with the generation prompt, then through turn {i}, then all, does "
                                          f"not extend each previous text)")
        end = _turn_end(turn[len(prompt):], conv[i]["content"], tokenizer, fields[i])[0]
        return len(prompt), len(prompt) + end, fields[i]


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
    check_choice(name, TEMPLATES, "data.template")
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
    labels = tokenizer.encode(answer.content, add_special_tokens=False, split_special_tokens=True) + \
        [tokenizer.eos_token_id]
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
        pieces += [Piece(m.content[pos:match.start()], False, field), Piece(run, False)]
        pos = match.end()
    return pieces + [Piece(m.content[pos:], supervised, field)]


def _media_run(placeholder: str, media_tokens, field: str, where: str) -> list[int]:
    kind = PLACEHOLDERS[placeholder]
    count = (media_tokens or {}).get(kind)
    if count is None:
        raise DataError(f"{where}{field}: placeholder {placeholder} but the model takes no {kind} input "
                        f"(media_tokens={media_tokens})")
    if count < 1:
        raise ConfigError(f"media_tokens[{kind!r}] must be >= 1, got {count}")
    return [MEDIA_TOKEN_IDS[kind]] * count


def _tokenize_pieces(pieces: list[Piece], tokenizer, where: str) -> tuple[list[int], list[int]]:
    """Tokenise each run of neighbouring text pieces with the same flag as one string; ids pass through."""
    ids: list[int] = []
    labels: list[int] = []
    for (is_text, supervised), group in groupby(pieces, key=lambda p: (isinstance(p.item, str), p.supervised)):
        items = list(group)
        new = _text_ids(tokenizer, items, where) if is_text else [t for p in items for t in p.item]
        ids += new
        labels += new if supervised else [IGNORE] * len(new)
    return ids, labels


def _text_ids(tokenizer, pieces: list[Piece], where: str) -> list[int]:
    """The pieces' joined text in one tokenizer call, message content as plain text (see _tokenize_text)."""
    text, content = "", []
    specials = _special_tokens(tokenizer).values()
    for p in pieces:
        if p.field and _special_text(specials, p.item):
            content.append((len(text), len(text) + len(p.item), p.field))
        text += p.item
    if not content:  # the common case, and the one a tokenizer without character offsets can do
        return tokenizer.encode(text, add_special_tokens=False)
    return _tokenize_text(tokenizer, text, content, where)[0]


def _special_tokens(tokenizer) -> dict[int, str]:
    """id -> text of the tokenizer's special tokens: what the tokenizer parses out of any text it is given."""
    return {i: t.content for i, t in tokenizer.added_tokens_decoder.items() if t.special}


def _special_text(specials: Iterable[str], text: str) -> str | None:
    return next((s for s in specials if s in text), None)


def _refusal(tokenizer, where: str, text: str, span: Span, why: str) -> DataError:
    """The error for message content (`span` of `text`) whose special-token text cannot be kept plain."""
    start, end, field = span
    token = _special_text(_special_tokens(tokenizer).values(), text[start:end])
    return DataError(f"{where}{field}: the special-token text {token!r} in this message cannot be encoded as plain "
                     f"text: {why}; remove or escape it in the data")


def _render(tokenizer, conv: list[dict[str, str]], generation_prompt: bool, where: str) -> str:
    from jinja2 import TemplateError  # transformers' optional chat-template dependency; only this template needs it

    try:
        return tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as e:
        raise DataError(f"{where}messages: the tokenizer's chat template refused this conversation: {e}") from None


def _turn_end(turn: str, content: str, tokenizer, field: str) -> tuple[int, str]:
    """(end offset, end token) of an assistant turn rendered after its generation prompt: the first special token
    after the content closes it; whatever follows (a newline, say) is not supervised."""
    at = turn.find(content)
    if at < 0:
        raise _Unsupported(field, "the chat template rewrites assistant content, so assistant turns cannot be "
                                  "supervised verbatim")
    hits = [(turn.find(s, at + len(content)), -len(s), s) for s in _special_tokens(tokenizer).values()]
    hits = [h for h in hits if h[0] >= 0]
    if not hits:
        raise _Unsupported(field, "the chat template ends an assistant turn with no special token, so generation "
                                  "could not learn to stop")
    pos, _, token = min(hits)  # the earliest; the longest where two start together
    return pos + len(token), token


def _content_spans(tokenizer, conv, fields, text: str, generation_prompt: bool, where: str) -> list[Span]:
    """Where the contents that hold special-token text lie in `text` (none: nothing to compute). Found by rendering
    the conversation again with each content replaced by a marker: the template's own text surrounds the markers."""
    specials = _special_tokens(tokenizer).values()
    risky = {i for i, m in enumerate(conv) if _special_text(specials, m["content"])}
    if not risky:
        return []
    marked = [{**m, "content": f"\ue000{i}\ue001"} for i, m in enumerate(conv)]
    parts = re.split("\ue000([0-9]+)\ue001", _render(tokenizer, marked, generation_prompt, where))
    spans, rebuilt = [], ""
    for k, part in enumerate(parts):
        if k % 2:  # a marker's message number
            i, part = int(part), conv[int(part)]["content"]
            if i in risky:
                spans.append((len(rebuilt), len(rebuilt) + len(part), fields[i]))
        rebuilt += part
    if rebuilt != text:
        i = min(risky)
        raise _refusal(tokenizer, where, conv[i]["content"], (0, len(conv[i]["content"]), fields[i]),
                       "the chat template changes message content, so the content cannot be located")
    return spans


def _tokenize_rendered(tokenizer, text: str, conv, media_tokens, content: list[Span], cuts: list[int],
                       where: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character offsets of a rendered chat: one tokenizer call per stretch between placeholders and `cuts`
    (one in all without media or cuts, as apply_chat_template makes), each placeholder replaced by its media run."""
    expected = sum(len(PLACEHOLDER_RE.findall(m["content"])) for m in conv)
    found = list(PLACEHOLDER_RE.finditer(text))
    if len(found) != expected:
        raise DataError(f"{where}messages: the chat template output holds {len(found)} media placeholders, the "
                        f"messages {expected}")
    stops = sorted([(m.start(), m) for m in found] + [(at, None) for at in cuts] + [(len(text), None)],
                   key=lambda stop: stop[0])
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    pos = 0
    for stop, match in stops:
        inside = [(max(s, pos) - pos, min(e, stop) - pos, f) for s, e, f in content if s < stop and pos < e]
        new_ids, new_offsets = _tokenize_text(tokenizer, text[pos:stop], inside, where)
        ids += new_ids
        offsets += [(pos + a, pos + b) for a, b in new_offsets]
        pos = stop
        if match:
            run = _media_run(match.group(), media_tokens, "messages", where)
            ids += run
            offsets += [match.span()] * len(run)
            pos = match.end()
    return ids, offsets


def _tokenize_text(tokenizer, text: str, content: list[Span],
                   where: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character offsets of `text` as one tokenizer call makes them, except that special tokens count only
    outside `content`: a stretch between two of the template's own special tokens that holds special-token text
    from content is tokenised again, alone, with special-token parsing off."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
    if not content:
        return ids, offsets
    specials = _special_tokens(tokenizer)
    forged = {j for j, t in enumerate(ids) if t in specials and _from_content(text, specials[t], offsets[j], content)}
    structure = [j for j, t in enumerate(ids) if t in specials and j not in forged]
    out_ids: list[int] = []
    out_offsets: list[tuple[int, int]] = []
    first, pos = 0, 0  # the stretch's first token and first character
    for j in [*structure, len(ids)]:
        stop = offsets[j][0] if j < len(ids) else len(text)
        if forged.intersection(range(first, j)):
            part = _respell(tokenizer, text, pos, stop, ids[first:j], content, where)
        else:
            part = ids[first:j], offsets[first:j]
        out_ids += part[0] + ids[j:j + 1]
        out_offsets += part[1] + offsets[j:j + 1]
        first, pos = j + 1, offsets[j][1] if j < len(ids) else len(text)
    return out_ids, out_offsets


def _from_content(text: str, token: str, offsets: tuple[int, int], content: list[Span]) -> bool:
    """Whether a special token's own text (without whitespace it strips) overlaps message content."""
    a, b = offsets
    at = text.find(token, a, b)
    if at >= 0:
        a, b = at, at + len(token)
    return any(s < b and a < e for s, e, _ in content)


def _respell(tokenizer, text: str, start: int, stop: int, in_place: list[int], content: list[Span],
             where: str) -> tuple[list[int], list[tuple[int, int]]]:
    """text[start:stop] alone, special-token text spelled as plain text. Tokenised alone with parsing on it must
    give the ids it had in place; some tokenizers treat the start of a call differently (SentencePiece's prefix
    space only at the start of a text), and then its plain spelling alone is not what it would be in place."""
    piece = text[start:stop]
    if tokenizer(piece, add_special_tokens=False)["input_ids"] != in_place:
        span = next(c for c in content if c[0] < stop and start < c[1])
        raise _refusal(tokenizer, where, text, span, "this tokenizer tokenises the text around it differently "
                                                     "alone than in place")
    enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
    return enc["input_ids"], [(start + a, start + b) for a, b in enc["offset_mapping"]]


def _span_labels(tokenizer, ids: list[int], offsets: list[tuple[int, int]], spans: list[Span],
                 text: str) -> tuple[list[int], list[tuple[Span, str]]]:
    """Labels supervising the tokens inside `spans`, and the spans whose labelled tokens decode to other text
    (with that text): a token crossed the span's boundary."""
    labels = [t if b > a and any(s <= a and b <= e for s, e, _ in spans) else IGNORE
              for t, (a, b) in zip(ids, offsets)]
    crossed = []
    for span in spans:
        s, e, _ = span
        got = _decode_run(tokenizer, ids, [j for j, (a, b) in enumerate(offsets)
                                           if labels[j] != IGNORE and s <= a and b <= e])
        if got != text[s:e]:
            crossed.append((span, got))
    return labels, crossed


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
