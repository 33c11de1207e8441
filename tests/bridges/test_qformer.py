"""The qformer bridge: MiniLM's weights where a BERT's belong, the instruction reaching the queries only when
instruction-aware, argument errors at load time, and an encoder-decoder (T5) recipe that trains."""
from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from transformers import BertModel

from data_builders.synth.shapes import write_demo_shards
from mmtune.bridges import build_bridge
from mmtune.bridges.qformer import QFormer, QFormerArgs
from mmtune.config import ComponentConfig
from mmtune.errors import ConfigError
from mmtune.models.weights import resolve
from mmtune.recipe import load_recipe
from mmtune.train.trainer import train

SMALL = {"init": "", "layers": 2, "width": 32, "heads": 2, "queries": 4, "max_instruction_len": 16}
QUESTIONS = ("What colour is the shape?", "How many shapes are there in the image?")


def _qformer(**args) -> QFormer:
    torch.manual_seed(0)
    return build_bridge(ComponentConfig("qformer", args), in_dim=16, out_dim=24).eval()


def _context(bridge: QFormer, *texts: str) -> dict[str, torch.Tensor]:
    encoded = [bridge.context_encoder()(t) for t in texts]
    return {k: torch.as_tensor(np.stack([e[k] for e in encoded])) for k in encoded[0]}


