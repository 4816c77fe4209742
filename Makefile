# nmt: every target that runs Python uses the virtual environment in .venv (made by `make install`).
# Hydra overrides pass through ARGS, e.g. make train ARGS="model=rnn_bahdanau train.max_epochs=5".

VENV     ?= .venv
PYTHON   := $(VENV)/bin/python
NMT      := $(VENV)/bin/nmt
ARGS     ?=
CKPT     ?=
INPUT    ?=
OUTPUT   ?=
RUN      ?= runs
NPROC    ?= 1
# On a machine without an NVIDIA GPU, install the CPU build of PyTorch (the default build on
# PyPI brings several GB of CUDA libraries). Override with e.g. TORCH_SPEC="torch==2.6.0".
TORCH_SPEC ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
HAS_GPU  := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)

# Tests never wait on the network: they run with the Hugging Face hub offline.
OFFLINE  := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory  # no "Entering directory" lines in stdout (see translate)
.PHONY: help install test lint format data train translate evaluate score tensorboard bench clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: ## create .venv and install nmt (editable) with its dev tools; CPU PyTorch without a GPU
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
ifeq ($(HAS_GPU),yes)
	$(PYTHON) -m pip install --quiet "torch>=2.4"
else
	$(PYTHON) -m pip install --quiet --retries 1 "$(TORCH_SPEC)" --extra-index-url $(TORCH_CPU_INDEX)
endif
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	@$(PYTHON) -c "import torch; print('nmt installed; torch', torch.__version__, '| CUDA', torch.cuda.is_available())"

test: ## run the test suite (tiny models, CPU; Multi30k tests skip only if the corpus is absent)
	$(OFFLINE) $(PYTHON) -m pytest -q $(ARGS)

lint: ## ruff format check and ruff lint
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: ## apply ruff format and ruff's safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

data: ## prepare the configured corpus (cached: a second run is a cache hit)
	$(NMT) data $(ARGS)

train: ## train (prepares data first); NPROC=N trains on N GPUs/processes with torchrun
ifeq ($(NPROC),1)
	$(NMT) train $(ARGS)
else
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) -m nmt train $(ARGS)
endif

# `make translate CKPT=... < in > out`: stdout carries translations only, so make must not echo
# the command (@). MAKEFLAGS above keeps a calling make from printing "Entering directory"; with
# `make -C DIR translate` add --no-print-directory (or -s) yourself: -C turns that message on.
translate: ## translate INPUT (default stdin) to OUTPUT (default stdout) with CKPT
	@$(NMT) translate translate.ckpt=$(CKPT) $(if $(INPUT),translate.input=$(INPUT)) $(if $(OUTPUT),translate.output=$(OUTPUT)) $(ARGS)

evaluate: ## translate the validation and test sets with CKPT and score them with sacreBLEU
	@$(NMT) evaluate translate.ckpt=$(CKPT) $(ARGS)

score: ## force-decode SRC/TGT (or TSV) with CKPT: logprob, average, tokens per pair
	@$(NMT) score translate.ckpt=$(CKPT) $(if $(SRC),score.source=$(SRC)) $(if $(TGT),score.target=$(TGT)) $(if $(TSV),score.tsv=$(TSV)) $(if $(OUTPUT),score.output=$(OUTPUT)) $(ARGS)

tensorboard: ## serve TensorBoard for RUN (a run directory or a parent of runs)
	$(VENV)/bin/tensorboard --logdir $(RUN)

bench: ## training and decoding benchmarks on the device at hand: tables, JSON in bench_results/
	$(PYTHON) scripts/bench_train.py $(ARGS)
	$(PYTHON) scripts/bench_decode.py --no-cache

clean: ## remove data caches, tool caches, bytecode and bench_results/ (keeps runs/ and .venv)
	rm -rf data/cache .pytest_cache .ruff_cache bench_results
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
