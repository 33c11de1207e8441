"""The chat template training used, as the Jinja template a transformers user passes to apply_chat_template.

Table templates (chatml, vicuna_v1, llama2, plain) are generated from their table, resolved for the tokenizer as
training resolves it (`<s>` and the end string, see data/templates.py); template `tokenizer` is the tokenizer's own.
Either way a preamble first gives the conversation mmtune's meaning: the system prompt training used where the
conversation has none, unknown roles refused, and structured content (`[{"type": "image"}, {"type": "text",
"text": ...}]`, as processors take it) flattened into text, each image as `<image>` and a newline, which is where
`mmtune chat` puts images. The rendered text is mmtune's. The ids are render_prompt's wherever tokenising the whole
text gives the ids of the pieces mmtune tokenises one by one: always for `tokenizer` (mmtune tokenises its text
whole), and for a table unless the tokenizer merges an earlier answer with the text before it, as byte-level BPE
does with vicuna_v1's "ASSISTANT: " + "Paris" (chatml on SmolLM2's tokenizer is exact; tested).
"""
from __future__ import annotations

import json

from mmtune.data.sample import ROLES
from mmtune.data.templates import TableTemplate, get_template


def chat_template(template: str, tokenizer, system_prompt: str | None, image_token: str | None) -> str:
    """Jinja for mmtune template `template` on this tokenizer, with the run's `data.system_prompt`; `image_token`
    is the text an image stands for (None: the model reads text only, and an image is refused)."""
    table = get_template(template)
    if isinstance(table, TableTemplate):
        default = system_prompt if system_prompt is not None else table.default_system
        return _preamble(default, image_token) + _table(table, tokenizer)
    return _preamble(system_prompt, image_token) + tokenizer.chat_template


def _literal(value) -> str:
    """A Jinja literal: JSON strings, lists, objects and booleans are Jinja's too (no null: None never gets here)."""
    return json.dumps(value)


def _raise(*parts: str) -> str:
    """A Jinja statement failing with a message made of `parts`: text and Jinja expressions in turn."""
    message = " ~ ".join(_literal(part) if i % 2 == 0 else part for i, part in enumerate(parts))
    return "{{- raise_exception(" + message + ") -}}"


def _preamble(system: str | None, image_token: str | None) -> str:
    """Rebinds `messages`: the system message prepended (as data/templates._with_system does), every content a
    string."""
    image = [f"{{%- elif item['type'] == 'image' and message['role'] != 'assistant' -%}}"
             f"{{%- set text.value = text.value ~ {_literal(image_token + chr(10))} -%}}"] if image_token else []
    takes = "text, and images outside assistant turns" if image_token else "text only"
    lines = [
        "{%- set normal = namespace(messages=[]) -%}",
        *([f"{{%- if not (messages and messages[0]['role'] == 'system') -%}}"
           f"{{%- set normal.messages = [{{'role': 'system', 'content': {_literal(system)}}}] -%}}{{%- endif -%}}"]
          if system else []),
        "{%- for message in messages -%}{%- set at = loop.index0 -%}",
        f"{{%- if message['role'] not in {_literal(list(ROLES))} -%}}",
        _raise("messages[", "at", "].role: unknown role ", "message['role']", f", expected one of {', '.join(ROLES)}"),
        "{%- endif -%}",
        "{%- set text = namespace(value='') -%}",
        "{%- if message['content'] is string -%}{%- set text.value = message['content'] -%}",
        "{%- else -%}{%- for item in message['content'] -%}",
        "{%- if item['type'] == 'text' -%}{%- set text.value = text.value ~ item['text'] -%}",
        *image,
        "{%- else -%}",
        _raise("messages[", "at", "].content: an item of type ", "item['type']", f"; this model takes {takes}"),
        "{%- endif -%}{%- endfor -%}{%- endif -%}",
        "{%- set normal.messages = normal.messages + [{'role': message['role'], 'content': text.value}] -%}",
        "{%- endfor -%}",
        "{%- set messages = normal.messages -%}",
    ]
    return "\n".join(lines) + "\n"


def _table(table: TableTemplate, tokenizer) -> str:
    """The body of a table template, as TableTemplate renders it: start, each message as prefix + content + suffix
    (roles without an entry skipped), llama2's system block held for the first user turn, then the generation
    prompt (the assistant prefix)."""
    roles, start, _, _ = table.resolve(tokenizer)
    name = f"template {table.name} "
    lines = [
        f"{{%- set roles = {_literal({role: list(pair) for role, pair in roles.items()})} -%}}",
        f"{{{{- {_literal(start)} -}}}}",
        "{%- set held = namespace(text=none) -%}",
        "{%- for message in messages -%}",
        "{%- if held.text is not none and message['role'] != 'user' -%}",
        _raise(name + "puts the system prompt inside the first user turn, but a ", "message['role']",
               " turn comes first"),
        "{%- endif -%}",
        "{%- if message['role'] in roles -%}",
        "{%- set prefix, suffix = roles[message['role']] -%}",
        f"{{%- if message['role'] == 'system' and {_literal(table.system_in_first_user)} -%}}",
        "{%- set held.text = prefix ~ message['content'] ~ suffix -%}",
        "{%- else -%}",
        "{{- prefix ~ (held.text or '') ~ message['content'] ~ suffix -}}",
        "{%- set held.text = none -%}",
        "{%- endif -%}{%- endif -%}",
        "{%- endfor -%}",
        "{%- if held.text is not none -%}" + _raise(name + "needs a user turn after the system prompt"),
        "{%- endif -%}",
        "{%- if add_generation_prompt -%}{{- roles['assistant'][0] -}}{%- endif -%}",
    ]
    return "\n".join(lines)
