PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test test-slow test-all install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/lab launch configs/quickstart.yaml

XDIST := -n auto --dist loadgroup

# the default run: every test but those marked slow (a few minutes on 2 cores)
test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST)

# the slow tests alone (long searches, full-size benchmarks, multi-device runs)
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) -m slow

# everything: test and test-slow in one run
test-all: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) -m "slow or not slow"

clean:
	rm -rf $(VENV) lab.db lab.db-wal lab.db-shm runs
