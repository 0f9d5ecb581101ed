"""The capture cache on disk: a second model instance (as in a second process) reads the graph instead of
exporting, binds it to its own parameters and explains exactly as a fresh export; a changed key, a tampered,
foreign or truncated file captures again with a named warning."""

from __future__ import annotations

import json
import warnings
import zlib

import pytest
import torch
from conftest import make_model

import lxt_fx
from lxt_fx.tracing import CaptureCacheWarning, capture_count, disk_cache
from lxt_fx.tracing.capture import _CAPTURES

IDS = torch.tensor([[3, 5, 7, 9, 11, 2]])


def tiny(seed: int = 0):
    return make_model("llama", seed=seed, layers=1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LXT_FX_CACHE", str(tmp_path))
    return tmp_path


def _source(model) -> list[str]:
    return [g.source for g in _CAPTURES[model].graphs.values()]


def _files(folder) -> list:
    return sorted(folder.glob(f"*{disk_cache.SUFFIX}"))


def test_second_instance_reads_the_graph_and_explains_identically(cache, monkeypatch) -> None:
    monkeypatch.setenv("LXT_FX_CACHE", "off")
    reference = lxt_fx.explain(tiny(seed=1), IDS).relevance  # never cached: a plain export
    assert _files(cache) == []
    monkeypatch.setenv("LXT_FX_CACHE", str(cache))
    first = tiny()
    lxt_fx.explain(first, IDS)
    assert capture_count(first) == 1 and _source(first) == ["export"] and len(_files(cache)) == 1
    # another instance with other weights (seed 1) and the same key: the graph comes from disk, the weights are
    # the live model's own, so it explains exactly as the uncached export of that model
    second = tiny(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptureCacheWarning)
        got = lxt_fx.explain(second, IDS)
    assert capture_count(second) == 0 and _source(second) == ["disk"]
    torch.testing.assert_close(got.relevance, reference, rtol=0, atol=0)
    # the parameters are the model's objects: an in-place change is seen by the loaded graph as by eager
    gm = _CAPTURES[second].graphs[next(iter(_CAPTURES[second].graphs))].module()
    assert gm.get_parameter("model.lm_head.weight") is second.lm_head.weight
    with torch.no_grad():
        second.model.layers[0].mlp.down_proj.weight.mul_(3.0)
        emb = second.get_input_embeddings()(IDS)
        eager = second(inputs_embeds=emb, attention_mask=torch.ones_like(IDS)).logits
        graph = gm({"attention_mask": torch.ones_like(IDS), "inputs_embeds": emb})["logits"]
    torch.testing.assert_close(graph, eager, rtol=0, atol=0)


def test_no_weights_are_stored(cache) -> None:
    model = tiny()
    with torch.no_grad():  # a recognizable weight: its bytes would appear in the payload if stored
        model.lm_head.weight.copy_(torch.full_like(model.lm_head.weight, 1.2345678))
    lxt_fx.explain(model, IDS)
    (path,) = _files(cache)
    raw = path.read_bytes()
    payload = zlib.decompress(raw[raw.index(b"\n") + 1:])
    marker = torch.tensor([1.2345678] * 4).numpy().tobytes()
    assert marker not in payload and b"1.2345678" not in payload
    body = json.loads(payload)
    assert body["graph"]["attrs"]["model.lm_head.weight"] == {"live": [[96, 32], "float32", True]}


def test_a_changed_key_captures_again(cache, monkeypatch) -> None:
    lxt_fx.explain(tiny(), IDS)
    other = tiny()
    other.config.rms_norm_eps = 1e-3  # a config field: another key (the eps is baked into the graph)
    lxt_fx.explain(other, IDS)
    assert capture_count(other) == 1
    monkeypatch.setattr(disk_cache, "_version", lambda dist: "99.0" if dist == "transformers" else "1")
    newer = tiny()
    lxt_fx.explain(newer, IDS)  # another transformers version
    assert capture_count(newer) == 1
    assert len(_files(cache)) == 3


def _rewrite(path, edit) -> None:
    raw = path.read_bytes()
    newline = raw.index(b"\n")
    header, payload = json.loads(raw[:newline]), raw[newline + 1:]
    header, payload = edit(header, payload)
    path.write_bytes(json.dumps(header).encode() + b"\n" + payload)


def _reseal(header, body):
    payload = zlib.compress(json.dumps(body).encode())
    header.update(sha256=disk_cache._sha(payload), size=len(payload))
    return header, payload


def _flip(header, payload):
    return header, payload[:100] + bytes([payload[100] ^ 1]) + payload[101:]


def _foreign(header, payload):
    header["key"]["model_class"] = "somewhere.Else"
    return header, payload


def _evil_target(header, payload):  # checksum recomputed: only the decoder's allow-list stops it
    body = json.loads(zlib.decompress(payload))
    node = next(n for n in body["graph"]["nodes"] if n["op"] == "call_function")
    node["target"] = {"fn": ["os", "system"]}
    return _reseal(header, body)


def _evil_shape(header, payload):  # a graph for another shape of a weight, checksum recomputed
    body = json.loads(zlib.decompress(payload))
    body["graph"]["attrs"]["model.lm_head.weight"]["live"][0] = [97, 32]
    return _reseal(header, body)


def _truncate(header, payload):
    return header, payload[: len(payload) // 2]


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    """(name, bytes) of a stored capture of ``tiny()``, and the relevance of its export (one export)."""
    folder = tmp_path_factory.mktemp("good")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LXT_FX_CACHE", str(folder))
        reference = lxt_fx.explain(tiny(), IDS).relevance
    (path,) = _files(folder)
    return path.name, path.read_bytes(), reference


@pytest.mark.parametrize("edit, why", [(_flip, "checksum"), (_foreign, "another model"),
                                       (_evil_target, "os.system"), (_evil_shape, "lm_head.weight"),
                                       (_truncate, "checksum")])
def test_a_tampered_file_is_ignored_with_a_warning(cache, good_file, edit, why) -> None:
    name, raw, reference = good_file
    (cache / name).write_bytes(raw)
    with pytest.MonkeyPatch.context() as mp:  # the good file as it is loads, without warning
        mp.setattr(disk_cache, "path_for", lambda folder, k: cache / name)
        with warnings.catch_warnings():
            warnings.simplefilter("error", CaptureCacheWarning)
            assert disk_cache.load(_entry(tiny()), _stored_key(raw)) is not None
    _rewrite(cache / name, edit)
    model = tiny()
    with pytest.warns(CaptureCacheWarning, match=why):
        got = lxt_fx.explain(model, IDS)
    assert capture_count(model) == 1  # exported afresh: same relevance
    torch.testing.assert_close(got.relevance, reference, rtol=0, atol=0)
    if edit is _flip:  # the fresh export replaced the bad file
        again = tiny()
        lxt_fx.explain(again, IDS)
        assert capture_count(again) == 0


def _entry(model):
    from lxt_fx.tracing.capture import _Entry

    return _Entry(model, {"use_cache": False})


def _stored_key(raw: bytes) -> dict:
    return json.loads(raw[: raw.index(b"\n")])["key"]


def test_garbage_file_and_unwritable_folder(cache, monkeypatch) -> None:
    model = tiny()
    key = disk_cache.cache_key(model, "sig")
    disk_cache.path_for(cache, key).write_bytes(b"\x00not a capture")
    with pytest.warns(CaptureCacheWarning, match="ignored"):
        assert disk_cache.load(model, key) is None
    blocker = cache / "file"
    blocker.write_text("")
    monkeypatch.setenv("LXT_FX_CACHE", str(blocker))
    with pytest.warns(CaptureCacheWarning, match="not writable"):
        lxt_fx.explain(model, IDS)
    monkeypatch.setenv("LXT_FX_CACHE", "off")
    assert disk_cache.cache_dir() is None
    monkeypatch.delenv("LXT_FX_CACHE")
    assert disk_cache.cache_dir() == disk_cache.Path.home() / ".cache" / "lxt-fx"


class _Threshold(torch.nn.Module):
    """Doubles a sequence longer than 4: export (dynamic sequence) specialises the graph to sizes > 4."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        x = self.proj(inputs_embeds)
        return x * 2 if inputs_embeds.shape[1] > 4 else x


def test_a_graph_from_disk_keeps_the_export_input_constraints(cache) -> None:
    """The stored graph of a sequence of 6 holds the export's range seq > 4: a sequence of 3 breaks it, and is
    captured again (from disk as from memory) instead of silently doubling; the eager module is the reference."""
    from lxt_fx.tracing.capture import capture

    torch.manual_seed(0)
    fresh = _Threshold().eval()
    long, short = torch.randn(2, 6, 4), torch.randn(2, 3, 4)
    first = capture(fresh, {"inputs_embeds": long})
    assert first.source == "export" and first.admits({"inputs_embeds": short}) is not None
    assert len(_files(cache)) == 1

    loaded = _Threshold().eval()
    loaded.load_state_dict(fresh.state_dict())
    from_disk = capture(loaded, {"inputs_embeds": long})
    assert from_disk.source == "disk"
    assert from_disk.guards == first.guards  # the constraints came back from the file
    why = from_disk.admits({"inputs_embeds": short})
    assert why is not None and "inputs_embeds.size(1) is 3, outside the range [5" in why
    assert from_disk.admits({"inputs_embeds": long.double()}) is not None  # dtype
    assert from_disk.admits({"inputs_embeds": torch.randn(2, 6, 5)}) is not None  # a fixed size
    with torch.no_grad():
        torch.testing.assert_close(from_disk.module()({"inputs_embeds": long})["output"], loaded(long))
        # same behaviour for the disk-loaded and the in-memory capture: captured again for these inputs (the
        # second from the file the first one wrote), never the doubling graph
        for model, source in ((loaded, "export"), (fresh, "disk")):
            again = capture(model, {"inputs_embeds": short})
            assert again.source == source and again.admits({"inputs_embeds": short}) is None
            torch.testing.assert_close(again.module()({"inputs_embeds": short})["output"], model(short))


def test_a_graph_from_disk_is_decoded_once_and_bound_to_the_live_tensors(cache, monkeypatch) -> None:
    """The module the loader decoded to check the file is the first one handed out (one decode per read), while
    it reads the model's own tensors; a later module is a new decode, and one after a tensor was swapped binds
    the new tensor, exactly as a fresh decode does. The reference: the eager model."""
    from lxt_fx.tracing import graph_codec
    from lxt_fx.tracing.capture import capture

    torch.manual_seed(0)
    capture(_Threshold().eval(), {"inputs_embeds": torch.randn(2, 6, 4)})  # writes the file
    decodes = []
    real = disk_cache.decode
    monkeypatch.setattr(disk_cache, "decode", lambda *a: decodes.append(real(*a)) or decodes[-1])
    x = torch.randn(2, 6, 4)
    for swap in (False, True):
        model = _Threshold().eval()
        captured = capture(model, {"inputs_embeds": x})
        assert captured.source == "disk" and len(decodes) == 1
        if swap:  # a new parameter object under the same name, between the read and the first module
            model.proj.weight = torch.nn.Parameter(torch.randn_like(model.proj.weight))
        first = captured.module()
        assert (first is decodes[0]) is not swap and len(decodes) == 1 + swap
        assert first.get_parameter("model.proj.weight") is model.proj.weight
        second = captured.module()
        assert second is decodes[-1] and second is not first and len(decodes) == 2 + swap
        assert graph_codec.same_graph(first, second) is None
        with torch.no_grad():
            for gm in (first, second):
                torch.testing.assert_close(gm({"inputs_embeds": x})["output"], model(x), rtol=0, atol=0)
        decodes.clear()
