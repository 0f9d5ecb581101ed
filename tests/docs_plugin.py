"""pytest plugin for the Python blocks of ``README.md`` and ``docs/*.md``, run by pytest-markdown-docs:

    python -m pytest -p tests.docs_plugin --markdown-docs README.md docs/

Every ```` ```python ```` block runs as written, as its own test (```` ```python continuation ```` runs
after the blocks before it in the same file, as the reader would). One thing is shared across blocks:
:func:`lxt_fx.models.load` returns the same ``(model, tokenizer)`` for the same name and dtype within the
session, so SmolLM2 loads once (~14 s) and later blocks reuse its captured graph. That is sound because no
block changes a model's weights (``check`` asserts it leaves the ``state_dict`` bit-identical).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test-docs` runs two workers on two cores: one thread each
    import torch

    torch.set_num_threads(1)
# The capture cache on disk goes into the checkout (as with make), never into ~/.cache.
os.environ.setdefault("LXT_FX_CACHE", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                   ".cache", "lxt-fx"))


@pytest.fixture(scope="session")
def _loaded_models() -> dict[tuple[str, Any], Any]:
    return {}


@pytest.fixture(autouse=True)
def _one_load_per_model(monkeypatch: pytest.MonkeyPatch, _loaded_models: dict) -> Iterator[None]:
    """``lxt_fx.models.load``, memoized per (name, dtype) for the blocks of this session."""
    import torch
    from transformers.utils import logging as hf_logging

    from lxt_fx import models

    load = models.load
    hf_logging.disable_progress_bar()

    def shared(name_or_path: Any, dtype: torch.dtype = torch.float32) -> Any:
        key = (str(name_or_path).lower(), dtype)
        if key not in _loaded_models:
            _loaded_models[key] = load(name_or_path, dtype)
        return _loaded_models[key]

    monkeypatch.setattr(models, "load", shared)
    yield
