# `make demo` and `make test` each set up .venv themselves on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean venv

# Python caches compiled modules (__pycache__) beside them, so that each process after the first imports
# torch & co. from bytecode. A shell with PYTHONDONTWRITEBYTECODE=1 would make every process (xdist workers,
# agents and CLI chains in the tests) recompile each module it imports from source: 18 s instead of 7 s for
# the test suite's imports. The venv is installed with --no-compile (below), so this is where its cache is made.
unexport PYTHONDONTWRITEBYTECODE

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/system-packages.txt scripts/install_venv.py
	sh scripts/sysdeps.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade -c constraints.txt "pip>=24" uv
# uv, from pip's own package sources: `make venv` took 37 s against 56 s with pip (fresh clones, uv's cache
# empty; benchmarks/NOTES.md). It compiles no bytecode: Python compiles what is imported, when it is
# (compiling all of torch up front took ~30 s)
	$(BIN)/python scripts/install_venv.py all
	touch $(STAMP)

# --max-worker-restart=0: a worker that dies (a native crash in a library) ends the run at once, naming the
# test it died in; with restarts, pytest-xdist 3.8's loadfile scheduling can wait forever for the
# replacement (pytest-dev/pytest-xdist#784, #1378)
test: $(STAMP)
	$(BIN)/python -m pytest -n auto --maxprocesses=4 --dist loadfile --no-loadscope-reorder --max-worker-restart=0 \
		--durations=15 -q

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check edgetl plugins tests benchmarks scripts

clean:
	rm -rf $(VENV) build *.egg-info
