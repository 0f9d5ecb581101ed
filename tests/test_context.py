"""The model leaves every context exactly as it came in — also after an exception — and nothing global
in torch or transformers changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import VOCAB, make_model

import lxt_fx


def _snapshot(model: torch.nn.Module) -> tuple[dict, dict, dict]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    attrs = {name: dict(vars(mod)) for name, mod in model.named_modules()}
    return state, attrs, dict(model.named_parameters())


def _assert_same(model: torch.nn.Module, before: tuple[dict, dict, dict]) -> None:
    state, attrs, ids = before
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v) and now[k].dtype == v.dtype, k  # bit-identical
    assert all(p is ids[k] for k, p in model.named_parameters())  # the same Parameter objects
    for name, mod in model.named_modules():
        current = vars(mod)
        assert current.keys() == attrs[name].keys(), name
        for key, value in attrs[name].items():
            assert current[key] is value or current[key] == value, (name, key)
    assert "forward" not in vars(model)
    assert model.forward.__func__ is type(model).forward


def _global_state() -> dict[str, object]:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama import modeling_llama as ml

    watched = {f"F.{n}": getattr(F, n) for n in ("softmax", "silu", "gelu", "scaled_dot_product_attention",
                                                    "layer_norm", "linear", "dropout")}
    watched.update({f"torch.{n}": getattr(torch, n) for n in ("matmul", "softmax", "tanh", "rsqrt")})
    watched.update({f"Tensor.{n}": getattr(torch.Tensor, n) for n in ("__matmul__", "__mul__", "softmax")})
    watched.update({f"llama.{c}.forward": getattr(ml, c).forward
                    for c in ("LlamaRMSNorm", "LlamaAttention", "LlamaMLP", "LlamaModel", "LlamaForCausalLM")})
    watched["attention_functions"] = dict(ALL_ATTENTION_FUNCTIONS)
    watched["nn.Dropout.forward"] = torch.nn.Dropout.forward
    watched["grad_enabled"] = torch.is_grad_enabled()
    watched["transformers.__dict__"] = set(vars(transformers))
    return watched


def test_context_restores_model_and_globals() -> None:
    model = make_model("llama")
    ids = torch.randint(0, VOCAB, (1, 6))
    before, globals_before = _snapshot(model), _global_state()
    expected = model(input_ids=ids).logits.detach()
    with lxt_fx.attnlrp.context(model) as inside:
        assert inside is model
        assert "forward" in vars(model)
        torch.testing.assert_close(model(input_ids=ids).logits.detach(), expected, atol=1e-5, rtol=0)
    _assert_same(model, before)
    assert _global_state() == globals_before
    assert torch.equal(model(input_ids=ids).logits.detach(), expected)


def test_context_restores_after_exception() -> None:
    model = make_model("qwen3")
    ids = torch.randint(0, VOCAB, (1, 6))
    before, globals_before = _snapshot(model), _global_state()
    expected = model(input_ids=ids).logits.detach()
    with pytest.raises(RuntimeError, match="boom"), lxt_fx.attnlrp.context(model):
        model(input_ids=ids)
        raise RuntimeError("boom")
    _assert_same(model, before)
    assert _global_state() == globals_before
    assert torch.equal(model(input_ids=ids).logits.detach(), expected)


def test_context_keeps_an_instance_forward_the_user_set() -> None:
    model = make_model("llama")

    def custom(*args, **kwargs):
        return "custom"

    model.forward = custom
    with lxt_fx.attnlrp.context(model):
        assert model.forward is not custom
    assert model.forward is custom


def test_explain_leaves_model_untouched() -> None:
    model = make_model("mistral")
    before = _snapshot(model)
    lxt_fx.explain(model, torch.randint(0, VOCAB, (2, 5)))
    _assert_same(model, before)
    assert all(p.grad is None for p in model.parameters())


def test_two_families_in_one_process_do_not_interfere() -> None:
    llama, gemma = make_model("llama"), make_model("gemma3")
    ids = torch.randint(0, VOCAB, (1, 7))
    alone_llama = lxt_fx.explain(llama, ids).relevance
    alone_gemma = lxt_fx.explain(gemma, ids).relevance
    plain_gemma = gemma(input_ids=ids).logits.detach()
    with lxt_fx.attnlrp.context(llama):
        assert torch.equal(gemma(input_ids=ids).logits.detach(), plain_gemma)  # not rewritten
        mixed_gemma = lxt_fx.explain(gemma, ids).relevance
        llama(input_ids=ids)
    assert torch.equal(mixed_gemma, alone_gemma)
    assert torch.equal(lxt_fx.explain(llama, ids).relevance, alone_llama)


def test_gradients_inside_context_are_relevance() -> None:
    """The user-facing recipe: embeddings in, one backward, x ⊙ grad equals explain()."""
    model = make_model("qwen2")
    ids = torch.randint(0, VOCAB, (1, 8))
    att = lxt_fx.explain(model, ids)
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    with lxt_fx.attnlrp.context(model):
        logits = model(inputs_embeds=emb).logits
        logits[0, -1, int(att.target_ids[0])].backward()
    torch.testing.assert_close((emb * emb.grad).sum(-1), att.relevance, atol=1e-7, rtol=1e-5)


def _context_relevance(model: torch.nn.Module, ids: torch.Tensor, target: int) -> torch.Tensor:
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb).logits
    (grad,) = torch.autograd.grad(logits[0, -1, target], emb)
    return (emb * grad).sum(-1).detach()


def test_a_context_object_is_reusable_and_nests() -> None:
    model = make_model("llama")
    ids = torch.randint(0, VOCAB, (1, 6))
    att = lxt_fx.explain(model, ids)
    target = int(att.target_ids[0])
    before = _snapshot(model)
    ctx = lxt_fx.attnlrp.context(model)
    for _ in range(2):  # the same object, entered twice in a row
        with ctx as inside:
            assert inside is model
            torch.testing.assert_close(_context_relevance(model, ids, target), att.relevance, atol=1e-7, rtol=1e-5)
        _assert_same(model, before)
    with ctx:  # and inside itself
        with ctx:
            torch.testing.assert_close(_context_relevance(model, ids, target), att.relevance, atol=1e-7, rtol=1e-5)
        assert "forward" in vars(model)  # the outer one is still entered
        torch.testing.assert_close(_context_relevance(model, ids, target), att.relevance, atol=1e-7, rtol=1e-5)
    _assert_same(model, before)
    with pytest.raises(RuntimeError, match="boom"), ctx:
        raise RuntimeError("boom")
    _assert_same(model, before)
    with ctx:  # still usable after an exception
        torch.testing.assert_close(_context_relevance(model, ids, target), att.relevance, atol=1e-7, rtol=1e-5)
    _assert_same(model, before)
