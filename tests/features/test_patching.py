"""Patching against independent computations: activation patching equals hooked eager forwards; AtP equals
``(a_clean − a_corrupt) · ∂m/∂a`` from the eager model's own gradient, and activation patching exactly where
the metric is linear in the component; RelP equals the same product with the explicit-form LRP reference
(float64, ``R / a`` as the coefficient); inputs of different length need a position map."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, make_model
from torch import nn

from lxt_fx.composites.registry import resolve_composite
from lxt_fx.features.patching import LengthMismatchError, activation_patching, patching
from lxt_fx.reference import explicit_relevance
from lxt_fx.session import rewritten_graph
from lxt_fx.targets import Contrastive

HEADS, HEAD_DIM = 4, 8


@pytest.fixture(scope="module")
def setup():
    model = make_model("llama", "eager", seed=3)
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(0, VOCAB, (1, 7), generator=gen)
    corrupt = clean.clone()
    corrupt[0, 1], corrupt[0, 4] = (clean[0, 1] + 11) % VOCAB, (clean[0, 4] + 5) % VOCAB
    return model, clean, corrupt


def _metric(model: nn.Module, ids: torch.Tensor, target: Contrastive) -> torch.Tensor:
    logits = model(input_ids=ids).logits[:, -1]
    return logits[:, target.token] - logits[:, target.rival]


def _hooked(model: nn.Module, ids: torch.Tensor, component, value: torch.Tensor | None, target) -> tuple:
    """The metric of an eager forward where ``component``'s activation is replaced by ``value`` (None: kept),
    and that activation as it was; hooks on the HF modules, removed afterwards."""
    layer = model.model.layers[component.layer]
    seen = {}

    def swap(x: torch.Tensor) -> torch.Tensor:
        seen["a"] = x.detach().clone()
        if value is None:
            return x
        x = x.clone()
        if component.kind == "head":
            x[..., component.start:component.stop] = value[..., component.start:component.stop]
        elif component.kind == "resid":
            x[:, component.position] = value[:, component.position]
        else:
            x[...] = value
        return x

    if component.kind == "head":
        handle = layer.self_attn.o_proj.register_forward_pre_hook(lambda m, args: (swap(args[0]),))
    elif component.kind == "mlp":
        handle = layer.mlp.register_forward_hook(lambda m, args, out: swap(out))
    else:
        handle = layer.register_forward_hook(
            lambda m, args, out: (swap(out[0]), *out[1:]) if isinstance(out, tuple) else swap(out))
    try:
        with torch.no_grad():
            m = float(_metric(model, ids, target))
    finally:
        handle.remove()
    return m, seen["a"]


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_activation_patching_equals_hooked_eager_forwards(setup, direction) -> None:
    model, clean, corrupt = setup
    target = Contrastive(3, 9)
    got = activation_patching(model, clean, corrupt, target=target, components=("heads", "mlp", "resid"),
                              direction=direction, batch_size=5)
    assert len(got.components) == 2 * HEADS + 2 + 2 * 7
    base, other = (clean, corrupt) if direction == "noise" else (corrupt, clean)
    ref = float(_metric(model, base, target).detach())
    expected = []
    for c in got.components:
        _, source = _hooked(model, other, c, None, target)
        patched, _ = _hooked(model, base, c, source, target)
        expected.append(ref - patched if direction == "noise" else patched - ref)
    expected = torch.tensor(expected)
    assert expected.abs().max() > 1e-2  # the corruption matters
    torch.testing.assert_close(got.scores["activation"], expected, rtol=1e-4, atol=1e-5)
    assert got.clean == pytest.approx(float(_metric(model, clean, target).detach()), rel=1e-5)


def test_atp_equals_the_eager_gradient_product(setup) -> None:
    model, clean, corrupt = setup
    target = Contrastive(3, 9)
    got = patching(model, clean, corrupt, target=target, components=("heads", "mlp"), methods=("atp",))
    expected = []
    for c in got.components:
        layer = model.model.layers[c.layer]
        module = layer.self_attn.o_proj if c.kind == "head" else layer.mlp
        kept = {}

        def keep(m, args, out=None, _kind=c.kind, kept=kept):
            x = args[0] if _kind == "head" else out
            if x.requires_grad:
                x.retain_grad()
            kept["a"] = x

        handle = module.register_forward_pre_hook(keep) if c.kind == "head" else module.register_forward_hook(keep)
        try:
            _metric(model, clean, target).sum().backward()
            a_clean, grad = kept["a"].detach(), kept["a"].grad
            with torch.no_grad():
                model(input_ids=corrupt)
            a_corrupt = kept["a"].detach()
        finally:
            handle.remove()
            model.zero_grad(set_to_none=True)
        part = slice(c.start, c.stop) if c.start is not None else slice(None)
        expected.append(float(((a_clean - a_corrupt) * grad)[..., part].sum()))
    torch.testing.assert_close(got.scores["atp"], torch.tensor(expected), rtol=1e-4, atol=1e-6)


def test_atp_and_relp_are_exact_where_the_metric_is_linear_in_the_component() -> None:
    """Without the final norm, the logits are linear in the last MLP's output: AtP = activation patching, and
    LRP's rules on that path (linear maps, sums) keep the gradient, so RelP = AtP there."""
    model = make_model("llama", "sdpa", seed=5)
    model.model.norm = nn.Identity()
    gen = torch.Generator().manual_seed(2)
    clean = torch.randint(0, VOCAB, (1, 6), generator=gen)
    corrupt = torch.randint(0, VOCAB, (1, 6), generator=gen)
    target = Contrastive(4, 8)
    est = patching(model, clean, corrupt, target=target, components=("mlp",), layers=[1])
    ap = activation_patching(model, clean, corrupt, target=target, components=est.components)
    assert float(ap.scores["activation"].abs()) > 1e-5
    torch.testing.assert_close(est.scores["atp"], ap.scores["activation"], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(est.scores["relp"], ap.scores["activation"], rtol=1e-4, atol=1e-8)


def test_relp_equals_the_explicit_lrp_coefficient_product(setup) -> None:
    model, clean, corrupt = setup
    got = patching(model, clean, corrupt, components=("heads", "mlp"), methods=("relp",))
    # the reference: explicit-form LRP relevance R at every node of the clean run (float64), R / a_clean its
    # coefficient; the seed is the explained logit (the argmax of the clean run)
    embeds = model.model.embed_tokens(clean).detach()
    tensors = {"inputs_embeds": embeds, "attention_mask": torch.ones_like(clean)}
    graph = rewritten_graph(model, resolve_composite(None, model), tensors, {})
    with torch.no_grad():
        logits = model(input_ids=clean).logits
    token = int(logits[0, -1].argmax())
    seed = torch.zeros_like(logits)
    seed[0, -1, token] = logits[0, -1, token]
    relevance = explicit_relevance(graph, tensors, {"logits": seed}, every_node=True)
    expected = []
    for c in got.components:
        _, a_clean = _hooked(model, clean, c, None, Contrastive(token, 0))
        _, a_corrupt = _hooked(model, corrupt, c, None, Contrastive(token, 0))
        r = relevance[c.node].reshape(a_clean.shape)
        coefficient = r / a_clean.double()
        part = slice(c.start, c.stop) if c.start is not None else slice(None)
        expected.append(float(((a_clean.double() - a_corrupt.double()) * coefficient)[..., part].sum()))
    expected = torch.tensor(expected, dtype=torch.float32)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(got.scores["relp"], expected, rtol=2e-3, atol=1e-4)
    plain = patching(model, clean, corrupt, components=got.components, methods=("atp",))
    assert not torch.allclose(plain.scores["atp"], got.scores["relp"], rtol=1e-2)  # the rules do change it


def test_lengths_must_match_or_be_mapped(setup) -> None:
    model, clean, corrupt = setup
    longer = torch.cat([corrupt[:, :2], torch.tensor([[7]]), corrupt[:, 2:]], 1)
    with pytest.raises(LengthMismatchError, match="position_map"):
        patching(model, clean, longer)
    with pytest.raises(LengthMismatchError, match="one .* per clean position"):
        patching(model, clean, longer, position_map=[0, 1])
    mapping = [0, 1, 3, 4, 5, 6, 7]  # clean position t ↔ position of the same token in the longer input
    mapped = activation_patching(model, clean, longer, components=("mlp",), position_map=mapping)
    est = patching(model, clean, longer, components=("mlp",), position_map=mapping)
    assert mapped.scores["activation"].shape == est.scores["relp"].shape == (2,)
    # the identity map on inputs of one length is the default
    same = patching(model, clean, corrupt, components=("heads",), position_map=list(range(7)))
    default = patching(model, clean, corrupt, components=("heads",))
    torch.testing.assert_close(same.scores["relp"], default.scores["relp"])
