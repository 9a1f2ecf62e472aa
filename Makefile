# Quick start: `make demo` and `make test`. Both bootstrap .venv idempotently.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch sits on these machines' local index; an unpinned torch would pull a
# multi-GB CUDA build. Users with GPUs install their own torch first; we install it only if absent.
TORCH_CPU := torch==2.13.0
# Every extra that installs on a CPU-only machine (gpu would conflict with cpu: same module).
EXTRAS := dev,cpu,openvino,plot,serve

.PHONY: demo test lint typecheck clean

$(VENV)/.stamp: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_CPU)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q --no-deps "tensorrt-stubs>=10"  # types only; its deps are NVIDIA-hosted
	touch $@

demo: $(VENV)/.stamp
	$(VENV)/bin/wconv-deploy demo

test: lint typecheck
	$(PY) -m pytest -q

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check wconv_deploy tests benchmarks
	$(VENV)/bin/ruff format --check wconv_deploy tests benchmarks

typecheck: $(VENV)/.stamp
	$(VENV)/bin/mypy wconv_deploy

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache demo-out
