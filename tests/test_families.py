"""Each family, eager and SDPA: forward unchanged, relevance equal to the explicit-form reference,
eager and SDPA relevance equal, strict coverage."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, VOCAB, make_model
from helpers import reference_relevance, relative_error

import lxt_fx


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return ids, mask


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family(family: str, attn: str) -> None:
    model = make_model(family, attn)
    ids, mask = _inputs()
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
    with lxt_fx.attnlrp.context(model, strict=True), torch.no_grad():
        inside = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(inside, plain, atol=1e-5, rtol=0)

    att = lxt_fx.explain(model, ids, attention_mask=mask, strict=True)
    assert att.report.unhandled == []
    assert att.relevance.dtype == torch.float32 and att.relevance.shape == ids.shape
    assert torch.all(att.relevance[1, 7:] == 0)
    ref = reference_relevance(model, ids, mask, att)
    assert relative_error(att.relevance, ref) < 1e-5

    # the explained score is the logit at the last real token of each row
    for b, last in enumerate([10, 6]):
        assert int(att.positions[b]) == last
        assert att.target_scores[b].item() == pytest.approx(plain[b, last].max().item(), abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_eager_and_sdpa_agree(family: str) -> None:
    ids, mask = _inputs(2)
    eager = lxt_fx.explain(make_model(family, "eager"), ids, attention_mask=mask)
    sdpa = lxt_fx.explain(make_model(family, "sdpa"), ids, attention_mask=mask)
    assert torch.equal(eager.target_ids, sdpa.target_ids)
    assert relative_error(sdpa.relevance, eager.relevance) < 1e-5


def test_cp_lrp_matches_its_reference() -> None:
    model = make_model("llama", "sdpa")
    ids, mask = _inputs(3)
    att = lxt_fx.explain(model, ids, attention_mask=mask, composite=lxt_fx.cp_lrp, strict=True)
    ref = reference_relevance(model, ids, mask, att, composite=lxt_fx.cp_lrp)
    assert relative_error(att.relevance, ref) < 1e-5
    attn = lxt_fx.explain(model, ids, attention_mask=mask)
    assert relative_error(att.relevance, attn.relevance) > 1e-3  # a different rule set, a different map


def test_padded_batch_rows_equal_single_rows() -> None:
    model = make_model("qwen3", "sdpa")
    ids, mask = _inputs(4)
    batch = lxt_fx.explain(model, ids, attention_mask=mask)
    for b in range(2):
        n = int(mask[b].sum())
        alone = lxt_fx.explain(model, ids[b:b + 1, :n])
        assert relative_error(batch.relevance[b, :n], alone.relevance[0]) < 1e-5
