"""Builders: convert a source data set, once, into mmtune's canonical WebDataset shards.

    from data_builders import build
    report = build("llava", "llava_demo.json", "shards/llava_demo", eval_fraction=0.05)

Each builder turns one input file (a JSON array or JSON Lines, read as a stream) into canonical Samples
(mmtune.data.sample); `build` validates them, splits train/eval and writes the shards. Adding a format is one
module with a `convert` function plus one line in BUILDERS.
"""
from data_builders import alpaca, ip2p, lamm, llava, mimic_it, mllm, oasst, sharegpt, video_chat, vision_flan
from data_builders.build import Builder, BuildReport, build
from data_builders.common import RecordError

BUILDERS: dict[str, Builder] = {
    "alpaca": Builder(alpaca.convert),
    "sharegpt": Builder(sharegpt.convert),
    "oasst": Builder(oasst.convert, read=oasst.read_trees),
    "llava": Builder(llava.convert),
    "mllm": Builder(mllm.convert),
    "ip2p": Builder(ip2p.convert),
    "mimic-it": Builder(mimic_it.convert, read=mimic_it.read_episodes),
    "vision-flan": Builder(vision_flan.convert),
    "lamm": Builder(lamm.convert),
    "video-chat": Builder(video_chat.convert),
}

__all__ = ["BUILDERS", "Builder", "BuildReport", "RecordError", "build"]
