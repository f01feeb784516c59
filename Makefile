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

# each test file on one worker: its tests share the module fixtures (test_cli's launched run)
# and the functions XLA compiled for it, which a per-test spread compiles in both processes
# (339 s against 403 s spread per test, run one after the other alone on 2 cores)
XDIST := -n auto --dist loadfile

# the default run: every test but those marked slow (a few minutes on 2 cores)
test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST)

# the slow tests alone (long searches, full-size benchmarks, multi-device runs). Plain load
# balancing: pytest-xdist 3.8 hangs when it replaces a crashed worker under loadgroup, and a test
# that hangs ends its worker after 20 minutes (the longest takes about 5), so a failure here is
# reported, never a run that waits out CI.
SLOW := -n auto --dist load -o faulthandler_timeout=1200 -o faulthandler_exit_on_timeout=true
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q $(SLOW) -m slow

# everything: test and test-slow in one run
test-all: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) -m "slow or not slow"

clean:
	rm -rf $(VENV) lab.db lab.db-wal lab.db-shm runs
