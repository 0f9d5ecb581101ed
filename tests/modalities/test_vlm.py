"""Vision-language models (tiny random LLaVA-like and Qwen2-VL-like): text and image patches from one backward.

For each: ``explain`` with ``strict=True`` (no op on the relevance path without a rule); the forward inside
the context equals the model called with ``input_ids`` (so Qwen2-VL's M-RoPE positions, computed outside
the graph, are the model's own); token and patch relevance equal the float64 explicit-form reference
(:func:`lxt_fx.reference.explicit_relevance`), summed per token and per patch by explicit loops; the books
close in zero-bias mode. Qwen2-VL's flattened patch order is checked against its own image processor.
"""

from __future__ import annotations

import pytest
import torch

import lxt_fx
from lxt_fx import modalities
from lxt_fx.composites import for_model
from lxt_fx.reference import explicit_relevance
from lxt_fx.session import rewritten_graph, split_inputs
from lxt_fx.tracing import capture_count
from lxt_fx.tracing.spliced import SplicedInputError

from .tiny import IMAGE, IMAGE_TOKEN, PATCH, QUERIES, images, model, patch_sums, vlm_ids


def _model_call(kind: str, ids: torch.Tensor, pixels: torch.Tensor) -> dict:
    """The untouched model's own call: ids, the processor-style image inputs, the mask."""
    call = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if kind == "qwen2_vl":
        flat, grid = modalities.flatten_patches(pixels, PATCH, 2, 2)
        call.update(pixel_values=flat, image_grid_thw=grid, mm_token_type_ids=(ids == IMAGE_TOKEN).int())
    else:
        call["pixel_values"] = pixels
    return call



