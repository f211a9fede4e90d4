# `make demo` and `make test` each set up .venv themselves on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/system-packages.txt
	sh scripts/sysdeps.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
# --no-compile: Python compiles what is imported, when it is (compiling all of torch up front took ~30 s)
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e ".[all]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n auto --maxprocesses=4 --dist loadfile --durations=15 -q

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check edgetl plugins tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
