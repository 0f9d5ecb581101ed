"""Faithfulness of AttnLRP against gradient baselines: token flipping (MoRF / LeRF / ABPC) on SmolLM2 and
planted-evidence hit-rates on a tiny LLaMA trained here on key–value retrieval.

    python benchmarks/faithfulness.py                      # the full run (see --help for sizes)
    python benchmarks/faithfulness.py --quick              # a few rows of each, minutes
    python benchmarks/faithfulness.py --tiny --quick       # no SmolLM2 (random tiny LLaMA): a smoke run

Three measurements, all rows explained at their last position:
1. passages — SmolLM2-135M-Instruct explains its own argmax next token after the first ``--length`` tokens
   of each shipped natural-text passage (``lxt_fx/evaluate/data/passages.jsonl``).
2. cloze — SmolLM2 explains the logit of the given one-token answer of each shipped cloze prompt.
3. synthetic — a 2-layer LLaMA trained for at most ``--train-seconds`` on key–value retrieval; each
   method's top-ranked context token must hit the planted key/value pair (hit@1, recall@2; chance 1/P).
   Its ABPC is reported too.

Perturbation: zero the input embedding of the flipped tokens (the paper's protocol), ``--steps`` equal
fractions, explained score = the target logit. Every table cell is a mean over rows ± its standard error
(SD/√N); ``attnlrp − method`` is the paired difference over the same rows ± its SE, with mean/SE.
Results: ``benchmarks/results/faithfulness.{json,md}`` and ``faithfulness_curves.png``.

The defaults (58 passages, 200 prompts, 8 methods, 20 steps) take hours on one shared CPU core. The
committed results were sized to ~15 minutes there (2 cores shared with other jobs, 1 torch thread):

    python benchmarks/faithfulness.py --passages 14 --methods attnlrp,cp_lrp,ixg,ig,random --cloze 24 \
        --cloze-methods attnlrp,cp_lrp,ixg,ig,gradient,saliency,rollout,random --steps 5 --ig-steps 8
    # cloze variants (see faithfulness_notes.md): add --passages 0 --synthetic 0 and --keep-last or --score logprob
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from lxt_fx.evaluate import baselines, data, report, synthetic
from lxt_fx.evaluate.perturbation import mean_se
from lxt_fx.evaluate.runner import Run, run, work_units

ALL = ["attnlrp", "cp_lrp", "ixg", "ig", "gradient", "saliency", "rollout", "random"]
RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--passages", type=int, default=58, help="passages (N); 0 skips")
    p.add_argument("--length", type=int, default=32, help="tokens per passage (L)")
    p.add_argument("--cloze", type=int, default=200, help="cloze prompts (N); 0 skips")
    p.add_argument("--synthetic", type=int, default=256, help="synthetic sequences (N); 0 skips")
    p.add_argument("--methods", default=",".join(ALL), help="comma-separated methods for SmolLM2 passages")
    p.add_argument("--cloze-methods", default=None, help="methods for the cloze prompts (default: --methods)")
    p.add_argument("--synthetic-methods", default=",".join(ALL), help="methods for the synthetic task")
    p.add_argument("--steps", type=int, default=20, help="perturbation steps (equal fractions)")
    p.add_argument("--ig-steps", type=int, default=32, help="Integrated Gradients steps")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    p.add_argument("--chunk-size", type=int, default=8, help="rows attributed together")
    p.add_argument("--train-seconds", type=float, default=170.0, help="synthetic training budget (≤ 180)")
    p.add_argument("--keep-first", action="store_true", help="never flip the first token (sink study)")
    p.add_argument("--keep-last", action="store_true", help="never flip the token at the explained position")
    p.add_argument("--score", default="logit", choices=["logit", "prob", "logprob"], help="explained score")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: best on a shared 2-core box)")
    p.add_argument("--tiny", action="store_true", help="a random tiny LLaMA instead of SmolLM2 (smoke)")
    p.add_argument("--quick", action="store_true", help="4 passages, 8 prompts, 64 sequences, 5 steps")
    p.add_argument("--out", default=str(RESULTS), help="results directory")
    p.add_argument("--name", default="faithfulness", help="file stem of the results")
    args = p.parse_args(argv)
    if args.quick:
        args.passages, args.cloze, args.synthetic = min(args.passages, 4), min(args.cloze, 8), min(args.synthetic, 64)
        args.steps, args.ig_steps, args.train_seconds = min(args.steps, 5), min(args.ig_steps, 8), min(args.train_seconds, 60)
    args.train_seconds = min(args.train_seconds, 180.0)
    return args


def load_model(tiny: bool) -> tuple[Any, Any, str]:
    """(model, tokenizer, name): SmolLM2, or a random tiny LLaMA with a word tokenizer for smoke runs."""
    if not tiny:
        from lxt_fx.models import load

        model, tok = load("smollm2")
        return model, tok, "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to float32)"
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({w.strip(".,;:()\"'").lower() for p in data.load_passages() for w in p.text.split()})[:2000]
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval(), tok, "random tiny LLaMA (smoke run)"


def bar(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console)


def perturbation_run(model: Any, tok: Any, name: str, examples: list[data.Example], methods: list[str],
                     args: argparse.Namespace, console: Console, skipped: int = 0) -> Run:
    total = work_units(examples, methods, args.steps, 2, args.ig_steps)
    pad = pad_id(tok)
    with bar(console) as progress:
        task = progress.add_task(f"{name}: {len(examples)} rows × {len(methods)} methods", total=total)
        return run(model, examples, methods, steps=args.steps, tokenizer=tok, chunk_size=args.chunk_size,
                   batch_size=args.batch_size, ig_steps=args.ig_steps, seed=args.seed, pad_id=pad,
                   skipped=skipped, keep_first=args.keep_first, keep_last=args.keep_last, score=args.score,
                   progress=lambda n: progress.advance(task, n))


def pad_id(tok: Any) -> int:
    return tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0


@torch.no_grad()
def answer_accuracy(model: Any, examples: list[data.Example], pad: int) -> tuple[float, float]:
    """Share of cloze prompts whose answer is the model's top-1 / within its top-5 next tokens."""
    from lxt_fx.evaluate.perturbation import model_logits
    from lxt_fx.evaluate.runner import pad as pad_rows

    top1 = top5 = 0
    for start in range(0, len(examples), 32):
        chunk = examples[start:start + 32]
        ids, mask = pad_rows(chunk, pad)
        logits = model_logits(model, model.get_input_embeddings()(ids), mask, mask.sum(1) - 1)
        best = logits.topk(5, -1).indices
        for e, row in zip(chunk, best, strict=True):
            top1 += int(row[0] == e.target_id)
            top5 += int(e.target_id in row.tolist())
    return top1 / len(examples), top5 / len(examples)


