"""MoE experts written with ATen's grouped matrix product (``aten._grouped_mm``) are linear in the tokens.

transformers picks ``experts_implementation="grouped_mm"`` by default; in bfloat16 (and on CUDA) that is
``aten._grouped_mm``, in float32 on CPU its own ``transformers::grouped_mm_fallback``. A random 64-expert MoE
on a GPU (benchmarks/gpu.py) reported 32 unhandled nodes before ``aten._grouped_mm`` was known to be linear.
Checked here: strict coverage passes in bfloat16, and the relevance agrees with the same weights in float32,
where the experts run transformers' fallback kernel instead (whose books close: tests/test_moe_conservation.py).
A product rule wrongly splitting relevance between tokens and expert weights would halve the map. (The plain
per-expert loop, ``experts_implementation="eager"``, cannot be exported: its token counts are data-dependent.)"""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import lxt_fx


def _model(implementation: str, dtype: torch.dtype) -> torch.nn.Module:
    config = tf.Qwen3MoeConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4,
                               num_experts_per_tok=2, moe_intermediate_size=24, decoder_sparse_step=1,
                               max_position_embeddings=64)
    config._experts_implementation = implementation
    torch.manual_seed(0)
    return tf.Qwen3MoeForCausalLM(config).eval().to(dtype)


def test_grouped_mm_experts_are_linear_in_the_tokens() -> None:
    grouped = _model("grouped_mm", torch.bfloat16)
    ops = {str(n.target) for n in torch.export.export(
        grouped, (torch.tensor([[5, 6, 7]]),), kwargs={"use_cache": False}, strict=False).graph.nodes}
    if "aten._grouped_mm.default" not in ops:
        pytest.skip("this torch/transformers pair does not use aten._grouped_mm for bfloat16 experts")
    ids = torch.randint(3, 96, (1, 9), generator=torch.Generator().manual_seed(1))
    got = lxt_fx.explain(grouped, ids, target=11, strict=True)  # strict: no unhandled node
    fallback = _model("grouped_mm", torch.float32)
    assert "transformers.grouped_mm_fallback.default" in {str(n.target) for n in torch.export.export(
        fallback, (ids,), kwargs={"use_cache": False}, strict=False).graph.nodes}
    reference = lxt_fx.explain(fallback, ids, target=11, strict=True)
    r, ref = got.relevance.float(), reference.relevance
    assert torch.isfinite(r).all()
    # bfloat16 against float32: agree to bf16 precision, token by token
    assert (r - ref).abs().max() <= 0.05 * ref.abs().max(), ((r - ref).abs().max(), ref.abs().max())
    assert torch.corrcoef(torch.stack([r.flatten(), ref.flatten()]))[0, 1] > 0.99
