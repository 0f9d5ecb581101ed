"""Mixed inputs, one backward: CLIP / SigLIP (image–text similarity), DINOv2 (features), Whisper (speech).

Each model is tiny and random. For each: the forward through the rewritten graph equals the model, no op on
the relevance path is left without a rule (``strict=True``), the relevance maps equal the float64
explicit-form reference (:func:`lxt_fx.reference.explicit_relevance`, node by node, independent of the
GxI path) summed per patch / frame / token, and the books close in zero-bias mode (:func:`lxt_fx.check`).
"""

from __future__ import annotations

import re

import pytest
import torch

import lxt_fx
from lxt_fx.composites import for_model
from lxt_fx.reference import explicit_relevance
from lxt_fx.session import rewritten_graph
from lxt_fx.targets import Function, Similarity

from .tiny import TEXT_IDS, features, images, model, patch_sums

PROBE = torch.randn(32, generator=torch.Generator().manual_seed(7))  # a linear probe on the features


def _pooled(outputs: dict) -> torch.Tensor:
    return outputs["pooler_output"] @ PROBE.to(outputs["pooler_output"].dtype)



def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    scale = float(ref.abs().max())
    assert scale > 0
    torch.testing.assert_close(ours.double(), ref.double(), rtol=0, atol=2e-4 * scale)


CASES = {
    "clip": dict(inputs=TEXT_IDS, images=images(2), target=Similarity()),
    "siglip": dict(inputs=TEXT_IDS[:, 1:].contiguous(), images=images(2, 1), target=Similarity()),
    "dinov2": dict(images=images(2, 2), target=Function(_pooled)),
}


def _call(kind: str) -> dict:
    case = CASES[kind]
    call = {"pixel_values": case["images"]}
    if "inputs" in case:
        call["input_ids"] = case["inputs"]
        call["attention_mask"] = torch.ones_like(case["inputs"])  # as explain passes it: one capture serves all
    return call


@pytest.mark.parametrize("kind", sorted(CASES))
def test_image_models_match_reference_and_close_books(kind: str) -> None:
    m, case = model(kind), CASES[kind]
    att = lxt_fx.explain(m, case.get("inputs"), images=case["images"], target=case["target"], strict=True)
    assert att.image_relevance.shape == (2, 4, 4) and att.pixel_relevance.shape == (2, 16, 16)
    call = _call(kind)
    graph = rewritten_graph(m, for_model(m), call, {})
    assert not graph.report.unhandled
    with torch.no_grad():
        want = m(**call)
        got = graph(call)
    for key in graph.captured.output_keys:
        torch.testing.assert_close(got[key], getattr(want, key), rtol=0, atol=0)  # the forward is the model's
    out = {k: v.double() for k, v in got.items()}
    if isinstance(case["target"], Similarity):
        sims = out["logits_per_image"]
        seeds = {"logits_per_image": torch.diag(sims.diagonal())}
        torch.testing.assert_close(att.target_scores.double(), sims.diagonal(), rtol=1e-5, atol=1e-6)
    else:
        seeds = {"pooler_output": out["pooler_output"] * PROBE.double()}
    ref = explicit_relevance(graph, call, seeds)
    _close(att.image_relevance, patch_sums(ref["pixel_values"]))
    torch.testing.assert_close(att.image_relevance.sum((1, 2)), att.pixel_relevance.sum((1, 2)), rtol=1e-5,
                               atol=1e-6)
    report = lxt_fx.check(m, call, target=case["target"])
    if "inputs" in case:  # a dual encoder: its token relevance is read at the embedding lookup in the graph
        assert graph.plan.places and att.relevance.shape == case["inputs"].shape
        assert att.relevance.abs().sum() > 0 and att.tokens[0]
        _close(att.relevance, ref["inputs_embeds"].sum(-1))
        # the books count text and image as the inputs of one backward: their input sum is ours
        ours = float(att.relevance.double().sum() + att.image_relevance.double().sum())
        assert abs(report.conservation.input_sum - ours) <= 1e-5 * max(1.0, abs(ours))
    books = report.zero_bias
    assert books.verdict().verified, books.verdict().reason
    # zero-bias: what reached the inputs (text and image) plus what the books absorb for a named cause
    # (position embeddings, CLS token, the softmax rule's term; the target's own function) is the score
    absorbed = sum(leak.absorbed for leak in books.leaks if leak.cause != "other")
    target = books.score - books.output_sum
    assert abs(books.input_sum + absorbed + target - books.score) <= books.verdict().bound