def _patch_sums_qwen(flat: torch.Tensor, batch: int) -> torch.Tensor:
    """[b·16, 96] flattened rows → [b, 4, 4] by explicit loops over Qwen2-VL's block order (2×2 merge)."""
    side = IMAGE // PATCH
    out = torch.zeros(batch, side, side, dtype=flat.dtype)
    for b in range(batch):
        for i in range(side):
            for j in range(side):
                row = ((i // 2) * (side // 2) + j // 2) * 4 + (i % 2) * 2 + (j % 2)
                out[b, i, j] = flat[b * side * side + row].sum()
    return out


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl"])
def test_vlm_tokens_and_patches_match_reference_and_close_books(kind: str) -> None:
    m = model(kind)
    ids, pixels = vlm_ids(kind, 2), images(2, 3)
    att = lxt_fx.explain(m, ids, images=pixels, strict=True)
    assert att.relevance.shape == ids.shape and att.image_relevance.shape == (2, 4, 4)
    assert att.pixel_relevance.shape == (2, IMAGE, IMAGE)
    assert (att.relevance[ids == IMAGE_TOKEN] == 0).all()  # placeholders are overwritten by image features

    call = _model_call(kind, ids, pixels)
    with torch.no_grad():
        want = m(**call).logits
        with lxt_fx.attnlrp.context(m):
            got = m(**call).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # M-RoPE positions and grid are the model's own

    tensors, static = split_inputs(m, call)
    graph = rewritten_graph(m, for_model(m), tensors, static)
    assert not graph.report.unhandled
    logits = graph(tensors)["logits"].double()
    target = att.target_ids
    assert (target == logits[:, -1].argmax(-1)).all()
    seeds = torch.zeros_like(logits)
    seeds[torch.arange(2), -1, target] = logits[torch.arange(2), -1, target]
    ref = explicit_relevance(graph, tensors, {"logits": seeds})
    torch.testing.assert_close(att.relevance.double(), ref["inputs_embeds"].sum(-1), rtol=0,
                               atol=2e-4 * float(ref["inputs_embeds"].sum(-1).abs().max()))
    patches = (patch_sums(ref["pixel_values"]) if kind == "llava" else _patch_sums_qwen(ref["pixel_values"], 2))
    torch.testing.assert_close(att.image_relevance.double(), patches, rtol=0, atol=2e-4 * float(patches.abs().max()))
    torch.testing.assert_close(att.pixel_relevance.sum((1, 2)), att.image_relevance.sum((1, 2)), rtol=1e-5, atol=1e-6)

    books = lxt_fx.check(m, call, target=int(target[0])).zero_bias
    assert books.verdict().verified, books.verdict().reason


@pytest.mark.parametrize("kind", ["blip2", "instructblip"])
def test_qformer_outputs_fill_the_image_tokens(kind: str) -> None:
    """BLIP-2 / InstructBLIP put the Q-Former's ``num_query_tokens`` outputs per image at the image tokens (not
    one feature per vision patch): explain takes text with that many, its logit is the untouched model's, its
    token and patch relevance equal the float64 explicit-form reference, and the books close in zero-bias mode."""
    m = model(kind)
    ids, pixels = vlm_ids(kind, 2), images(2, 3)
    extra = {} if kind == "blip2" else {"qformer_input_ids": torch.tensor([[1, 5, 6], [1, 7, 8]]),
                                        "qformer_attention_mask": torch.ones(2, 3, dtype=torch.long)}
    att = lxt_fx.explain(m, ids, images=pixels, strict=True, **extra)
    call = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels, **extra}
    with torch.no_grad():
        want = m(**call).logits[:, -1]
    assert (att.target_ids == want.argmax(-1)).all()
    torch.testing.assert_close(att.target_scores, want[torch.arange(2), att.target_ids], rtol=1e-5, atol=1e-6)
    assert (att.relevance[ids == IMAGE_TOKEN] == 0).all() and (ids == IMAGE_TOKEN).sum(-1).tolist() == [QUERIES] * 2

    tensors, static = split_inputs(m, call)
    graph = rewritten_graph(m, for_model(m), tensors, static)
    logits = graph(tensors)["logits"].double()
    seeds = torch.zeros_like(logits)
    seeds[torch.arange(2), -1, att.target_ids] = logits[torch.arange(2), -1, att.target_ids]
    ref = explicit_relevance(graph, tensors, {"logits": seeds})
    tokens = ref["inputs_embeds"].sum(-1)
    torch.testing.assert_close(att.relevance.double(), tokens, rtol=0, atol=2e-4 * float(tokens.abs().max()))
    patches = patch_sums(ref["pixel_values"])
    # 3 % of max|R|, not 0.02 %: along the vision tower's reshapes (flatten, transpose, to) the explicit ε-forms
    # lose ~1e-3 of the relevance per op on this tiny random tower while the fast path passes it on exactly
    torch.testing.assert_close(att.image_relevance.double(), patches, rtol=0, atol=3e-2 * float(patches.abs().max()))
    books = lxt_fx.check(m, call, target=int(att.target_ids[0])).zero_bias
    assert books.verdict().verified, books.verdict().reason


def test_qwen2_vl_patch_order_is_the_image_processors() -> None:
    """flatten_patches equals Qwen2-VL's own image processor; a single hot patch comes back where it was."""
    tf = pytest.importorskip("transformers")
    processor = tf.Qwen2VLImageProcessorPil(patch_size=PATCH, merge_size=2, temporal_patch_size=2, do_resize=False,
                                            do_rescale=False, do_normalize=False)
    image = torch.rand(1, 3, 16, 8)  # not square: a transposed grid cannot pass
    out = processor(images=[image[0]], return_tensors="pt")
    flat, grid = modalities.flatten_patches(image, PATCH, 2, 2)
    assert grid.tolist() == out["image_grid_thw"].tolist() == [[1, 4, 2]]
    torch.testing.assert_close(flat, out["pixel_values"].to(flat.dtype), rtol=0, atol=0)

    hot = torch.zeros(1, 3, 16, 8)
    hot[..., 8:12, 4:8] = 1.0  # the patch at grid row 2, column 1
    pixel, cells = modalities.unflatten_patches(*modalities.flatten_patches(hot, PATCH, 2, 2), PATCH, 2, 2, 3)
    want = torch.zeros(1, 4, 2)
    want[0, 2, 1] = 3 * 2 * PATCH * PATCH  # channels × time copies × pixels
    torch.testing.assert_close(cells, want)
    torch.testing.assert_close(pixel, hot.sum(1) * 2)


def test_vlm_capture_is_keyed_by_image_count_and_text_must_fit() -> None:
    m = model("llava")
    before = capture_count(m)
    one = lxt_fx.explain(m, vlm_ids("llava", 1), images=images(1, 3))
    lxt_fx.explain(m, vlm_ids("llava", 1), images=images(1, 4))
    assert capture_count(m) - before <= 1  # same shapes: the same capture
    two = lxt_fx.explain(m, vlm_ids("llava", 2), images=images(2, 3))  # another image count: captured again
    torch.testing.assert_close(two.relevance[:1], one.relevance, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(two.image_relevance[:1], one.image_relevance, rtol=1e-4, atol=1e-6)
    with pytest.raises(SplicedInputError, match="image token"):
        lxt_fx.explain(m, vlm_ids("llava", 1)[:, :10], images=images(1))
    with pytest.raises(lxt_fx.InputError, match="batch size"):
        lxt_fx.explain(m, vlm_ids("llava", 1), images=images(2))


def test_vlm_inputs_that_do_not_fit_are_named() -> None:
    """Checked before any capture: a row holding another row's image tokens, a Qwen2-VL image without its grid."""
    llava = model("llava")
    ids = vlm_ids("llava", 2)
    ids[0, 18:20], ids[1, 2:4] = IMAGE_TOKEN, 9  # 18 and 14 image tokens: 32 in all, but not 16 per row
    with pytest.raises(SplicedInputError, match="each row needs 16"):
        lxt_fx.explain(llava, ids, images=images(2))
    qwen = model("qwen2_vl")
    flat, _ = modalities.flatten_patches(images(1), PATCH, 2, 2)
    with pytest.raises(lxt_fx.InputError, match="image_grid_thw"):
        lxt_fx.explain(qwen, vlm_ids("qwen2_vl"), images={"pixel_values": flat})


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl"])
def test_vlm_one_capture_serves_every_prompt_length(kind: str) -> None:
    """One image grid, prompts of three lengths: one export (the text length is a dynamic dimension of the
    graph); at each length the graph's forward is the model's own and the relevance the float64 reference's."""
    m = model(kind)
    before = capture_count(m)
    pixels = images(1, 5)
    counts = []
    for extra in ([], [7, 9], [7, 9, 11, 12, 13]):
        ids = torch.cat([vlm_ids(kind, 1), torch.tensor([extra], dtype=torch.long).view(1, -1)], 1)
        att = lxt_fx.explain(m, ids, images=pixels)
        call = _model_call(kind, ids, pixels)
        with torch.no_grad():
            want = m(**call).logits
            with lxt_fx.attnlrp.context(m):
                got = m(**call).logits
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        tensors, static = split_inputs(m, call)
        graph = rewritten_graph(m, for_model(m), tensors, static)
        logits = graph(tensors)["logits"].double()
        seeds = torch.zeros_like(logits)
        seeds[0, -1, att.target_ids[0]] = logits[0, -1, att.target_ids[0]]
        ref = explicit_relevance(graph, tensors, {"logits": seeds})["inputs_embeds"].sum(-1)
        torch.testing.assert_close(att.relevance.double(), ref, rtol=0, atol=2e-4 * float(ref.abs().max()))
        counts.append(capture_count(m) - before)
    assert counts[0] <= 1 and counts == [counts[0]] * 3  # one export (none when an earlier test made it)
