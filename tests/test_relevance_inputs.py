"""Every floating-point tensor input carries relevance unless the caller says otherwise; positional example
inputs bind to the forward signature; nothing on the relevance path is a named error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lxt_fx
from lxt_fx.rules import Identity
from lxt_fx.session import ExampleInputsError, NoRelevancePathError, RelevanceInputError


class Toy(nn.Module):
    """Linear → sin → softmax·h → Linear, with an input called ``x``."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sin(self.inp(x))
        return self.out(torch.softmax(h, dim=-1) * h)


class TwoInputs(nn.Module):
    """``y = W a + b_scale * c``: two float inputs; ``scale_mask`` a float mask that carries nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, a: torch.Tensor, c: torch.Tensor, scale_mask: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(a)) + c * scale_mask


def _toy() -> tuple[Toy, torch.Tensor]:
    torch.manual_seed(0)
    return Toy().eval(), torch.randn(2, 5, 4)


def test_a_toy_input_called_x_is_on_the_relevance_path_and_strict_names_sin() -> None:
    model, x = _toy()
    with pytest.raises(lxt_fx.UnhandledOpError, match="sin"):
        lxt_fx.attnlrp.rewrite(model, {"x": x}, strict=True)


def test_with_a_rule_for_sin_the_rules_apply_and_relevance_is_identity_through_sin() -> None:
    model, x = _toy()
    composite = lxt_fx.attnlrp.extend([(torch.ops.aten.sin.default, Identity())])
    gm, report = composite.rewrite(model, {"x": x}, strict=True)
    rules = report.rule_counts()
    assert report.path_nodes > 0 and not report.unhandled
    assert rules.get("identity") == 1 and sum(rules.values()) >= 2  # sin, and the softmax·h product

    # Independent reference: the explicit (relevance-in, relevance-out) form of each rule, by hand, seeding
    # R = y₀ at the first output. ε-LRP (ε → 0) through the last Linear: R_p = p ⊙ W[0]; the product
    # p = s ⊙ h (uniform): R_s = R_p / 2 and ½ R_p to h; softmax (deep Taylor): R_h += h ⊙ (R_s − s Σ R_s);
    # sin (identity): R_z = R_h; the first Linear (ε → 0): R_x = x ⊙ Wᵀ(R_z / z).
    with torch.no_grad():
        z = model.inp(x)
        h = torch.sin(z)
        s = torch.softmax(h, -1)
        r_p = (s * h) * model.out.weight[0]
        r_s, r_h = r_p / 2, r_p / 2
        r_h = r_h + h * (r_s - s * r_s.sum(-1, keepdim=True))
        expected = x * ((r_h / z) @ model.inp.weight)

    xs = x.clone().requires_grad_(True)
    with composite.context(model):
        model(xs)[..., 0].sum().backward()
    torch.testing.assert_close(xs * xs.grad, expected, atol=1e-5, rtol=1e-4)  # ε = 1e-6 in sin(z)/z


def test_context_on_the_toy_model_is_not_the_plain_gradient() -> None:
    model, x = _toy()
    composite = lxt_fx.attnlrp.extend([(torch.ops.aten.sin.default, Identity())])
    plain = x.clone().requires_grad_(True)
    model(plain)[..., 0].sum().backward()
    xs = x.clone().requires_grad_(True)
    with composite.context(model):
        model(xs)[..., 0].sum().backward()
    assert not torch.allclose(xs.grad, plain.grad)


def test_positional_example_inputs_bind_to_the_forward_signature() -> None:
    model, x = _toy()
    gm_kw, report_kw = lxt_fx.attnlrp.rewrite(model, {"x": x})
    gm_pos, report_pos = lxt_fx.attnlrp.rewrite(model, (x,))
    assert gm_pos is gm_kw  # the same cached graph
    assert report_pos.path_nodes == report_kw.path_nodes > 0
    gm_one, _ = lxt_fx.attnlrp.rewrite(model, x)
    assert gm_one is gm_kw
    with pytest.raises(ExampleInputsError, match="Toy.forward"):
        lxt_fx.attnlrp.rewrite(model, (x, x))


def test_nothing_on_the_relevance_path_is_a_named_error() -> None:
    class Ignores(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            return self.lin(self.lin.weight.new_ones(ids.shape[0], 4)) + 0 * ids[:, :1]

    model = Ignores()
    with pytest.raises(NoRelevancePathError, match="x"):
        lxt_fx.attnlrp.rewrite(model, {"x": torch.randn(3, 4), "ids": torch.ones(3, 2, dtype=torch.long)})
    with pytest.raises(NoRelevancePathError, match="floating-point"):
        lxt_fx.attnlrp.rewrite(nn.Embedding(5, 4), {"input": torch.ones(2, 3, dtype=torch.long)})
    with lxt_fx.attnlrp.context(model), pytest.raises(NoRelevancePathError):
        model(torch.randn(3, 4), torch.ones(3, 2, dtype=torch.long))


def test_relevance_inputs_override_and_masks_stay_out_by_default() -> None:
    torch.manual_seed(0)
    model = TwoInputs()
    a, c, mask = torch.randn(2, 4), torch.randn(2, 4), torch.rand(2, 4)
    gm, report = lxt_fx.attnlrp.rewrite(model, {"a": a, "c": c, "scale_mask": mask})
    default_path = report.path_nodes
    # only ``a``: tanh gets its rule, the c-branch is off the path
    _, only_a = lxt_fx.attnlrp.rewrite(model, {"a": a, "c": c, "scale_mask": mask}, relevance_inputs=["a"])
    assert only_a.path_nodes < default_path
    # the float mask carries when named: c * scale_mask becomes a product of two carrying tensors
    _, with_mask = lxt_fx.attnlrp.rewrite(model, {"a": a, "c": c, "scale_mask": mask},
                                          relevance_inputs=["a", "c", "scale_mask"])
    assert "uniform" in with_mask.rule_counts() and "uniform" not in report.rule_counts()
    with pytest.raises(RelevanceInputError, match="nope"):
        lxt_fx.attnlrp.rewrite(model, {"a": a, "c": c, "scale_mask": mask}, relevance_inputs=["nope"])
    # in the context the named inputs get relevance, the others none
    xa, xc = a.clone().requires_grad_(True), c.clone().requires_grad_(True)
    with lxt_fx.attnlrp.context(model, relevance_inputs=["a"]):
        model(xa, xc, mask).sum().backward()
    assert xa.grad is not None


def test_check_reads_relevance_at_any_float_input() -> None:
    """``lxt_fx.check`` on a model whose input is ``x`` (before: InputError "no relevance input"): the books
    of the toy's rewritten graph, with a rule for ``sin``, by keyword and by position."""
    model, x = _toy()
    composite = lxt_fx.attnlrp.extend([(torch.sin, Identity())])
    for inputs in ({"x": x}, x):
        report = lxt_fx.check(model, inputs, composite=composite)
        assert not report.unhandled
        assert report.zero_bias is not None and report.zero_bias.verdict().status == "closes"