def test_whisper_audio_frames_and_decoder_tokens() -> None:
    m = model("whisper")
    feats = features(1)
    dec = torch.tensor([[1, 5, 6, 7]])
    att = lxt_fx.explain(m, dec, audio=feats, strict=True)
    assert att.audio_relevance.shape == (1, 32) and att.relevance.shape == (1, 4)
    embeds = m.get_decoder().get_input_embeddings()(dec).detach()
    call = {"input_features": feats, "decoder_inputs_embeds": embeds, "decoder_attention_mask": torch.ones_like(dec)}
    graph = rewritten_graph(m, for_model(m), call, {})
    assert not graph.report.unhandled
    with torch.no_grad():
        got = graph(call)
        want = m(**call)
    torch.testing.assert_close(got["logits"], want.logits, rtol=0, atol=0)
    logits = got["logits"].double()
    target = int(att.target_ids[0])
    assert target == int(logits[0, -1].argmax())
    seeds = torch.zeros_like(logits)
    seeds[0, -1, target] = logits[0, -1, target]
    ref = explicit_relevance(graph, call, {"logits": seeds})
    _close(att.audio_relevance, ref["input_features"].sum(1))
    _close(att.relevance, ref["decoder_inputs_embeds"].sum(-1))
    # one backward: audio and text share the explained score, and with the bias-free books it closes
    books = lxt_fx.check(m, call, target=target).zero_bias
    assert books.verdict().verified, books.verdict().reason


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_a_dual_encoder_explains_its_similarity_by_default(kind: str) -> None:
    """Without a target a dual encoder explains its one meaningful output, the image–text similarity of each
    row's pair (the model's own ``logits_per_image`` diagonal), exactly as ``target=Similarity()`` does."""
    m, case = model(kind), CASES[kind]
    default = lxt_fx.explain(m, case["inputs"], images=case["images"])
    given = lxt_fx.explain(m, case["inputs"], images=case["images"], target=Similarity())
    torch.testing.assert_close(default.relevance, given.relevance, rtol=0, atol=0)
    torch.testing.assert_close(default.image_relevance, given.image_relevance, rtol=0, atol=0)
    with torch.no_grad():
        sims = m(**_call(kind)).logits_per_image
    torch.testing.assert_close(default.target_scores, sims.diagonal(), rtol=1e-5, atol=1e-6)


def test_a_model_without_a_natural_target_still_asks_for_one() -> None:
    """An image encoder's features have no one meaningful score: no default, a named error saying what to give."""
    with pytest.raises(lxt_fx.InputError, match="target=lxt_fx.targets.Function"):
        lxt_fx.explain(model("dinov2"), images=CASES["dinov2"]["images"])


def test_similarity_needs_paired_rows() -> None:
    target = Similarity()
    torch.testing.assert_close(target.fn({"logits_per_image": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}),
                               torch.tensor([1.0, 4.0]))
    with pytest.raises(lxt_fx.TargetError, match="as many texts as images"):
        target.fn({"logits_per_image": torch.zeros(2, 3)})
    with pytest.raises(lxt_fx.TargetError, match="returns"):
        target.fn({"logits": torch.zeros(2, 2)})


def test_batch_mismatch_is_named() -> None:
    with pytest.raises(lxt_fx.InputError, match="batch size"):
        lxt_fx.explain(model("siglip"), TEXT_IDS[:1, 1:].contiguous(), images=images(2), target=Similarity())


