# Every target that runs code creates .venv and installs the project when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODES ?= 4

.PHONY: run test bench sim lint clean fuzz

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

bench: $(STAMP)
	$(BIN)/python -m bench

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
