# torch is pinned here (a local CPU wheel); pyproject keeps a range for users.
TORCH_PIN ?= torch==2.13.0
PY ?= python

.PHONY: install test test-slow lint demo

install:
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[gemma,dev]'

test:
	$(PY) -m pytest -q

test-slow:
	$(PY) -m pytest -q -m slow

lint:
	ruff check src tests bench
	mypy

demo:
	melbo demo
