"""Faithfulness of context attribution on the real SmolLM2-135M-Instruct: which sentence of a context did the
answer use?

Cases are generated (seeded): four short passages of two sentences each about made-up entities (names and
places no model has seen), and a question that exactly one passage answers. Two kinds:

* ``residence``: "<Person> lives in <Town>. <Person> works as a <job>." — "Where does <Person> live?"
* ``pet``:       "The dog of <Person> is named <Name>. <First name> was born in <year>." — "What is the name of the
  dog of <Person>?"

The model answers greedily (a few tokens) through the chat template, its answer started for it ("<Person>
lives in", "The dog of <Person> is named", so that the next token begins the answer); a case it answers wrongly is excluded
and counted. Each method scores the context's sentences for the first answer token's logit at the last prompt
position:

* ``AttnLRP`` — ``lxt_fx.explain`` (one forward, one backward), relevance summed per sentence
  (``Attribution.spans``'s offsets mapping);
* ``Input×Gradient`` — the plain gradient of the same logit times the input embedding;
* ``attention (last layer)`` / ``attention (all layers)`` — the attention weights from the last prompt
  position to each token, averaged over the heads of the last layer / over every layer and head;
* ``random`` — seeded noise;
* ``leave-one-out`` — the drop of the answer's log-probability when the sentence is removed (one forward per
  sentence, batched): the expensive ceiling.

Two measures: **top-1** — the passage whose sentences' summed score is highest is the answer-bearing one;
**ablation** (ContextCite, Cohen-Wang et al. 2024) — remove each method's top-k sentences (k = 1, 2, 4) and
measure the drop of the log-probability of the whole answer (teacher-forced), mean ± standard error over
cases. Wall time per case per method is the median over cases (1 thread).

    python benchmarks/context_attribution.py --cases 100 --out benchmarks/results/context_attribution.md
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lxt_fx  # noqa: E402
from lxt_fx import models  # noqa: E402
from lxt_fx.evaluate.baselines import eager_attention  # noqa: E402
from lxt_fx.spans import Span, assign, context_prompt, token_offsets  # noqa: E402

SYLLABLES = ["ka", "lo", "mir", "ve", "dra", "sul", "teo", "bri", "nox", "pel", "qua", "ris", "zan", "fo", "gel",
             "hin", "jor", "wum", "yat", "ced"]
FIRST = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hugo", "Iris", "Jonas", "Karla", "Leo", "Mara",
         "Nils", "Olga", "Paul", "Rosa", "Sven", "Tara", "Viktor"]
JOBS = ["baker", "pilot", "teacher", "farmer", "doctor", "painter", "sailor", "miner", "tailor", "singer"]
METHODS = ["AttnLRP", "Input×Gradient", "attention (last layer)", "attention (all layers)", "random",
           "leave-one-out"]
KS = (1, 2, 4)


def made_up(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


@dataclass
class Case:
    kind: str
    passages: list[list[str]]  # sentences per passage
    question: str
    answer: str
    gold: int  # the answer-bearing passage
    prefix: str  # the start of the assistant's answer, given (the next token starts the answer)

    @property
    def sentences(self) -> list[str]:
        return [s for p in self.passages for s in p]

    def context(self, drop: frozenset[int] = frozenset()) -> str:
        out, k = [], 0
        for passage in self.passages:
            kept = []
            for sentence in passage:
                if k not in drop:
                    kept.append(sentence)
                k += 1
            if kept:
                out.append(" ".join(kept))
        return "\n\n".join(out) if out else "(no context)"


def make_case(kind: str, rng: random.Random, passages: int = 4) -> Case:
    people = set()
    while len(people) < passages:
        people.add(f"{rng.choice(FIRST)} {made_up(rng, 2)}")
    people_list = sorted(people)
    rng.shuffle(people_list)
    towns = rng.sample([made_up(rng, 2) for _ in range(3 * passages)], passages)
    gold = rng.randrange(passages)
    texts = []
    if kind == "residence":
        jobs = rng.sample(JOBS, passages)
        for person, town, job in zip(people_list, towns, jobs, strict=True):
            texts.append([f"{person} lives in {town}.", f"{person.split()[0]} works as a {job}."])
        return Case(kind, texts, f"Where does {people_list[gold]} live?", towns[gold], gold,
                    f"{people_list[gold]} lives in")
    pets = rng.sample([made_up(rng, 2) for _ in range(3 * passages)], passages)
    years = rng.sample(range(1901, 1999), passages)
    for person, pet, year in zip(people_list, pets, years, strict=True):
        texts.append([f"The dog of {person} is named {pet}.", f"{person.split()[0]} was born in {year}."])
    return Case(kind, texts, f"What is the name of the dog of {people_list[gold]}?", pets[gold], gold,
                f"The dog of {people_list[gold]} is named")


@dataclass
class Prepared:
    case: Case
    prompt_ids: list[int]
    answer_ids: list[int]
    owner: list[int]  # per prompt token: its sentence, or -1
    base_logprob: float
    scores: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def sentence_owner(text: str, ids: list[int], tokenizer, case: Case) -> list[int]:
    """The sentence of the context each prompt token belongs to (the spans' own offsets mapping)."""
    context = case.context()
    start = text.index(context)
    spans, pos = [], start
    for sentence in case.sentences:
        at = text.index(sentence, pos)
        spans.append(Span(sentence, at, at + len(sentence)))
        pos = at + len(sentence)
    return assign(text, token_offsets(text, ids, tokenizer), spans)


def encode(tokenizer, case: Case, drop: frozenset[int] = frozenset()) -> tuple[str, list[int]]:
    text = context_prompt(tokenizer, case.context(drop), case.question) + case.prefix
    return text, tokenizer(text)["input_ids"]


@torch.no_grad()
def greedy(model, ids: list[int], steps: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=steps, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


@torch.no_grad()
def answer_logprobs(model, prompts: list[list[int]], answer: list[int]) -> list[float]:
    """log p(answer | prompt) for each prompt (teacher-forced), one left-padded batch."""
    rows = [p + answer[:-1] for p in prompts]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float().log_softmax(-1)
    n = len(answer)
    picked = logits[:, width - n:, :].gather(-1, torch.tensor(answer)[None, :, None].expand(len(rows), n, 1))
    return picked[..., 0].sum(-1).tolist()


def per_sentence(values: torch.Tensor, owner: list[int], count: int) -> list[float]:
    out = [0.0] * count
    for v, o in zip(values.tolist(), owner, strict=True):
        if o >= 0:
            out[o] += v
    return out


def prepare(model, tokenizer, case: Case) -> Prepared | None:
    """The case with the model's own answer tokens, or None when the model does not answer it correctly."""
    text, ids = encode(tokenizer, case)
    produced = greedy(model, ids, 8)
    for m in range(1, len(produced) + 1):
        said = tokenizer.decode(produced[:m], skip_special_tokens=True).strip()
        if said.lower().startswith(case.answer.lower()):
            owner = sentence_owner(text, ids, tokenizer, case)
            return Prepared(case, ids, produced[:m], owner, answer_logprobs(model, [ids], produced[:m])[0])
    return None


def score_methods(model, prep: Prepared, seed: int) -> None:
    ids = torch.tensor([prep.prompt_ids])
    mask = torch.ones_like(ids)
    first = prep.answer_ids[0]
    count = len(prep.case.sentences)

    start = time.perf_counter()
    att = lxt_fx.explain(model, ids, target=first)
    prep.scores["AttnLRP"] = per_sentence(att.relevance[0], prep.owner, count)
    prep.seconds["AttnLRP"] = time.perf_counter() - start

    start = time.perf_counter()
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logit = model(inputs_embeds=emb, attention_mask=mask).logits[0, -1, first]
    (grad,) = torch.autograd.grad(logit, emb)
    prep.scores["Input×Gradient"] = per_sentence((emb * grad).sum(-1)[0].detach(), prep.owner, count)
    prep.seconds["Input×Gradient"] = time.perf_counter() - start

    start = time.perf_counter()
    with torch.no_grad(), eager_attention(model):
        attentions = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    last = attentions[-1][0, :, -1].mean(0)
    every = torch.stack([a[0, :, -1].mean(0) for a in attentions]).mean(0)
    took = time.perf_counter() - start
    prep.scores["attention (last layer)"] = per_sentence(last, prep.owner, count)
    prep.scores["attention (all layers)"] = per_sentence(every, prep.owner, count)
    prep.seconds["attention (last layer)"] = prep.seconds["attention (all layers)"] = took

    start = time.perf_counter()
    prep.scores["random"] = [random.Random(seed * 1000 + k).random() for k in range(count)]
    prep.seconds["random"] = time.perf_counter() - start

    start = time.perf_counter()
    tokenizer = model._bench_tokenizer
    variants = [encode(tokenizer, prep.case, frozenset({k}))[1] for k in range(count)]
    dropped = answer_logprobs(model, variants, prep.answer_ids)
    prep.scores["leave-one-out"] = [prep.base_logprob - v for v in dropped]
    prep.seconds["leave-one-out"] = time.perf_counter() - start


def passages_of(scores: list[float], case: Case) -> list[float]:
    out, k = [], 0
    for passage in case.passages:
        out.append(sum(scores[k:k + len(passage)]))
        k += len(passage)
    return out


def ablation(model, tokenizer, prep: Prepared) -> dict[tuple[str, int], float]:
    """The answer's log-probability drop when each method's top-k sentences are removed."""
    wanted: dict[tuple[str, int], frozenset[int]] = {}
    for method in METHODS:
        order = sorted(range(len(prep.case.sentences)), key=lambda k: prep.scores[method][k], reverse=True)
        for k in KS:
            wanted[(method, k)] = frozenset(order[:k])
    unique = sorted(set(wanted.values()), key=sorted)
    values = answer_logprobs(model, [encode(tokenizer, prep.case, d)[1] for d in unique], prep.answer_ids)
    by_set = dict(zip(unique, values, strict=True))
    return {key: prep.base_logprob - by_set[d] for key, d in wanted.items()}


def mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return m, se


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100, help="cases generated, split over the two kinds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the markdown tables here")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop starting new cases after this many minutes (the report says how many ran)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    model, tokenizer = models.load("smollm2")
    model._bench_tokenizer = tokenizer
    rng = random.Random(args.seed)
    kinds = ["residence", "pet"]
    cases = [make_case(kinds[i % 2], rng) for i in range(args.cases)]
    done: list[Prepared] = []
    drops: list[dict[tuple[str, int], float]] = []
    excluded = {k: 0 for k in kinds}
    for i, case in enumerate(cases):
        if args.minutes is not None and time.perf_counter() - wall > 60 * args.minutes:
            print(f"time budget reached after {i} of {len(cases)} cases", file=sys.stderr)
            args.ran = i
            break
        prep = prepare(model, tokenizer, case)
        if prep is None:
            excluded[case.kind] += 1
            continue
        score_methods(model, prep, args.seed * 100_000 + i)
        drops.append(ablation(model, tokenizer, prep))
        done.append(prep)
        print(f"case {i + 1}/{len(cases)} ({time.perf_counter() - wall:.0f} s)", file=sys.stderr, flush=True)
        if args.out and len(done) % 5 == 0:  # a partial report, in case the run is stopped
            Path(args.out).write_text("\n".join(report(done, drops, excluded, kinds, args,
                                                       time.perf_counter() - wall)) + "\n", encoding="utf-8")
    lines = report(done, drops, excluded, kinds, args, time.perf_counter() - wall)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


def report(done: list[Prepared], drops: list[dict], excluded: dict[str, int], kinds: list[str],
           args: argparse.Namespace, seconds: float) -> list[str]:
    lines = ["# Context attribution on SmolLM2-135M-Instruct: faithfulness", "",
             f"`python benchmarks/context_attribution.py --cases {args.cases} --seed {args.seed} --threads "
             f"{args.threads}` ({seconds / 60:.1f} min in all, {args.threads} thread(s); "
             f"{getattr(args, 'ran', len(done) + sum(excluded.values()))} cases generated and run). "
             "Cases: four passages of "
             "two sentences about made-up people and towns; one passage answers the question. Kept: "
             + ", ".join(f"{k} {sum(p.case.kind == k for p in done)} (excluded as answered wrongly: {excluded[k]})"
                         for k in kinds) + ".", "",
             "## Top-1: the answer-bearing passage ranked first (sentence scores summed per passage)", "",
             "| method | " + " | ".join(kinds) + " | all |", "|---|" + "---:|" * (len(kinds) + 1)]
    for method in METHODS:
        cells = []
        for kind in [*kinds, None]:
            chosen = [p for p in done if kind is None or p.case.kind == kind]
            hits = sum(max(range(len(p.case.passages)), key=lambda j, p=p: passages_of(p.scores[method], p.case)[j])
                       == p.case.gold for p in chosen)
            cells.append(f"{hits}/{len(chosen)} ({100 * hits / max(1, len(chosen)):.0f} %)")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "## Ablation: drop of the answer's log-probability when the top-k sentences are removed",
              "", "Mean ± standard error over the kept cases (higher: the method found the sentences the answer "
              "needs); wall time: median per case (leave-one-out: one forward per sentence, batched).", "",
              "| method | k = 1 | k = 2 | k = 4 | time per case (s) |", "|---|---:|---:|---:|---:|"]
    for method in METHODS:
        cells = []
        for k in KS:
            m, se = mean_se([d[(method, k)] for d in drops])
            cells.append(f"{m:.3f} ± {se:.3f}")
        t = statistics.median(p.seconds[method] for p in done)
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {t:.3f} |")
    lines += ["", "The attention rows share one forward (its time is listed for each)."]
    return lines


if __name__ == "__main__":
    main()
