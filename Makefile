# The README's two commands: `make run` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= ../shared/data
GRAPH  ?= tests/data/cal.cedge

.PHONY: run test lint format bench venv clean

$(STAMP): pyproject.toml engine/storage/kernels.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench,lint]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/dask-datalog run examples/reach.dl -F $(GRAPH) -D out/reach --cluster --stats out/reach-stats.json

# The tests, after the lint (.ci/run runs this): a change that does not lint does not land.
# Two pytest processes, a module each at a time (module fixtures start clusters once): much of
# the suite waits (slurmctld's passes, timeouts, pip), so on two cores this halves its time.
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadscope

# ruff (lint and format) over everything, mypy over the package. mypy reads the package through
# .lint/dask_datalog, links to the top-level folders (see [tool.mypy] in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	mkdir -p .lint/dask_datalog
	for d in engine partition spmd cluster; do ln -sfn ../../$$d .lint/dask_datalog/$$d; done
	MYPYPATH=.lint $(BIN)/mypy -p dask_datalog

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/single_shard.py --data $(DATA)

clean:
	rm -rf $(VENV) build dist *.egg-info .lint
