"""mmtune.models.llm: every model source loads, tiny families train, and the backbone/head split is exact."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, CohereConfig

from mmtune.errors import ConfigError
from mmtune.models.llm import TINY, is_seq2seq, llm_parts, load_llm
from mmtune.models.weights import package_file

CAUSAL = [name for name in TINY if name != "t5"]


def _tiny(name: str, **kwargs):
    torch.manual_seed(0)
    return load_llm(f"tiny:{name}", **kwargs)


def _batch(tok, seq2seq: bool) -> dict:
    enc = tok(["The cat sat on the mat.", "Hello"], return_tensors="pt", padding=True)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    if seq2seq:
        return dict(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels[:, :3].contiguous())
    return dict(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels)


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_family_takes_a_training_step(name):
    model, tok = _tiny(name)
    n_params = sum(p.numel() for p in model.parameters())
    assert 2e5 < n_params < 1e7
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    assert is_seq2seq(model) == (name == "t5")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = _batch(tok, is_seq2seq(model))
    before = model(**batch).loss
    assert torch.isfinite(before)
    before.backward()
    opt.step()
    after = model(**batch).loss
    assert torch.isfinite(after) and after.item() < before.item()


def test_tiny_uses_sdpa_and_falls_back_to_eager():
    assert _tiny("llama")[0].config._attn_implementation == "sdpa"
    assert _tiny("bloom")[0].config._attn_implementation == "eager"  # BLOOM has no SDPA path


def test_tiny_dtype():
    model, _ = _tiny("llama", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_tiny_with_another_tokenizer_fits_its_vocabulary():
    model, tok = _tiny("gpt_neox", tokenizer="minilm-l6")  # BERT word pieces, 30522 ids
    assert len(tok) == 30522 and model.get_input_embeddings().num_embeddings == 30522
    assert model.config.pad_token_id == tok.pad_token_id == 0


@pytest.mark.parametrize("name", ["qwen2", "t5"])
def test_local_directory_round_trip(tmp_path, name):
    model, tok = _tiny(name)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_llm(str(tmp_path))
    assert type(loaded) is type(model) and len(loaded_tok) == len(tok)
    batch = _batch(tok, is_seq2seq(model))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


def test_directory_without_tokenizer_takes_one_from_another_source(tmp_path):
    model, _ = _tiny("llama")
    model.save_pretrained(tmp_path)
    loaded, tok = load_llm(str(tmp_path), tokenizer="smollm2-135m")
    assert len(tok) == loaded.get_input_embeddings().num_embeddings


def test_smaller_vocabulary_is_resized_to_the_tokenizer(tmp_path):
    model, _ = _tiny("llama", tokenizer="minilm-l6")
    model.save_pretrained(tmp_path)
    loaded, tok = load_llm(str(tmp_path), tokenizer="smollm2-135m")
    assert loaded.get_input_embeddings().num_embeddings == len(tok) == 49152
    assert loaded.config.pad_token_id == tok.pad_token_id == 2


def test_missing_path_is_named():
    with pytest.raises(ConfigError, match=r"model\.llm: no such file or directory: /nowhere/model"):
        load_llm("/nowhere/model")


def test_missing_tokenizer_path_is_named():
    with pytest.raises(ConfigError, match=r"model\.tokenizer: no such file or directory: /nowhere/tok"):
        load_llm("tiny:llama", tokenizer="/nowhere/tok")


def test_unknown_tiny_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown name 'tiny:gpt5'.* \(known: tiny:llama, .*tiny:gpt_neox"):
        load_llm("tiny:gpt5")


def test_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0")
    with pytest.raises(ConfigError, match=r"model\.bin is a file but not a \.gguf"):
        load_llm(str(path))


def test_directory_without_config(tmp_path):
    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        load_llm(str(tmp_path), tokenizer="smollm2-135m")


@pytest.mark.parametrize("name", CAUSAL)
def test_llm_parts_give_the_model_logits(name):
    model, tok = _tiny(name)
    enc = tok(["a short one", "and a longer second sentence"], return_tensors="pt", padding=True)
    backbone, lm_head = llm_parts(model)
    with torch.no_grad():
        split = lm_head(backbone(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state)
        full = model(**enc).logits
    torch.testing.assert_close(split, full, atol=1e-5, rtol=0)


def test_llm_parts_through_peft_and_embeddings():
    import peft

    model, tok = _tiny("opt")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in wrapped.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # a non-zero adapter, so the split must carry it
    wrapped.eval()
    backbone, lm_head = llm_parts(wrapped)
    assert lm_head is model.get_output_embeddings()
    ids = tok(["the same text"], return_tensors="pt").input_ids
    embeds = model.get_input_embeddings()(ids)
    position_ids = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        split = lm_head(backbone(inputs_embeds=embeds, position_ids=position_ids).last_hidden_state)
        full = wrapped(input_ids=ids).logits
    torch.testing.assert_close(split, full, atol=1e-5, rtol=0)


def test_llm_parts_refuses_logits_changed_after_the_head():
    config = CohereConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                          num_attention_heads=4, logit_scale=0.0625, pad_token_id=0, bos_token_id=1,
                          eos_token_id=2)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ConfigError, match=r"CohereForCausalLM transforms its logits.*train\.sparse_lm_head=false"):
        llm_parts(model)


def test_llm_parts_refuses_seq2seq():
    with pytest.raises(ConfigError, match="T5ForConditionalGeneration is an encoder-decoder model"):
        llm_parts(_tiny("t5")[0])


def test_smollm2_loads_as_a_plain_model():
    # About a second once the GGUF conversion is cached (the first run of the suite converts, ~25 s).
    model, tok = load_llm("smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM" and not getattr(model, "is_quantized", False)
    assert tok.pad_token_id == model.config.pad_token_id
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        next_id = model(input_ids=ids).logits[0, -1].argmax().item()
    assert tok.decode(next_id).strip() == "Paris"


@pytest.mark.slow
def test_gguf_file_is_converted_once_and_cached(tmp_path, monkeypatch):
    reference, _ = load_llm("smollm2-135m")
    monkeypatch.setenv("MMTUNE_CACHE", str(tmp_path))
    gguf = str(package_file("smollm2-135m"))
    model, tok = load_llm(gguf)
    assert len(list((tmp_path / "gguf").iterdir())) == 1
    gguf_files_read = []
    load_model = AutoModelForCausalLM.from_pretrained

    def recording_load(*args, **kwargs):
        gguf_files_read.append(kwargs.get("gguf_file"))
        return load_model(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recording_load)
    load_llm(gguf)
    assert gguf_files_read == [None]  # one load, of the cached plain copy: the GGUF file is not dequantised again
    ids = tok("Hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits)
