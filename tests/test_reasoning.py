"""Routing an answer's relevance through the generated tokens (lxt_fx.reasoning): the bookkeeping on constructed
matrices, and a planted two-hop task on a tiny LLaMA trained in the test, where a prompt fact reaches the answer
only through a generated intermediate token."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as tf

import lxt_fx
from lxt_fx.generation import GenerationAttribution
from lxt_fx.reasoning import route


def generation(matrix: torch.Tensor, scores: torch.Tensor, p: int) -> GenerationAttribution:
    n = matrix.shape[0]
    ids = list(range(p + n))
    return GenerationAttribution(matrix, ids, [str(i) for i in ids], p, scores, "", None)  # type: ignore[arg-type]


def test_routing_by_hand() -> None:
    # p = 2 prompt tokens, 3 generated: row k sees columns < 2 + k
    m = torch.tensor([[1.0, 2.0, 0, 0, 0],     # g0 from the prompt, score 3
                      [0.5, 0.0, 1.5, 0, 0],   # g1: half of its 2 from g0
                      [0.2, 0.3, 0.4, 1.0, 0]], dtype=torch.float32)  # the answer g2
    scores = torch.tensor([3.0, 2.0, 1.9])
    routed = route(generation(m, scores, 2))
    # by hand: r1 = 1.0 → +[0.25, 0, 0.75]; then r0 = 0.4 + 0.75 = 1.15 → +1.15·[1/3, 2/3]
    want_routed = [0.25 + 1.15 / 3, 2 * 1.15 / 3]
    assert routed.direct.tolist() == pytest.approx([0.2, 0.3])
    assert routed.routed.tolist() == pytest.approx(want_routed)
    assert routed.passed.tolist() == pytest.approx([1.15, 1.0])
    # every row's books close here, so the answer's whole mass lands on the prompt
    assert float(routed.total.sum()) == pytest.approx(float(m[2].sum()))


def test_mass_is_conserved_up_to_each_rows_books() -> None:
    torch.manual_seed(0)
    p, n = 4, 5
    m = torch.zeros(n, p + n)
    for k in range(n):
        m[k, : p + k] = torch.randn(p + k)
    scores = m.sum(-1) * torch.tensor([1.0, 1.25, 0.8, 1.1, 1.0])  # rows absorb (or gain) part of their score
    routed = route(generation(m, scores, p))
    got = float(routed.total.double().sum())
    # independent: the mass a hop loses is r_j (1 − ΣM[j]/s_j), with r_j the relevance passed on
    lost = math.fsum(float(r) * (1 - float(m[j].double().sum() / scores[j].double()))
                     for j, r in enumerate(routed.passed))
    assert got == pytest.approx(float(m[-1].double().sum()) - lost, abs=1e-9)
    assert got == pytest.approx(routed.expected_mass(), abs=1e-9)
    early = route(generation(m, scores, p), answer=1)
    assert early.passed.shape == (1,) and float(early.passed[0]) == pytest.approx(float(m[1, p]))


# ---- the planted two-hop task -----------------------------------------------------------------------------
# Prompt: 4 filler tokens and one fact F (a value 0..7) at a random place, then the query token Q. The model
# generates the intermediate I (a copy of F) and then the answer A = 8 + I. In training, I differs from F in a
# third of the rows (and A follows I), so A is a function of I alone: the fact reaches A only through I.
FILL, Q, VALUES = range(16, 24), 30, 8


def batch(size: int, gen: torch.Generator) -> torch.Tensor:
    rows = []
    for _ in range(size):
        prompt = [int(t) for t in torch.randint(16, 24, (5,), generator=gen)]
        fact = int(torch.randint(0, VALUES, (1,), generator=gen))
        prompt[int(torch.randint(0, 5, (1,), generator=gen))] = fact
        inter = fact if torch.rand(1, generator=gen) < 0.67 else int(torch.randint(0, VALUES, (1,), generator=gen))
        rows.append(prompt + [Q, inter, VALUES + inter])
    return torch.tensor(rows)


@pytest.fixture(scope="module")
def two_hop():
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=32, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=16)
    model = tf.LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(400):
        x = batch(64, gen)
        logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, 32), x[:, 6:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_two_hop_fact_reaches_the_answer_only_when_routed(two_hop) -> None:
    gen = torch.Generator().manual_seed(7)
    checked = 0
    for row in batch(24, gen):
        prompt = row[:6].tolist()
        fact_at = next(i for i, t in enumerate(prompt) if t < VALUES)
        explained = lxt_fx.explain_generation(two_hop, prompt, tokenizer=None, max_new_tokens=2)
        fact = prompt[fact_at]
        if explained.generated_ids != [fact, VALUES + fact]:
            continue  # the model's chain is wrong on this row (rare): nothing to route
        checked += 1
        routed = route(explained)
        direct, through = routed.direct[fact_at].item(), routed.routed[fact_at].item()
        assert through > 0 and abs(direct) < 0.25 * through, (direct, through)
        # routed, the fact is the prompt token that matters most, by far
        assert int(routed.routed.argmax()) == fact_at
        assert through > 0.5 * float(routed.total.abs().sum())
    assert checked >= 20
