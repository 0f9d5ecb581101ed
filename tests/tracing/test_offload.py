"""Models with accelerate's hooks (cpu_offload, disk_offload, dispatch_model) explain with the same API and
the same relevance as the plain model; the model and its hooks come out of every call exactly as they went in."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

import lxt_fx
from lxt_fx.tracing import capture_count
from lxt_fx.tracing.offload import offloaded_tensors, opened
from tests.conftest import make_model

accelerate = pytest.importorskip("accelerate")

IDS = torch.tensor([[3, 17, 42, 5, 90, 7, 64]])


def _dispatch(model, kind, tmp_path):
    cpu = torch.device("cpu")
    if kind == "cpu_offload":
        return accelerate.cpu_offload(model, execution_device=cpu)
    if kind == "disk_offload":
        return accelerate.disk_offload(model, str(tmp_path), execution_device=cpu)
    n = model.config.num_hidden_layers  # half on cpu, half offloaded to disk, lm_head on disk
    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk",
                  **{f"model.layers.{i}": "disk" if i % 2 else "cpu" for i in range(n)}}
    return accelerate.dispatch_model(model, device_map, main_device="cpu", offload_dir=str(tmp_path))


@pytest.fixture(scope="module")
def plain():
    """The tiny LLaMA and its explanation, shared by the tests of this module."""
    model = make_model("llama")
    return model, lxt_fx.explain(model, IDS)


@pytest.mark.parametrize("kind", ["cpu_offload", "disk_offload", "dispatch_model"])
def test_dispatched_model_explains_like_the_plain_model(plain, kind, tmp_path) -> None:
    plain, expected = plain
    model = _dispatch(copy.deepcopy(plain), kind, tmp_path)
    assert offloaded_tensors(model), "the hooks keep some weights off the device"
    hook_forward = model.__dict__["forward"]
    att = lxt_fx.explain(model, IDS)
    torch.testing.assert_close(att.relevance, expected.relevance, rtol=1e-5, atol=1e-5)
    assert att.target_ids == expected.target_ids
    # the captured program holds meta placeholders, not the weights the hooks keep off the device
    captured = next(iter(sys.modules["lxt_fx.tracing.capture"]._CAPTURES[model].graphs.values()))
    assert captured.offloaded and all(t.is_meta for t in captured.offloaded.keep)
    # the model runs its hooks as before (weights back on meta), and a plain call does not force a new capture
    assert model.__dict__["forward"] is hook_forward
    torch.testing.assert_close(model(IDS).logits, plain(IDS).logits)
    again = lxt_fx.explain(model, IDS, checkpoint="sqrt")
    torch.testing.assert_close(again.relevance, expected.relevance, rtol=1e-5, atol=1e-5)
    if kind == "cpu_offload":  # latent relevance runs a tapped copy of the graph: loaded the same way
        tapped = lxt_fx.explain(model, IDS, capture=["model.layers.1"])
        torch.testing.assert_close(tapped.relevance, expected.relevance, rtol=1e-5, atol=1e-5)
        assert tapped.latents and all(torch.isfinite(v).all() for v in tapped.latents.values())
    assert capture_count(model) == 1


def test_context_on_an_offloaded_model_gives_the_plain_relevance(plain) -> None:
    plain = plain[0]
    model = accelerate.cpu_offload(copy.deepcopy(plain), execution_device=torch.device("cpu"))

    def relevance(m):
        emb = m.get_input_embeddings()(IDS).detach().requires_grad_()
        with lxt_fx.attnlrp.context(m):
            m(inputs_embeds=emb).logits[0, -1].max().backward()
        return (emb * emb.grad).sum(-1)

    torch.testing.assert_close(relevance(model), relevance(plain), rtol=1e-5, atol=1e-5)
    assert all(p.is_meta for p in model.parameters())  # offloaded again after the call


def test_opened_restores_the_model_after_an_exception() -> None:
    model = accelerate.cpu_offload(make_model("llama"), execution_device=torch.device("cpu"))
    before = {n: p for n, p in model.named_parameters()}
    forwards = {id(m): m.__dict__.get("forward") for m in model.modules()}
    with pytest.raises(RuntimeError, match="boom"), opened(model) as tensors:
        assert tensors and not any(p.is_meta for p in model.parameters())
        raise RuntimeError("boom")
    assert all(p is before[n] for n, p in model.named_parameters())
    assert all(m.__dict__.get("forward") is forwards[id(m)] for m in model.modules())
