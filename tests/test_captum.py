"""``lxt_fx.captum.LayerAttnLRP``: Captum's conventions, the relevance ``explain`` gives."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from helpers import word_tokenizer

import lxt_fx
from lxt_fx.captum import CaptumInputError, LastTokenLogits, LayerAttnLRP

captum_attr = pytest.importorskip("captum.attr")
WORDS = [f"w{i}" for i in range(94)]


def _rel_close(got: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    assert (got - ref).abs().max() <= rel * ref.abs().max(), (got, ref)


def test_attribute_equals_explain_row_by_row_and_integrated_gradients_takes_the_same_call() -> None:
    model = make_model("llama")
    torch.manual_seed(3)
    ids = torch.randint(2, 96, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # a right-padded row
    targets = [5, 17]
    lrp = LayerAttnLRP(model)
    assert isinstance(lrp, captum_attr.LayerGradientXActivation)
    attr = lrp.attribute(ids, target=targets, additional_forward_args=(mask,))
    assert attr.shape == (2, 9, model.config.hidden_size)
    ref = lxt_fx.explain(model, ids, attention_mask=mask, target=torch.tensor(targets))
    for r in range(2):
        _rel_close(attr[r].sum(-1) * mask[r], ref.relevance[r], 1e-6)
    # embeddings as inputs: relevance read at them, the same numbers
    embeds = model.get_input_embeddings()(ids).detach()
    by_embeds = lrp.attribute(embeds, target=targets, additional_forward_args=(mask,))
    torch.testing.assert_close(by_embeds, attr, rtol=1e-6, atol=1e-9)
    # target=None: the argmax, as explain's default
    default = lrp.attribute(ids[:1])
    _rel_close(default[0].sum(-1), lxt_fx.explain(model, ids[:1]).relevance[0], 1e-6)
    # Captum's own Integrated Gradients runs with the same call shape and gives the same shape
    lig = captum_attr.LayerIntegratedGradients(LastTokenLogits(model), model.get_input_embeddings())
    ig = lig.attribute(ids, target=targets, additional_forward_args=(mask,), n_steps=4)
    assert ig.shape == attr.shape and torch.isfinite(ig).all()
    # the model is as it came in: the forward outside gives the untouched logits
    assert type(model).forward is type(model).__dict__.get("forward", type(model).forward)
    assert "forward" not in model.__dict__


def test_through_llm_gradient_attribution_each_row_is_explain_of_the_log_prob() -> None:
    model = make_model("llama")
    tok = word_tokenizer(WORDS)
    llm = captum_attr.LLMGradientAttribution(LayerAttnLRP(model), tok)
    prompt, answer = "w3 w17 w40 w5", "w9 w61 w2"
    result = llm.attribute(captum_attr.TextTokenInput(prompt, tok), target=answer)
    prompt_ids = tok(prompt)["input_ids"]
    answer_ids = tok(answer, add_special_tokens=False)["input_ids"]
    assert result.token_attr.shape == (3, len(prompt_ids))
    for k, token in enumerate(answer_ids):
        ref = lxt_fx.explain(model, torch.tensor([prompt_ids + answer_ids[:k]]), target=lxt_fx.LogProb(token))
        _rel_close(result.token_attr[k], ref.relevance[0, : len(prompt_ids)], 1e-6)
    # Captum's Integrated Gradients through the same wrapper, same call, same shape
    lig = captum_attr.LayerIntegratedGradients(model, model.get_input_embeddings())
    ig = captum_attr.LLMGradientAttribution(lig, tok).attribute(captum_attr.TextTokenInput(prompt, tok),
                                                                 target=answer, n_steps=4)
    assert ig.token_attr.shape == result.token_attr.shape


def test_bad_targets_and_layers_are_named() -> None:
    model = make_model("llama")
    lrp = LayerAttnLRP(model)
    ids = torch.randint(2, 96, (2, 5))
    with pytest.raises(CaptumInputError, match="a target per row"):
        lrp.attribute(ids, target=[1, 2, 3])
    with pytest.raises(CaptumInputError, match="grad_kwargs"):
        lrp.attribute(ids, target=1, grad_kwargs={"retain_graph": True})
    with pytest.raises(CaptumInputError, match="never ran as a module"):
        LayerAttnLRP(model, layer=model.model.layers[0].input_layernorm).attribute(ids, target=1)