def completeness(result: Run) -> dict[str, float] | None:
    """IG's completeness gap |Σ IG − (f(x) − f(0))| / |f(x) − f(0)|, median over rows (f(0): every token
    zeroed = the last point of any curve when all tokens are flippable)."""
    if "ig" not in result.methods or result.settings.get("keep_first") or result.settings.get("keep_last"):
        return None
    curve = result.curves["ig"].curves["morf"]
    delta = curve[:, 0] - curve[:, -1]
    sums = torch.tensor([sum(r) for r in result.relevance["ig"]])
    gap = (sums - delta).abs() / delta.abs().clamp_min(1e-6)
    return {"median_relative_gap": float(gap.median()), "mean_delta": float(delta.mean())}


def synthetic_run(args: argparse.Namespace, methods: list[str], console: Console) -> dict[str, Any]:
    task = synthetic.KeyValueTask()
    model = synthetic.tiny_llama(task, seed=args.seed)
    with bar(console) as progress:
        t = progress.add_task(f"train tiny LLaMA (≤{args.train_seconds:.0f} s)", total=int(args.train_seconds))

        def tick(step: int, loss: float, seconds: float) -> None:
            progress.update(t, completed=min(int(seconds), int(args.train_seconds)),
                            description=f"train tiny LLaMA: step {step}, loss {loss:.3f}")

        training = synthetic.train(model, task, seconds=args.train_seconds, seed=args.seed, progress=tick)
        progress.update(t, completed=int(args.train_seconds))
    ids, targets, evidence = task.sample(args.synthetic, torch.Generator().manual_seed(args.seed + 100))
    with torch.no_grad():
        pred = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].argmax(-1)
    correct = pred == targets
    keep = correct.nonzero().flatten()
    examples = [data.Example(ids[i].tolist(), int(targets[i]), f"kv{int(i)}") for i in keep]
    result = perturbation_run(model, None, "synthetic", examples, methods, args, console)
    ctx = task.context(len(keep))
    hits: dict[str, dict[str, float]] = {}
    for m in methods:
        rel = torch.tensor(result.relevance[m])
        hit1, recall = synthetic.evidence_scores(rel, evidence[keep], ctx)
        h, hse = mean_se(hit1)
        r, rse = mean_se(recall)
        hits[m] = {"hit1": h, "hit1_se": hse, "recall2": r, "recall2_se": rse}
    return {"task": {"keys": task.keys, "values": task.values, "pairs": task.pairs, "length": task.length},
            "training": {"steps": training.steps, "seconds": training.seconds, "loss": training.loss,
                         "heldout_accuracy": training.accuracy},
            "accuracy": float(correct.float().mean()), "n_correct": len(keep), "n_sequences": args.synthetic,
            "chance": 1 / task.pairs, "evidence": hits, "run": result}


