"""chat_template: the Jinja an export carries renders a conversation as mmtune's template does, for every
template, with the run's system prompt, and refuses what mmtune refuses."""
import copy
import re

import pytest
from jinja2.exceptions import TemplateError

from mmtune.data.sample import Message
from mmtune.data.templates import TEMPLATES, render_prompt
from mmtune.infer.chat_template import chat_template
from tests.data.test_templates import CHAT, SMOL_CHAT, chatml_like, llama_like  # noqa: F401 (fixtures)

EXACT_IDS = {"chatml", "tokenizer", "plain"}
"""Templates whose multi-turn prompts on SmolLM2 tokenise as a whole into mmtune's ids; vicuna_v1 and llama2 put an
answer after a space that BPE would merge with it ("ASSISTANT: " + "Paris."), which mmtune tokenises apart."""


def _exported(tokenizer, template: str, system_prompt: str | None = None, image_token: str | None = None):
    """A copy of `tokenizer` carrying the chat template an export gives it."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = chat_template(template, tokenizer, system_prompt, image_token)
    return tok


def _dicts(messages: list[Message]) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _apply(tokenizer, conversation: list[dict], tokenize: bool):
    return tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=tokenize,
                                         return_dict=False)


@pytest.mark.parametrize("system_prompt", [None, "", "Answer in French."])
@pytest.mark.parametrize("template", list(TEMPLATES))
def test_smollm2_prompts_are_mmtune_prompts(template, system_prompt, smol_tokenizer):
    tok = _exported(smol_tokenizer, template, system_prompt)
    for messages in (SMOL_CHAT[1:2], SMOL_CHAT[1:4], SMOL_CHAT[:4]):
        expected = render_prompt(messages, smol_tokenizer, template, system_prompt=system_prompt)
        assert _apply(tok, _dicts(messages), tokenize=False) == smol_tokenizer.decode(
            expected, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if len(messages) == 1 or template in EXACT_IDS:
            assert _apply(tok, _dicts(messages), tokenize=True) == expected


@pytest.mark.parametrize("template", ["vicuna_v1", "llama2", "chatml"])  # plain glues turns into one "word"
def test_special_strings_are_resolved_per_tokenizer(template, llama_like, chatml_like):
    """`<s>` is bos only where the tokenizer adds one, a missing end string is eos: on word-level tokenizers the
    whole text's ids are the pieces' ids, so every id is compared."""
    for tokenizer in (llama_like, chatml_like):
        assert _apply(_exported(tokenizer, template), _dicts(CHAT[:4]), tokenize=True) == \
            render_prompt(CHAT[:4], tokenizer, template)


def test_content_items_render_as_mmtune_chat_puts_images(smol_tokenizer):
    tok = _exported(smol_tokenizer, "chatml", image_token="<image>")
    items = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]}]
    assert _apply(tok, items, tokenize=False) == _apply(tok, [{"role": "user", "content": "<image>\n<image>\nSame?"}],
                                                        tokenize=False)


@pytest.mark.parametrize("template, image_token, conversation, message", [
    ("chatml", None, [{"role": "user", "content": [{"type": "image"}]}],
     "messages[0].content: an item of type image; this model takes text only"),
    ("tokenizer", "<image>", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [{"type": "image"}]}],
     "messages[1].content: an item of type image; this model takes text, and images outside assistant turns"),
    ("vicuna_v1", None, [{"role": "tool", "content": "42"}],
     "messages[0].role: unknown role tool, expected one of system, user, assistant"),
    ("llama2", None, [{"role": "system", "content": "Hi"}, {"role": "assistant", "content": "Hi"}],
     "template llama2 puts the system prompt inside the first user turn, but a assistant turn comes first"),
    ("llama2", None, [{"role": "system", "content": "Hi"}],
     "template llama2 needs a user turn after the system prompt"),
])
def test_what_mmtune_refuses_is_refused_by_name(smol_tokenizer, template, image_token, conversation, message):
    with pytest.raises(TemplateError, match=re.escape(message)):
        _apply(_exported(smol_tokenizer, template, image_token=image_token), conversation, tokenize=False)
