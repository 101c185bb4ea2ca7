# Everything runs inside a virtual environment in the repo (.venv), created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/consistcam demo --out runs/demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts examples
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts examples

bench: $(STAMP)
	$(PY) benchmarks/bench_gradcam.py
	$(PY) benchmarks/bench_attack.py
	$(PY) benchmarks/bench_loading.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
