# Two entry points: `make demo` (quickstart on the embedded default) and `make test`.
# Each installs what it needs into .venv: the demo the training and evaluation extras, the tests
# everything (the `dev` extra).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install demo test test-shuffled test-slow machine lint bench clean

# PyTorch first, pinned: pip takes these wheels from the local disk where they lie, as on the CI
# machine; the extras then accept the torch already there.
$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	touch $@

$(VENV)/.demo: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install --quiet -e ".[eval]"
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.dev

demo: $(VENV)/.demo
	$(VENV)/bin/latentspace quickstart

test: $(VENV)/.dev
	$(PY) -m pytest -q

# The suite in a random order: modules shuffled, and the tests within each. The seed is printed
# first; `make test-shuffled SEED=N` replays that order. (`make test` keeps the file order.)
test-shuffled: $(VENV)/.dev
	@seed=$${SEED:-$$($(PY) -c 'import random; print(random.randint(1, 999999))')}; \
	echo "test order seed $$seed (replay: make test-shuffled SEED=$$seed)"; \
	$(PY) -m pytest -q --random-order-bucket=module --random-order-seed=$$seed

test-slow: $(VENV)/.dev
	$(PY) -m pytest -q -m slow

# The CPU, the features that decide its fast paths (AVX2, AVX-512, VNNI, bf16, AMX) and its
# measured matmul rates: printed before the tests in CI, beside every time we report.
machine: $(VENV)/.torch
	$(PY) benchmarks/machine.py

# ruff (lint and format check) over the whole tree, mypy on the public API (pyproject.toml)
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(VENV)/.dev
	$(PY) benchmarks/quickstart.py

clean:
	rm -rf $(VENV) artifacts
