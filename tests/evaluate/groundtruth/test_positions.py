"""PA-LRP on the trained ground-truth models: the position–token pair map of an added position table is the
relevance of the residual stream's input ``x + p`` (``attnlrp_pos``, computed independently from the
gradient at the token embeddings); on a trained rotary model the positions take a share of the relevance and
the token map changes (Eq. 10: half of each rotated query's and key's relevance goes to its position)."""

from __future__ import annotations

import torch
from torch.testing import assert_close

import lxt_fx
from lxt_fx.evaluate import groundtruth as gt
from lxt_fx.evaluate.groundtruth.methods import run_method


def test_gpt2_pairs_equal_the_residual_input_reading() -> None:
    model, task = gt.load("recall-gpt2")
    sample = task.sample(8, seed=3)
    att = lxt_fx.explain(model, sample.inputs["input_ids"], attention_mask=sample.inputs["attention_mask"],
                         composite="palrp", target=lxt_fx.targets.Function(
                             lambda out: task.pick(out["logits"], sample.inputs).gather(
                                 1, sample.target[:, None]).squeeze(1)))
    reference = run_method("attnlrp_pos", model, task, sample)["tokens"]
    scale = float(reference.abs().max())
    assert_close(att.pair_relevance(), reference, rtol=0, atol=1e-4 * scale)
    assert set(att.position_maps) == {"positions:transformer.wpe"}


def test_llama_rotary_positions_take_a_share() -> None:
    model, task = gt.load("recall-llama")
    sample = task.sample(8, seed=3)
    ids, mask = sample.inputs["input_ids"], sample.inputs["attention_mask"]
    att = lxt_fx.explain(model, ids, attention_mask=mask, composite="palrp")
    plain = lxt_fx.explain(model, ids, attention_mask=mask)
    assert set(att.position_maps) == {"positions:model.rotary_emb"}
    assert float(att.position_relevance.abs().sum()) > 0.01 * float(plain.relevance.abs().sum())
    assert not torch.allclose(att.relevance, plain.relevance)  # half of each rotated q / k left the tokens
