"""The real SmolLM2-135M-Instruct against LXT 2.1 itself: same weights, same ids, relevance per token.

Two steps, two environments (LXT needs transformers 4.x, see ``README.md`` here and ``make_env.sh``):

    # 1. the project's environment: lxt-fx's relevance, and the dequantized weights for LXT
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/lxt_oracle/smollm2.py ours --out .cache/smollm2-oracle
    # 2. the side environment: LXT's relevance on the same weights and ids, compared with step 1
    HF_HUB_OFFLINE=1 .cache/lxt-venv/bin/python benchmarks/lxt_oracle/smollm2.py lxt --out .cache/smollm2-oracle

Step 2 prints, per prompt and attention implementation, both explained scores and the largest difference of
the token relevances relative to the largest |relevance|. Nothing here is a test: the files are ~540 MB.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROMPTS = ["The capital of France is",
           "Alice gave Bob the book because she wanted him to read it. Bob thanked"]
ATTENTION = ("sdpa", "eager")


def ours(out: Path) -> None:
    """lxt-fx's relevance for every prompt × attention, and the weights + config for LXT's side."""
    import torch
    from safetensors.torch import save_file

    import lxt_fx
    from lxt_fx import models

    model, tokenizer = models.load("smollm2")
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(weights, str(out / "weights.safetensors"))  # tied embeddings: the head is re-tied on load
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config))
    cases = {}
    for i, text in enumerate(PROMPTS):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        for attn in ATTENTION:
            model.config._attn_implementation = attn
            att = lxt_fx.explain(model, ids)
            cases[f"{i}-{attn}"] = {"ids": ids.tolist(), "target": int(att.target_ids[0]),
                                    "score": float(att.target_scores[0]), "relevance": att.relevance[0].tolist()}
    (out / "ours.json").write_text(json.dumps(cases))
    print(f"wrote {out}: {len(cases)} cases")


def lxt(out: Path) -> None:
    """LXT 2.1's relevance on the same weights and ids (side environment), compared with ``ours.json``."""
    stub = Path(__file__).resolve().parents[2] / ".cache" / "lxt-stub"  # written by build_fixtures.py
    sys.path.insert(0, str(stub))
    import lxt.efficient
    import torch
    import transformers as tf
    from safetensors.torch import load_file
    from transformers.models.llama import modeling_llama

    lxt.efficient.monkey_patch(modeling_llama)
    saved = json.loads((out / "config.json").read_text())
    cases = json.loads((out / "ours.json").read_text())
    for attn in ATTENTION:
        config = tf.LlamaConfig(**{k: v for k, v in saved.items()
                                   if k not in ("architectures", "transformers_version", "dtype", "torch_dtype")})
        config.rope_theta = saved["rope_parameters"]["rope_theta"]  # transformers 5 keeps it in rope_parameters
        config._attn_implementation = attn
        model = modeling_llama.LlamaForCausalLM(config).eval()
        loaded = model.load_state_dict(load_file(str(out / "weights.safetensors")), strict=False)
        assert loaded.missing_keys == ["lm_head.weight"] and not loaded.unexpected_keys, loaded
        model.tie_weights()
        for key, case in cases.items():
            if not key.endswith(attn):
                continue
            emb = model.get_input_embeddings()(torch.tensor(case["ids"])).detach().requires_grad_(True)
            score = model(inputs_embeds=emb, use_cache=False).logits[0, -1, case["target"]]
            (grad,) = torch.autograd.grad(score, emb)
            theirs = (emb.detach() * grad).sum(-1)[0]
            mine = torch.tensor(case["relevance"])
            rel = float((theirs - mine).abs().max() / mine.abs().max())
            print(f"prompt {key:8s} score lxt {float(score.detach()):.6f} lxt-fx {case['score']:.6f}  "
                  f"max|ΔR|/max|R| {rel:.1e}  tokens {len(mine)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", choices=["ours", "lxt"])
    parser.add_argument("--out", type=Path, default=Path(".cache/smollm2-oracle"))
    args = parser.parse_args()
    (ours if args.side == "ours" else lxt)(args.out)


if __name__ == "__main__":
    main()