def hit_table(syn: dict[str, Any]) -> str:
    rows = ["| method | N | hit@1 ↑ | recall@2 ↑ | ABPC ↑ |", "|---|---|---|---|---|"]
    summary = syn["run"].summary()
    for m, h in sorted(syn["evidence"].items(), key=lambda kv: -kv[1]["hit1"]):
        s = summary[m]
        rows.append(f"| {m} | {syn['n_correct']} | {h['hit1']:.3f} ± {h['hit1_se']:.3f} | "
                    f"{h['recall2']:.3f} ± {h['recall2_se']:.3f} | {s['abpc']:.2f} ± {s['abpc_se']:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console()
    methods = baselines.parse_methods(args.methods)
    cloze_methods = baselines.parse_methods(args.cloze_methods or args.methods)
    syn_methods = baselines.parse_methods(args.synthetic_methods)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, Run] = {}
    meta: dict[str, Any] = {"argv": sys.argv[1:] if argv is None else argv, "settings": vars(args).copy(),
                            "torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.passages or args.cloze:
        t0 = time.perf_counter()
        model, tok, model_name = load_model(args.tiny)
        meta["model"], meta["load_seconds"] = model_name, time.perf_counter() - t0
        console.print(f"[bold]{model_name}[/] loaded in {meta['load_seconds']:.0f} s")
        if args.passages:
            examples, short = data.encode_passages(data.load_passages(), tok, args.length, args.passages)
            meta["passages_too_short"] = len(short)
            runs["passages"] = perturbation_run(model, tok, "passages", examples, methods, args, console)
            console.print(report.console_table(runs["passages"], f"passages · L={args.length} · steps={args.steps}"))
        if args.cloze:
            examples, skipped = data.encode_cloze(data.load_cloze(), tok, args.cloze)
            meta["cloze_skipped_multi_token"] = len(skipped)
            meta["cloze_answer_top1"], meta["cloze_answer_top5"] = answer_accuracy(model, examples, pad_id(tok))
            runs["cloze"] = perturbation_run(model, tok, "cloze", examples, cloze_methods, args, console,
                                             len(skipped))
            result = runs["cloze"]
            console.print(report.console_table(result, f"cloze · steps={args.steps}"))
        del model
    syn = None
    if args.synthetic:
        syn = synthetic_run(args, syn_methods, console)
        runs["synthetic"] = syn["run"]
        table = Table(title=f"synthetic key–value retrieval · chance {syn['chance']:.3f}")
        for col in ("method", "hit@1", "recall@2"):
            table.add_column(col)
        for m, h in syn["evidence"].items():
            table.add_row(m, f"{h['hit1']:.3f} ± {h['hit1_se']:.3f}", f"{h['recall2']:.3f} ± {h['recall2_se']:.3f}")
        console.print(table)
    meta["seconds"] = time.perf_counter() - started
    write(out, args.name, runs, syn, meta)
    console.print(f"total {meta['seconds']:.0f} s; wrote {out / (args.name + '.md')}")
    return 0


def write(out: Path, name: str, runs: dict[str, Run], syn: dict[str, Any] | None, meta: dict[str, Any]) -> None:
    payload: dict[str, Any] = {"meta": meta}
    for key, result in runs.items():
        payload[key] = result.to_dict()
        if key != "synthetic":
            payload[key]["ig_completeness"] = completeness(result)
    if syn is not None:
        payload["synthetic"].update({k: v for k, v in syn.items() if k != "run"})
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1))
    png = report.plot_curves(runs, out / f"{name}_curves.png")
    s = meta["settings"]
    lines = [f"# Faithfulness benchmark ({name})", "",
             f"Model: {meta.get('model', '—')}. Perturbation: zero the input embedding; {s['steps']} equal steps; "
             f"explained score: the target {s['score']} at the last position; IG: {s['ig_steps']} steps, zero baseline. "
             f"Cells: mean over rows ± standard error; `attnlrp − method`: paired difference ± SE (mean/SE). "
             f"ABPC = AUC(LeRF) − AUC(MoRF) in units of the score, higher is better."
             + (" First token never flipped (--keep-first)." if s.get("keep_first") else "")
             + (" Token at the explained position never flipped (--keep-last)." if s.get("keep_last") else "")
             + f" torch threads {meta['threads']}; total {meta['seconds']:.0f} s.", ""]
    if "passages" in runs:
        r = runs["passages"]
        lines += [f"## Passages: next-token prediction, N = {r.n}, L = {s['length']}", "",
                  report.markdown_table(r), ""]
        ig = completeness(r)
        if ig:
            lines += [f"IG completeness gap (median |Σ IG − (f(x) − f(0))| / |f(x) − f(0)|): "
                      f"{ig['median_relative_gap']:.2f}", ""]
    if "cloze" in runs:
        r = runs["cloze"]
        lines += [f"## Cloze prompts: the given one-token answer, N = {r.n} "
                  f"({meta.get('cloze_skipped_multi_token', 0)} skipped: multi-token answer; the answer is "
                  f"SmolLM2's top-1 next token for {meta.get('cloze_answer_top1', math.nan):.0%} of them, top-5 "
                  f"for {meta.get('cloze_answer_top5', math.nan):.0%})", "",
                  report.markdown_table(r), ""]
    if syn is not None:
        t = syn["training"]
        lines += [f"## Synthetic key–value retrieval (tiny LLaMA, {syn['task']['pairs']} pairs of "
                  f"{syn['task']['keys']} keys; trained {t['steps']} steps in {t['seconds']:.0f} s, held-out "
                  f"accuracy {t['heldout_accuracy']:.3f}); N = {syn['n_correct']} of {syn['n_sequences']} sequences the "
                  f"model answers correctly; chance hit@1 = recall@2 = {syn['chance']:.3f}", "",
                  hit_table(syn), ""]
    if png:
        lines += [f"![mean MoRF (solid) and LeRF (dashed) curves]({png.name})", ""]
    (out / f"{name}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