def test_minilm_weights_are_the_bert_directorys():
    """Embeddings and layers as all-MiniLM-L6-v2's BertModel; the query FFN starts as the text FFN (LAVIS)."""
    bridge = _qformer(layers=3)
    bert = BertModel.from_pretrained(resolve("minilm-l6")).eval()
    qformer = bridge.qformer
    ids = torch.as_tensor(bridge.context_encoder()(QUESTIONS[0])["input_ids"])[None]
    with torch.no_grad():  # token type 0 is folded into the position embeddings, so the text embeds as in BERT
        torch.testing.assert_close(qformer.embeddings(input_ids=ids), bert.embeddings(input_ids=ids), rtol=0, atol=1e-5)
    assert torch.equal(qformer.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    assert torch.equal(qformer.embeddings.position_embeddings.weight,
                       bert.embeddings.position_embeddings.weight + bert.embeddings.token_type_embeddings.weight[0])
    ours, theirs = qformer.encoder.layer[1], bert.encoder.layer[1]
    pairs = [(ours.attention.attention.query, theirs.attention.self.query),
             (ours.attention.attention.value, theirs.attention.self.value),
             (ours.attention.output.LayerNorm, theirs.attention.output.LayerNorm),
             (ours.intermediate.dense, theirs.intermediate.dense), (ours.intermediate_query.dense, theirs.intermediate.dense),
             (ours.output.dense, theirs.output.dense), (ours.output_query.LayerNorm, theirs.output.LayerNorm)]
    for mine, bert_part in pairs:
        assert torch.equal(mine.weight, bert_part.weight) and torch.equal(mine.bias, bert_part.bias)
    assert len(qformer.encoder.layer) == 3
    assert [layer.has_cross_attention for layer in qformer.encoder.layer] == [True, False, True]
    assert qformer.encoder.layer[-1].intermediate is None  # the last text FFN never reaches a query


def test_instruction_changes_the_queries_only_when_instruction_aware():
    features = torch.randn(2, 5, 16)
    aware = _qformer(**SMALL)
    with torch.no_grad():
        asked = aware(features, _context(aware, *QUESTIONS))
        swapped = aware(features, _context(aware, *reversed(QUESTIONS)))
    assert asked.shape == (2, 4, 24)
    assert not torch.allclose(asked, swapped, atol=1e-4)
    blind = _qformer(**SMALL, instruction_aware=False)
    assert blind.context is None  # so the data pipeline encodes no instruction for it
    assert not any("word_embeddings" in n or ".intermediate." in n for n, _ in blind.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(blind(features, _context(aware, *QUESTIONS)),
                                   blind(features, _context(aware, *reversed(QUESTIONS))), rtol=0, atol=0)


def test_an_items_queries_do_not_depend_on_its_batch():
    """Instruction padding is masked and cut: an item alone gives what it gives next to a longer instruction."""
    bridge, features = _qformer(**SMALL), torch.randn(2, 5, 16)
    with torch.no_grad():
        together = bridge(features, _context(bridge, "Shape?", "Which colour are the two shapes on the left side?"))
        alone = bridge(features[:1], _context(bridge, "Shape?"))
    torch.testing.assert_close(together[:1], alone, rtol=0, atol=1e-5)


def test_no_context_reads_the_empty_instruction_and_the_encoder_pickles():
    bridge, features = _qformer(**SMALL), torch.randn(2, 5, 16)
    encode = pickle.loads(pickle.dumps(bridge.context_encoder()))  # DataLoader workers receive it pickled
    with torch.no_grad():
        torch.testing.assert_close(bridge(features), bridge(features, _context(bridge, "", "")), rtol=0, atol=1e-6)
    long = encode(" ".join(["word"] * 40))
    assert long["input_ids"].shape == long["attention_mask"].shape == (16,) and long["attention_mask"].all()


def test_feature_positions_tell_the_queries_where_what_they_read_lies():
    """Cross-attention is blind to the order of the encoder tokens; learned feature positions make the queries
    depend on it, and at zero the Q-Former is InstructBLIP's again."""
    args = {**SMALL, "instruction_aware": False, "dropout": 0.0, "init_range": 0.5}
    placed, plain = _qformer(**args, feature_positions=5), _qformer(**args)
    plain.load_state_dict({k: v for k, v in placed.state_dict().items() if k != "feature_positions"})
    features, swapped = torch.randn(2, 5, 16), [1, 0, 2, 3, 4]
    with torch.no_grad():
        torch.testing.assert_close(plain(features), plain(features[:, swapped]), rtol=0, atol=1e-5)
        assert not torch.allclose(placed(features), placed(features[:, swapped]), atol=1e-3)
        placed.feature_positions.zero_()
        torch.testing.assert_close(placed(features), plain(features), rtol=0, atol=1e-6)
    placed.train()(features).square().sum().backward()
    assert placed.feature_positions.grad.abs().sum() > 0
    assert placed.num_tokens(5) == 4
    with pytest.raises(ConfigError, match=r"args\.feature_positions is 5 but the encoder gives 6 tokens"):
        placed.num_tokens(6)


@pytest.mark.parametrize("args, message", [
    ({"width": 30, "heads": 4, "init": ""}, r"args\.width 30 must be a multiple of args\.heads 4"),
    ({"width": 768}, r"args\.width is 768 but the BERT in args\.init \(minilm-l6\) has hidden_size 384"),
    ({"layers": 7}, r"args\.layers is 7 but the BERT in args\.init \(minilm-l6\) has 6 layers"),
    ({"queries": 0}, r"args\.queries must be at least 1, got 0"),
    ({"init_range": 0}, r"args\.init_range must be positive, got 0"),
    ({"max_instruction_len": 600}, r"args\.max_instruction_len must be in 2\.\.512"),
    ({"init": "no/such/bert"}, r"args\.init: no/such/bert is not a BERT directory"),
    ({"querys": 8}, r"unknown key model\.media\.image\.bridge\.args\.querys.*queries"),
    ({"feature_positions": -1}, r"args\.feature_positions must be 0 \(none\) or the encoder's tokens an item"),
], ids=["heads", "width", "layers", "queries", "init-range", "instruction-len", "init", "unknown-key",
        "feature-positions"])
def test_bad_arguments_are_named_when_the_recipe_loads(args, message):
    with pytest.raises(ConfigError, match=rf"config: .*{message}"):
        load_recipe(None, ["model.encoder={name: clip, args: {arch: mmtune-vit-tiny}}",
                           f"model.bridge={{name: qformer, args: {json.dumps(args)}}}"])


def test_a_bert_of_another_kind_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "position_embedding_type": "relative_key"}))
    with pytest.raises(ConfigError, match=r"args\.init: .* has position_embedding_type 'relative_key'"):
        QFormerArgs(init=str(tmp_path))


def test_t5_recipe_trains_with_the_queries_in_the_encoder_input(tmp_path):
    shards = write_demo_shards(tmp_path / "data", 24, 0, image_size=32)["train"]  # an image in every sample
    cfg = load_recipe("instructblip/t5_tiny.yaml", [f"data.train={shards}", f"train.out_dir={tmp_path / 'run'}",
                                                   "train.steps=4", "train.log_every=1", "train.batch_size=4"])
    summary = train(cfg)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] != losses[0]
    assert summary["step"] == 4
