"""generate: the KV cache and batching change no greedy token (text and images), sampling is reproducible with a
seed and leaves the global RNG alone, stop strings and repetition penalty act, and a streamed answer's pieces join
to exactly the answer (no half character, no half stop string shown)."""
import random

import pytest
import torch
from PIL import Image

from mmtune.data.sample import Message
from mmtune.infer.generate import AnswerStream, answer_text, generate

PROMPTS = ["alpha beta", "gamma delta epsilon zeta eta theta iota", "<image>\nkappa", "<image>\nlambda mu nu xi"]


def _inputs():
    rng = random.Random(0)
    image = lambda: Image.new("RGB", (40, 24), tuple(rng.randrange(256) for _ in range(3)))  # noqa: E731
    return [[Message("user", p)] for p in PROMPTS], [[image()] if "<image>" in p else [] for p in PROMPTS]


def test_greedy_is_the_same_with_and_without_cache_and_batched_or_alone(vlm):
    model, tokenizer, cfg = vlm
    conversations, images = _inputs()
    batched = generate(model, tokenizer, cfg, conversations, images, max_new_tokens=10)
    assert generate(model, tokenizer, cfg, conversations, images, max_new_tokens=10, use_cache=False) == batched
    alone = [generate(model, tokenizer, cfg, [c], [i], max_new_tokens=10)[0] for c, i in zip(conversations, images)]
    assert alone == batched
    assert len(set(batched)) > 1 and all(batched)


def test_sampling_is_reproducible_with_a_seed(vlm):
    model, tokenizer, cfg = vlm
    conversations, images = _inputs()
    settings = dict(max_new_tokens=10, temperature=1.5, top_p=0.95, top_k=50)
    state = torch.random.get_rng_state()
    first = generate(model, tokenizer, cfg, conversations, images, seed=1, **settings)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is not drawn from
    assert generate(model, tokenizer, cfg, conversations, images, seed=1, **settings) == first
    others = [generate(model, tokenizer, cfg, conversations, images, seed=s, **settings) for s in (2, 3)]
    assert any(o != first for o in others)


def test_stop_strings_cut_the_answer_and_repetition_penalty_changes_it(vlm):
    model, tokenizer, cfg = vlm
    conversations, images = _inputs()
    full = generate(model, tokenizer, cfg, conversations[:1], max_new_tokens=12)[0]
    words = full.split()
    assert len(words) > 2
    cut = generate(model, tokenizer, cfg, conversations[:1], max_new_tokens=12, stop=(words[1],))[0]
    assert cut == full[:full.find(words[1])].strip()
    with pytest.warns(UserWarning, match="penalty only to newly generated tokens"):
        penalised = generate(model, tokenizer, cfg, conversations, images, max_new_tokens=12,
                             repetition_penalty=5.0)
    assert penalised != generate(model, tokenizer, cfg, conversations, images, max_new_tokens=12)


def _streamed(model, tokenizer, cfg, conversation, images, **settings) -> tuple[list[str], str]:
    pieces = []
    answer = generate(model, tokenizer, cfg, [conversation], [images], on_text=pieces.append, **settings)[0]
    return pieces, answer


@pytest.mark.parametrize("index", range(len(PROMPTS)), ids=lambda i: PROMPTS[i].replace("\n", " "))
def test_streamed_pieces_join_to_the_greedy_answer(vlm, index):
    model, tokenizer, cfg = vlm
    conversations, images = _inputs()
    expected = generate(model, tokenizer, cfg, conversations, images, max_new_tokens=12)[index]
    pieces, answer = _streamed(model, tokenizer, cfg, conversations[index], images[index], max_new_tokens=12)
    assert answer == expected and "".join(pieces) == expected
    assert len([p for p in pieces if p]) > 1  # printed as generated, not all at the end
    stop = expected.split()[-1]
    pieces, answer = _streamed(model, tokenizer, cfg, conversations[index], images[index], max_new_tokens=12,
                               stop=(stop,))
    assert "".join(pieces) == answer == expected[:expected.find(stop)].strip()


def test_streaming_wants_one_conversation(vlm):
    model, tokenizer, cfg = vlm
    conversations, images = _inputs()
    with pytest.raises(ValueError, match="one answer, but 4 conversations"):
        generate(model, tokenizer, cfg, conversations, images, on_text=print)


def test_stream_never_shows_half_a_character_or_half_a_stop_string(smol_tokenizer):
    """Token by token through byte-level BPE: an emoji or CJK character spans several tokens, and the stop string
    several more; every piece is final text, and the pieces join to the answer."""
    text = " Café 🎉 naïve — 日本語 ok<<STOP>> never shown"
    ids = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in smol_tokenizer.decode(ids[:n]) for n in range(len(ids)))  # the case is exercised
    shown = []
    stream = AnswerStream(smol_tokenizer, ("<<STOP>>",), shown.append)
    stream.put(torch.zeros(1, 0, dtype=torch.long))  # the prompt: no ids when the model is fed embeddings
    for i in ids:
        stream.put(torch.tensor([i]))
        assert "\ufffd" not in "".join(shown) and "<" not in "".join(shown)
    stream.end()
    assert "".join(shown) == answer_text(smol_tokenizer, ids, ("<<STOP>>",)) == "Café 🎉 naïve — 日本語 ok"
    assert shown[-1] == "" and len(shown) > 5
