"""Vision-language models (tiny random LLaVA-like and Qwen2-VL-like): figures and the README picture.

    python benchmarks/vlm.py [--png docs/_static/vlm_mixed.png] [--out benchmarks/results/vlm.md]

For each model: the capture seconds (``torch.export`` of the whole VLM for one image count and text length),
the largest absolute difference between ``explain``'s token / patch relevance and the float64 explicit-form
reference (:func:`lxt_fx.reference.explicit_relevance`, summed per token and per patch), that relative to
the largest reference value, and the zero-bias books verdict of :func:`lxt_fx.check`. Then one picture: a fresh
tiny Qwen2-VL-like model is trained here for a few seconds (300 Adam steps) to answer "red" or "blue" for the
colour of a 12×12 square placed at random on a grey 32×32 image, then explains "red" minus "blue" for one
such image: text tokens and the 8×8 patch grid side by side (``Attribution.save_mixed_png``). Timings on a shared CPU are upper bounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "<|vision_start|>", "<|vision_end|>", "what", "colour", "is", "the",
         "square", "in", "this", "picture", "?", "it", "red", "blue", "green", "a", "of", "photo", ":"]


def word_tokenizer() -> object:
    """A whitespace word-level tokenizer over :data:`WORDS`, with ``<image>`` as id 95 (the tiny VLMs' image
    token), ``<|vision_start|>`` / ``<|vision_end|>`` as 93 / 92."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS) if not w.startswith("<|")}
    vocab.update({"<|vision_start|>": 93, "<|vision_end|>": 92, "<image>": 95})
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>")


def measure(kind: str) -> dict:
    """Capture seconds, max |Δ| against the float64 reference, books verdict for the tiny ``kind`` VLM."""
    import lxt_fx
    from lxt_fx.composites import for_model
    from lxt_fx.reference import explicit_relevance
    from lxt_fx.session import rewritten_graph, split_inputs
    from tests.modalities.test_vlm import _model_call, _patch_sums_llava, _patch_sums_qwen
    from tests.modalities.tiny import images, model, vlm_ids

    m = model(kind)
    ids, pixels = vlm_ids(kind, 2), images(2, 3)
    start, cpu = time.perf_counter(), time.process_time()
    att = lxt_fx.explain(m, ids, images=pixels, strict=True)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    call = _model_call(kind, ids, pixels)
    tensors, static = split_inputs(m, call)
    graph = rewritten_graph(m, for_model(m), tensors, static)
    logits = graph(tensors)["logits"].double()
    rows = torch.arange(ids.shape[0])
    seeds = torch.zeros_like(logits)
    seeds[rows, -1, att.target_ids] = logits[rows, -1, att.target_ids]
    ref = explicit_relevance(graph, tensors, {"logits": seeds})
    tokens = ref["inputs_embeds"].sum(-1)
    patches = _patch_sums_llava(ref["pixel_values"]) if kind == "llava" else _patch_sums_qwen(ref["pixel_values"], 2)
    d_tok = float((att.relevance.double() - tokens).abs().max())
    d_img = float((att.image_relevance.double() - patches).abs().max())
    verdict = lxt_fx.check(m, call, target=int(att.target_ids[0])).zero_bias.verdict()
    return {"kind": kind, "capture_s": graph.report.capture_seconds, "explain_s": wall, "explain_cpu": cpu, "d_tok": d_tok,
            "rel_tok": d_tok / float(tokens.abs().max()), "d_img": d_img, "rel_img": d_img / float(patches.abs().max()),
            "books": verdict.reason if not verdict.verified else "closes", "unhandled": len(graph.report.unhandled)}


def squares(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` 32×32 grey images, each with a red or a blue 12×12 square at a random place; labels 1 = red."""
    images = torch.full((batch, 3, 32, 32), 0.5)
    red = torch.randint(0, 2, (batch,), generator=generator)
    for b in range(batch):
        y, x = (int(v) for v in torch.randint(0, 21, (2,), generator=generator))
        colour = torch.tensor([0.9, 0.1, 0.1]) if red[b] else torch.tensor([0.1, 0.1, 0.9])
        images[b, :, y:y + 12, x:x + 12] = colour[:, None, None]
    return images, red


def trained_vlm(tok: object, prompt: str, steps: int = 300) -> torch.nn.Module:
    """A fresh tiny Qwen2-VL-like model trained (Adam, ``steps`` batches of 16) to answer "red" or "blue" for
    the colour of the square, so that its answer has to come from the image."""
    from tests.modalities.test_vlm import _model_call
    from tests.modalities.tiny import model

    m = model.__wrapped__("qwen2_vl").train()
    ids = torch.tensor([tok(prompt)["input_ids"]])
    answer = torch.tensor(tok.convert_tokens_to_ids(["blue", "red"]))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        images, red = squares(16, generator)
        logits = m(**_model_call("qwen2_vl", ids.expand(16, -1), images)).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, answer[red])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"  step {step}: loss {loss.item():.3f}")
    return m.eval()


def picture(path: Path) -> None:
    """The README picture: a tiny Qwen2-VL-like model trained on red / blue squares, one call."""
    import lxt_fx

    tok = word_tokenizer()
    prompt = "<s> <|vision_start|> " + "<image> " * 16 + "<|vision_end|> what colour is the square ?"
    m = trained_vlm(tok, prompt)
    image = torch.full((1, 3, 32, 32), 0.5)
    image[0, :, 4:16, 16:28] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]  # a red square, upper right
    # "red" against "blue": what in the text and the image moves the logit of one colour over the other
    att = lxt_fx.explain(m, prompt, tokenizer=tok, images=image, target=lxt_fx.Contrastive("red", "blue"), strict=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    att.save_mixed_png(path, image[0], dpi=100)
    print(f"wrote {path}: score {float(att.target_scores[0]):.2f}, text {tuple(att.relevance.shape)}, "
          f"patches {tuple(att.image_relevance.shape)}")


def main() -> None:
    """Measure both VLMs, print (and write) the table, draw the picture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", default=str(ROOT / "docs/_static/vlm_mixed.png"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/vlm.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure(kind) for kind in ("llava", "qwen2_vl")]
    import os

    load = os.getloadavg()[0]
    lines = ["| model | capture (s) | explain, first call (s) | its CPU time (s) | max abs Δ tokens | rel. | max abs Δ patches | rel. | "
             "unhandled | zero-bias books |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['kind']} | {r['capture_s']:.1f} | {r['explain_s']:.1f} | {r['explain_cpu']:.1f} | {r['d_tok']:.1e} | {r['rel_tok']:.1e} | "
              f"{r['d_img']:.1e} | {r['rel_img']:.1e} | {r['unhandled']} | {r['books']} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    header = ("# Tiny VLMs against the float64 reference\n\n`python benchmarks/vlm.py`: two rows of text, one 16×16 "
              "image per row, `explain(..., strict=True)`; Δ against `lxt_fx.reference.explicit_relevance` (float64), "
              "summed per token / patch; rel. = Δ / the largest reference value; books: `lxt_fx.check` in zero-bias "
              f"mode. Wall seconds on 2 shared cores (load average {load:.1f}, one thread): upper bounds; the CPU "
              "time of the process is the better guide.\n\n")
    Path(args.out).write_text(header + table + "\n")
    picture(Path(args.png))


if __name__ == "__main__":
    main()
