"""Conservation bookkeeping: zero-bias mode conserves exactly without softmax; on transformers the softmax
rule's bias term (and biases, in normal mode) explain the whole gap score − input sum."""

from __future__ import annotations

import torch
from check_models import MLP
from conftest import VOCAB, make_model

from lxt_fx.check import check


def test_zero_bias_mlp_conserves() -> None:
    model = MLP()
    x = torch.randn(2, 5, 16)
    report = check(model, {"inputs_embeds": x})
    normal, zero = report.conservation, report.zero_bias
    assert zero is not None and zero.zeroed == ["linear", "relu", "linear_1"]  # two biases, the rule ε
    assert zero.relative_gap < 1e-5, zero.relative_gap
    assert normal.relative_gap > 1e-2  # the biases really absorb relevance in normal mode …
    causes = normal.by_cause()
    assert abs(normal.gap - causes["bias"]) <= 1e-5 * abs(normal.score)  # … and the bias term is all of it
    assert abs(causes["softmax"]) == 0.0 and report.ok
    assert [s.label for s in normal.segments] == ["graph", "target"]


def test_softmax_term_explains_the_gap_on_a_transformer() -> None:
    model = make_model("qwen2", "sdpa")  # q/k/v biases: made non-zero so zero-bias mode has work to do
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.2)
    ids = torch.randint(0, VOCAB, (1, 8))
    report = check(model, ids)
    zero = report.zero_bias
    assert zero is not None and len(zero.zeroed) >= 6  # q, k, v of both layers
    softmax = zero.by_cause()["softmax"]
    assert zero.relative_gap > 1e-3  # a real gap …
    assert abs(zero.gap - softmax) <= 1e-4 * abs(zero.score)  # … that the softmax term explains
    assert abs(zero.by_cause()["bias"]) <= 1e-6 * abs(zero.score)  # rounding only
    normal = report.conservation
    causes = normal.by_cause()
    assert causes["bias"] != 0.0
    assert abs(normal.gap - causes["bias"] - causes["softmax"]) <= 1e-4 * abs(normal.score)
    # block boundaries telescope: each block's loss is the difference of the sums around it
    for seg in normal.segments:
        if seg.label.startswith("block"):
            assert abs(seg.lost - sum(seg.by_cause.values())) <= 1e-5 * abs(normal.score)
    boundaries = dict(normal.boundaries())
    assert set(boundaries) >= {"input", "entering block 0", "entering block 1", "entering head", "score"}
    assert boundaries["input"] == normal.input_sum and report.ok
