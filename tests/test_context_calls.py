"""Every call inside ``context`` gives what the untouched model gives, or a named error: cached decoding,
``generate``, ``labels``, ``inference_mode``, ``return_dict=False``; contexts exited out of order; stale
captures after a submodule or parameter is replaced."""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch
from conftest import VOCAB, make_model

import lxt_fx
from lxt_fx.session import UnsupportedCallError
from lxt_fx.tracing import capture_count
from lxt_fx.tracing.capture import fingerprint  # noqa: F401 (fails before the fix)


@pytest.fixture(scope="module")
def llama():
    return make_model("llama")


def _ids(length: int = 6, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---- item 4: cached decoding, generate, labels ----------------------------------------------------------


def test_cached_decoding_step_gives_the_untouched_logits_under_no_grad(llama) -> None:
    ids, nxt = _ids(6), _ids(1, seed=1)
    with torch.no_grad():
        first = llama(input_ids=ids, use_cache=True)
        expected = llama(input_ids=nxt, cache=first.cache, use_cache=False).logits
        first = llama(input_ids=ids, use_cache=True)
        with lxt_fx.attnlrp.context(llama):
            got = llama(input_ids=nxt, cache=first.cache, use_cache=False).logits
    assert torch.equal(got, expected)


def test_cached_decoding_step_with_grad_is_a_named_error(llama) -> None:
    with torch.no_grad():
        cache = llama(input_ids=_ids(6), use_cache=True).cache
    with lxt_fx.attnlrp.context(llama), pytest.raises(UnsupportedCallError, match="past_key_values") as info:
        llama(input_ids=_ids(1, seed=1), past_key_values=cache)
    assert "generate_and_explain" in str(info.value) and "without" in str(info.value)
    with lxt_fx.attnlrp.context(llama), pytest.raises(UnsupportedCallError, match="use_cache"):
        llama(input_ids=_ids(6), use_cache=True)


def test_generate_inside_the_context_gives_the_same_tokens(llama) -> None:
    ids = _ids(5, seed=3)
    expected = llama.generate(ids, max_new_tokens=5, do_sample=False)
    with lxt_fx.attnlrp.context(llama):
        got = llama.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(got, expected)
    assert "forward" not in vars(llama)


def test_labels_give_the_models_own_loss(llama) -> None:
    ids = _ids(7, batch=2, seed=4)
    labels = ids.clone()
    labels[0, :3] = -100
    expected = llama(input_ids=ids, labels=labels)
    with lxt_fx.attnlrp.context(llama):
        got = llama(input_ids=ids, labels=labels)
    assert got.loss is not None
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=0)


def test_return_dict_false_gives_the_same_tuple(llama) -> None:
    ids = _ids(6, seed=5)
    expected = llama(input_ids=ids, return_dict=False, use_cache=False, output_hidden_states=True)
    with lxt_fx.attnlrp.context(llama):
        got = llama(input_ids=ids, return_dict=False, use_cache=False, output_hidden_states=True)
        assert isinstance(got, tuple) and len(got) == len(expected)
        torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=0)
        # the model would put a cache into the tuple (config.use_cache): refused, not shifted
        with pytest.raises(UnsupportedCallError, match="return_dict=False"):
            llama(input_ids=ids, return_dict=False)


def test_a_tensor_inside_a_non_tensor_argument_is_a_named_error(llama) -> None:
    with lxt_fx.attnlrp.context(llama), pytest.raises(UnsupportedCallError, match="encoder_outputs"):
        llama(input_ids=_ids(6), encoder_outputs=(torch.zeros(1, 6, 32),))


# ---- item 3: inference mode -----------------------------------------------------------------------------


def test_forward_under_inference_mode_equals_the_untouched_model() -> None:
    model = make_model("llama", attn="sdpa")
    ids = _ids(6, batch=2, seed=6)
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
    with lxt_fx.attnlrp.context(model):
        with torch.inference_mode():
            got = model(input_ids=ids).logits
            again = model(input_ids=ids).logits
        with_grad = model(input_ids=ids).logits  # the memo still works after inference tensors
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert torch.equal(got, again)
    torch.testing.assert_close(with_grad.detach(), expected, atol=1e-5, rtol=0)


