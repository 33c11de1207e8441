"""The objective seam: objectives are objects built from typed args checked when the recipe loads, and a sample
learns from assistant turns or, as an edit triplet, from its target image."""
import pytest

from mmtune.config import load_config
from mmtune.data.sample import Media, Message, Sample, validate
from mmtune.errors import ConfigError, DataError
from mmtune.recipe import check_names


def test_objective_args_are_typed_and_checked_at_load():
    with pytest.raises(ConfigError, match=r"config: unknown key train\.objective_args\.beta"):
        check_names(load_config(None, ["train.objective_args={beta: 0.1}"]))
    with pytest.raises(ConfigError, match=r"model\.kind: unknown name 'llm'; did you mean lm\?"):
        check_names(load_config(None, ["model.kind=llm"]))


def test_edit_triplet_needs_no_assistant_turn_but_a_target():
    turns = [Message("user", "<image>\nmake the square red")]
    validate(Sample("edit", turns, media=[Media("image", "0.png")], target=Media("image", "1.png")))
    with pytest.raises(DataError, match=r"field messages: no assistant turn \(and no target\)"):
        validate(Sample("edit", turns, media=[Media("image", "0.png")]))
    with pytest.raises(DataError, match=r"field target\.kind: an edit target must be an image"):
        validate(Sample("edit", turns, media=[Media("image", "0.png")], target=Media("video", "1.mp4")))
