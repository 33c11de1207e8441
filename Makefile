# `make demo` and `make test` set up .venv on first use (pinned by requirements/lock.txt), then run.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lock
setup: .venv/.installed

.venv/.installed: pyproject.toml requirements/lock.txt scripts/setup.sh
	bash scripts/setup.sh
	touch $@

demo: setup
	.venv/bin/mmtune demo

test: setup
	$(PY) -m pytest -q

lock:
	.venv/bin/pip freeze --exclude-editable | grep -v '^mmtune' > requirements/lock.txt
