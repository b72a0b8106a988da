# Two entry points, both idempotent on a fresh machine:
#   make run   -> set up .venv and run the default Adult comparison (10 seeds)
#   make test  -> set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= runs/adult

.PHONY: setup run test bench clean

# constraints.txt pins every package to the version the tests ran with (pyproject.toml has ranges).
$(BIN)/fairtune: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(BIN)/fairtune

setup: $(BIN)/fairtune

run: setup
	$(BIN)/fairtune run --dataset adult --methods tl,svd,win --seeds 10 --out $(OUT)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) runs
