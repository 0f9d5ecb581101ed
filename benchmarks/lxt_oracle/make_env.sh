#!/usr/bin/env bash
# The side environment for build_fixtures.py: lxt 2.1 on transformers 4.57.6, torch pinned to the CPU wheel.
# Everything lands under the git-ignored .cache/ of the checkout. Run from the repository root.
set -euo pipefail
export PIP_NO_CACHE_DIR=1
test -x .cache/lxt-venv/bin/python || python3 -m venv .cache/lxt-venv
printf 'torch==2.13.0\ntransformers==4.57.6\n' > .cache/lxt-constraints.txt
.cache/lxt-venv/bin/pip install -q -c .cache/lxt-constraints.txt torch==2.13.0 transformers==4.57.6 safetensors
# lxt's declared dependencies (torchvision, open_clip_torch, zennit, bitsandbytes, matplotlib, ...) are only
# for its vision models and plotting: --no-deps, and build_fixtures.py writes a stub torchvision.
.cache/lxt-venv/bin/pip install -q --no-deps lxt==2.1
