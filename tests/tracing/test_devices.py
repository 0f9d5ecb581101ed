"""Models dispatched by accelerate over several execution devices (``device_map="auto"``): the graph moves
activations where the hooks did, parameters stay where they live, relevance equals the model on one device.

This machine may have no GPU. Three tests still run here:
- where each node runs, read off the export (the second device is ``meta``, which exports but cannot run);
- the whole explain path with two execution devices that are the same memory (``cpu`` and ``cpu:0`` are
  different devices to accelerate's hooks and to lxt-fx's dispatch logic, one place to torch);
- the capture key follows the device map.
The run on a real second device needs CUDA and is skipped otherwise (benchmarks/devices.py runs it and
measures per-device memory on a lent GPU).
"""

from __future__ import annotations

import collections
import copy

import pytest
import torch

import lxt_fx
from lxt_fx.tracing.capture import signature_of
from lxt_fx.tracing.offload import device_map_key, execution_devices, opened
from tests.conftest import make_model

accelerate = pytest.importorskip("accelerate")

IDS = torch.tensor([[3, 17, 42, 5, 90, 7, 64]])


def _device_map(model, other: str | int, offload_last: bool = False) -> dict:
    """Layers alternating between ``cpu`` and ``other``; the rest on ``cpu`` (the last layer on disk if asked)."""
    n = model.config.num_hidden_layers
    layers = {f"model.layers.{i}": other if i % 2 else "cpu" for i in range(n)}
    if offload_last:
        layers[f"model.layers.{n - 1}"] = "disk"
    return {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu", **layers}


def _hooks(model) -> dict:
    return {path: (m.__dict__.get("forward"), m.__dict__.get("_hf_hook")) for path, m in model.named_modules()}


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs_embeds):
        return self.model(inputs_embeds=inputs_embeds, use_cache=False).logits


def test_the_export_runs_each_layer_on_its_own_device_and_moves_activations_between_them() -> None:
    model = accelerate.dispatch_model(make_model("llama", layers=4), _device_map(make_model("llama", layers=4),
                                                                                   "meta"), main_device="cpu")
    assert {str(d) for d in execution_devices(model).values()} == {"cpu", "meta"}
    before = _hooks(model)
    emb = model.get_input_embeddings()(IDS).detach()
    with opened(model):
        program = torch.export.export(_Logits(model), (emb,), strict=False)
    assert _hooks(model) == before  # the hooks' wrappers are back, object for object
    where = collections.defaultdict(set)
    moves = []
    for node in program.graph.nodes:
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            continue
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        path = stack[-1][0] if stack else ""
        if ".layers." in path:
            where[int(path.split(".layers.")[1].split(".")[0])].add(value.device.type)
        args = node.all_input_nodes
        if args and isinstance(args[0].meta.get("val"), torch.Tensor) \
                and args[0].meta["val"].device.type != value.device.type:
            moves.append((args[0].meta["val"].device.type, value.device.type))
    # every op of a layer runs on that layer's device (odd layers on the second device)
    assert dict(where) == {0: {"cpu"}, 1: {"meta"}, 2: {"cpu"}, 3: {"meta"}}
    # hidden states cross into and out of each odd layer (plus the mask and rotary tables into it)
    assert moves.count(("meta", "cpu")) >= 2 and moves.count(("cpu", "meta")) >= 2
    # nothing gathered: each weight stays on its own device in the exported program
    for name, value in program.state_dict.items():
        if ".layers." in name:
            layer = int(name.split(".layers.")[1].split(".")[0])
            assert value.device.type == ("meta" if layer % 2 else "cpu"), name


def _plain_and_split(offload_last: bool, tmp_path):
    plain = make_model("llama", layers=4)
    # two execution devices as the hooks see them (``cpu`` and ``cpu:0``); torch runs both on the same memory,
    # so this exercises the dispatch logic (the moving wrappers, the key, the placeholders) without a GPU
    split = copy.deepcopy(plain)
    if offload_last:  # the last layer's weights on disk, loaded by its hook
        split = accelerate.dispatch_model(split, _device_map(plain, "cpu", True), main_device="cpu",
                                          offload_dir=str(tmp_path))
    else:
        accelerate.hooks.add_hook_to_module(split, accelerate.hooks.AlignDevicesHook("cpu", io_same_device=True))
    for i, layer in enumerate(split.model.layers):
        device = torch.device("cpu", 0) if i % 2 else torch.device("cpu")
        if "_hf_hook" in layer.__dict__:
            layer._hf_hook.execution_device = device
        else:
            accelerate.hooks.add_hook_to_module(layer, accelerate.hooks.AlignDevicesHook(device))
    return plain, split


@pytest.mark.parametrize("offload_last", [False, True])
def test_two_execution_devices_explain_like_the_model_on_one(offload_last, tmp_path) -> None:
    plain, split = _plain_and_split(offload_last, tmp_path)
    assert len({str(d) for d in execution_devices(split).values()}) == 2
    expected = lxt_fx.explain(plain, IDS)
    before = _hooks(split)
    for checkpoint in (None, "sqrt"):
        att = lxt_fx.explain(split, IDS, checkpoint=checkpoint)
        torch.testing.assert_close(att.relevance, expected.relevance, rtol=1e-5, atol=1e-5)
    assert _hooks(split) == before
    with lxt_fx.attnlrp.context(split):
        emb = split.get_input_embeddings()(IDS).detach().requires_grad_()
        split(inputs_embeds=emb).logits[0, -1].max().backward()
    assert _hooks(split) == before
    torch.testing.assert_close((emb * emb.grad).sum(-1), expected.relevance, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split(IDS).logits, plain(IDS).logits)  # the model runs its hooks as before


def test_the_capture_is_keyed_by_the_device_map(tmp_path) -> None:
    plain, split = _plain_and_split(False, tmp_path)
    emb = plain.get_input_embeddings()(IDS)
    assert device_map_key(plain) == ""
    key = signature_of(split, {"inputs_embeds": emb}, {}).key()
    split.model.layers[1]._hf_hook.execution_device = torch.device("cpu")  # layer 1 moves to the main device
    assert signature_of(split, {"inputs_embeds": emb}, {}).key() != key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: layers alternate between 'cpu' and cuda:0")
@pytest.mark.parametrize("offload_last", [False, True])
def test_cpu_and_gpu_layers_explain_like_the_model_on_one_device(offload_last, tmp_path) -> None:
    plain = make_model("llama", layers=4)
    expected = lxt_fx.explain(plain, IDS)
    split = accelerate.dispatch_model(copy.deepcopy(plain), _device_map(plain, 0, offload_last), main_device="cpu",
                                      offload_dir=str(tmp_path))
    assert {d.type for d in execution_devices(split).values()} == {"cpu", "cuda"}
    assert split.model.layers[1].mlp.up_proj.weight.device.type == "cuda"
    before = _hooks(split)
    for checkpoint in (None, "sqrt"):
        att = lxt_fx.explain(split, IDS, checkpoint=checkpoint)
        torch.testing.assert_close(att.relevance.cpu(), expected.relevance, rtol=1e-5, atol=1e-5)
    assert _hooks(split) == before
    assert split.model.layers[1].mlp.up_proj.weight.device.type == "cuda"  # nothing moved