# ---- item 5: contexts exited out of order ---------------------------------------------------------------


def _plain(model: torch.nn.Module) -> bool:
    return "forward" not in vars(model) and model.forward.__func__ is type(model).forward


def test_two_contexts_exited_in_the_wrong_order_restore_the_model() -> None:
    model = make_model("llama")
    ids = _ids(6)
    first, second = lxt_fx.attnlrp.context(model), lxt_fx.cp_lrp.context(model)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # out of order
    assert not _plain(model)  # the second one is still active
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    model(inputs_embeds=emb).logits[0, -1, 0].backward()
    second.__exit__(None, None, None)
    assert _plain(model)
    with lxt_fx.cp_lrp.context(model):  # the active one was cp_lrp: same relevance as cp_lrp alone
        emb2 = emb.detach().clone().requires_grad_(True)
        model(inputs_embeds=emb2).logits[0, -1, 0].backward()
    assert torch.equal(emb.grad, emb2.grad)
    assert _plain(model)


def test_generators_holding_contexts_closed_out_of_order() -> None:
    model = make_model("llama")

    def holder(composite):
        with composite.context(model):
            yield

    a, b = holder(lxt_fx.attnlrp), holder(lxt_fx.attnlrp)
    next(a)
    next(b)
    a.close()
    assert not _plain(model)
    b.close()
    assert _plain(model)
    with contextlib.ExitStack() as stack:
        stack.enter_context(lxt_fx.attnlrp.context(model))
        stack.enter_context(lxt_fx.attnlrp.context(model))
    assert _plain(model)


def test_contexts_in_threads_restore_the_model() -> None:
    model = make_model("llama")
    entered, release = threading.Barrier(3), threading.Event()
    errors: list[BaseException] = []

    def worker(order: int) -> None:
        try:
            with lxt_fx.attnlrp.context(model):
                entered.wait(timeout=30)
                release.wait(timeout=30)
                if order:  # leave in the opposite order of entry
                    threading.Event().wait(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    entered.wait(timeout=30)
    assert not _plain(model)
    release.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert _plain(model)


# ---- item 6: stale captures -----------------------------------------------------------------------------


class _DoubleMLP(torch.nn.Module):
    def __init__(self, mlp: torch.nn.Module) -> None:
        super().__init__()
        self.inner = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.inner(x)


def test_a_replaced_submodule_is_recaptured() -> None:
    model = make_model("llama")
    ids = _ids(6)
    with lxt_fx.attnlrp.context(model):
        model(input_ids=ids)
    assert capture_count(model) == 1
    model.model.layers[0].mlp = _DoubleMLP(model.model.layers[0].mlp)
    expected = model(input_ids=ids).logits.detach()
    with lxt_fx.attnlrp.context(model):
        got = model(input_ids=ids).logits.detach()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert capture_count(model) == 2


def test_a_replaced_parameter_is_recaptured_and_in_place_changes_are_shared() -> None:
    model = make_model("llama")
    ids = _ids(6)
    with lxt_fx.attnlrp.context(model):
        model(input_ids=ids)
        with torch.no_grad():
            model.lm_head.weight.mul_(2)  # in place: the graph shares the Parameter
        model.load_state_dict({k: v * 0.5 if k == "model.norm.weight" else v
                               for k, v in model.state_dict().items()})
        expected = type(model).forward(model, input_ids=ids).logits.detach()
        torch.testing.assert_close(model(input_ids=ids).logits.detach(), expected, atol=1e-5, rtol=0)
        assert capture_count(model) == 1
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach() * 3)
        expected = type(model).forward(model, input_ids=ids).logits.detach()
        torch.testing.assert_close(model(input_ids=ids).logits.detach(), expected, atol=1e-5, rtol=0)
        assert capture_count(model) == 2
        model.model.norm.register_buffer("extra", torch.zeros(1))  # a new buffer: the tree changed
        model(input_ids=ids)
        assert capture_count(model) == 3


def test_fingerprint_tells_tree_changes_apart() -> None:
    model = make_model("llama")
    before = fingerprint(model)
    assert fingerprint(model) == before
    model.model.layers[1].mlp.act_fn = torch.nn.GELU()
    assert fingerprint(model) != before