def test_a_layout_models_boxes_are_positions_and_carry_nothing_by_default() -> None:
    """Token boxes (``bbox``, page coordinates of a layout model) are embedded as sinusoids and added to the
    token embeddings like position ids: off the relevance path, so ``sin``/``cos`` of them need no rule; named
    in ``relevance_inputs`` they carry, and then ``sin`` is on the path."""

    class Layout(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.box = nn.Linear(8, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, inputs_embeds: torch.Tensor, bbox: torch.Tensor) -> torch.Tensor:
            angles = bbox[..., None] * torch.arange(1, 3, dtype=bbox.dtype)
            sinusoid = torch.cat([torch.sin(angles), torch.cos(angles)], -1).flatten(-2)
            return self.out(inputs_embeds + self.box(sinusoid))

    torch.manual_seed(0)
    model, call = Layout(), {"inputs_embeds": torch.randn(2, 3, 4), "bbox": torch.rand(2, 3, 2)}
    _, report = lxt_fx.attnlrp.rewrite(model, call)
    assert not report.unhandled
    _, named = lxt_fx.attnlrp.rewrite(model, call, relevance_inputs=["inputs_embeds", "bbox"])
    assert {str(r.op) for r in named.unhandled} >= {"aten.sin.default", "aten.cos.default"}
    checked = lxt_fx.check(model, call)
    assert not checked.unhandled and checked.zero_bias.verdict().status == "closes"