def test_dual_encoder_text_place_can_be_left_out_and_refuses_checkpoint() -> None:
    m, case = model("clip"), CASES["clip"]
    call = _call("clip")
    assert set(rewritten_graph(m, for_model(m), call, {}).plan.places.values()) == {"inputs_embeds"}
    image_only = rewritten_graph(m, for_model(m), call, {}, relevance_inputs=["pixel_values"])
    assert not image_only.plan.places and image_only.plan.inputs == ("tensors_pixel_values",)
    text_only = rewritten_graph(m, for_model(m), call, {}, relevance_inputs=["input_ids"])
    assert text_only.plan.places and "tensors_pixel_values" not in text_only.plan.inputs
    with pytest.raises(lxt_fx.InputError, match="checkpoint"):
        lxt_fx.explain(m, case["inputs"], images=case["images"], target=case["target"], checkpoint="layer")


def _vit() -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                       image_size=16, patch_size=4, num_labels=3)
    cfg._attn_implementation = "sdpa"
    return tf.ViTForImageClassification(cfg).eval()


def test_an_image_alone_gives_one_result_either_way() -> None:
    m, px = _vit(), images(2, 3)
    positional, by_name = lxt_fx.explain(m, px), lxt_fx.explain(m, images=px)
    call = {"pixel_values": px}
    graph = rewritten_graph(m, for_model(m), call, {})
    with torch.no_grad():
        logits = graph(call)["logits"].double()
    target = logits.argmax(-1)
    seeds = torch.zeros_like(logits)
    seeds[torch.arange(2), target] = logits[torch.arange(2), target]
    ref = explicit_relevance(graph, call, {"logits": seeds})["pixel_values"]  # [2, 3, 16, 16]
    for att in (positional, by_name):
        assert att.relevance.shape == att.pixel_relevance.shape == (2, 16, 16)
        assert att.image_relevance.shape == (2, 4, 4) and att.audio_relevance is None
        assert torch.equal(att.relevance, att.pixel_relevance) and att.tokens == [[], []]
        assert att.target_ids.tolist() == target.tolist()
        _close(att.pixel_relevance, ref.sum(1))
        _close(att.image_relevance, patch_sums(ref))
    for name in ("relevance", "pixel_relevance", "image_relevance", "input_ids", "attention_mask", "target_ids",
                 "target_scores", "positions"):
        torch.testing.assert_close(getattr(positional, name), getattr(by_name, name), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(8, 32), (512,), (1, 8, 20), (1, 6, 32), (1, 1, 8, 32)])
def test_whisper_audio_of_the_wrong_shape_is_named_before_the_capture(shape, capfd) -> None:
    from lxt_fx.session import InputError

    audio = torch.randn(*shape)
    with pytest.raises(InputError, match=r"input_features \[batch, num_mel_bins=8, frames=32\]") as info:
        lxt_fx.explain(model("whisper"), audio=audio)
    message = str(info.value)
    assert str(tuple(shape)) in message
    assert not re.search(r"\bs\d+\b", message)  # real sizes, never a symbolic one
    assert capfd.readouterr().err == ""  # nothing from a failed capture on stderr
    with pytest.raises(InputError, match=r"num_mel_bins=8"):
        lxt_fx.check(model("whisper"), {"input_features": audio, "decoder_input_ids": torch.tensor([[1]])})


def test_whisper_honours_decoder_inputs() -> None:
    """decoder_inputs= (and the model's own name decoder_input_ids=) explain the token after the given decoder
    ids, as for T5: the score is the model's own logit there."""
    m = model("whisper")
    feats = features(1)
    dec = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        own = m(input_features=feats, decoder_input_ids=dec).logits[0, -1]
    for att in (lxt_fx.explain(m, decoder_inputs=dec, audio=feats),
                lxt_fx.explain(m, decoder_input_ids=dec, audio=feats)):
        assert att.relevance.shape == (1, 4) and int(att.positions[0]) == 3
        assert int(att.target_ids[0]) == int(own.argmax())
        torch.testing.assert_close(att.target_scores[0], own.max(), rtol=1e-5, atol=1e-6)
    with pytest.raises(lxt_fx.InputError, match="not both"):
        lxt_fx.explain(m, dec, decoder_inputs=dec, audio=feats)
