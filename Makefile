# The README's two commands: `make run` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= ../shared/data
GRAPH  ?= tests/data/cal.cedge

.PHONY: run test bench venv clean

$(STAMP): pyproject.toml engine/storage/kernels.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/dask-datalog run examples/reach.dl -F $(GRAPH) -D out/reach --cluster --stats out/reach-stats.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/single_shard.py --data $(DATA)

clean:
	rm -rf $(VENV) build dist *.egg-info
