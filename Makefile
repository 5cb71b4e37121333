# Every target runs in the project's virtual environment, made on first use and reused after:
# `make demo` and `make test` work on a fresh machine whose system Python is externally
# managed (PEP 668, e.g. Debian) without creating or activating a venv by hand.
#
# torch is pinned here (a local CPU wheel); pyproject keeps a range for users.
TORCH_PIN ?= torch==2.13.0
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The install is redone only when pyproject.toml (the dependencies) changes: melbo is installed
# editable, so source edits need nothing.
STAMP := $(VENV)/.melbo-installed

.PHONY: install venv test test-slow lint demo llama-cpp

install: $(STAMP)
venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "could not create $(VENV) with $(PYTHON) -m venv (on Debian/Ubuntu: apt install python3-venv)" >&2; \
	  exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[gemma,dev]'
	@touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports  # the layering contracts in pyproject.toml [tool.importlinter]

demo: $(STAMP)
	$(BIN)/melbo demo

# llama-cpp-python (the `llama-cpp` extra) compiles llama.cpp with the machine's cmake and gcc:
# only bench/llamacpp_control_vector.py and its slow test need it. CPU only, no tools/examples;
# JOBS parallel compile jobs.
JOBS ?= 2
LLAMA_CPP_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
llama-cpp: $(STAMP)
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) \
	  $(BIN)/python -m pip install -e '.[gemma,dev,llama-cpp]'
