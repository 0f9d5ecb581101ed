"""RelP and AtP against activation patching on prompt pairs (``lxt_fx.features.patching``).

    python benchmarks/circuits.py                       # SmolLM2-135M, 50 pairs per task
    python benchmarks/circuits.py --pairs 12 --head-layers 0,5,10,15,20,25
    python benchmarks/circuits.py --cost                # also: the whole table for all heads and MLPs, one pair
    python benchmarks/circuits.py --tiny --pairs 2      # a random tiny LLaMA: a smoke run, seconds
    python benchmarks/circuits.py --model gemma3-270m --pairs 20          # Gemma-3-270M, every head
    python benchmarks/circuits.py --direction denoise                     # clean values into the corrupted run
    python benchmarks/circuits.py --ablate --pairs 50 --head-layers 0,6,12,18,24   # after a run: which rule
    python benchmarks/circuits.py --ablate --tasks fact --variants attention ...   # one variant, another task

Tasks (synthetic pairs, same token length for clean and corrupted, metric a logit difference):

* ``ioi``: "When A and B went to the P, B gave a O to" → A vs B; corrupted: the second B is a third name C.
* ``fact``: "The capital of X is" → capital(X) vs capital(Y); corrupted: X → another country Y.
* ``greater``: "The war lasted from the year 17YY to the year 17" → mean logit of the digits above YY's tens
  digit minus the mean of those below; corrupted: YY → 01.
* ``agree`` (subject–verb agreement): "The N in the P" → " is" vs " are"; corrupted: N → its plural.

Per pair, in the noising direction (or ``--direction denoise``): RelP and AtP (one forward on each input, one
backward) and activation patching (one forward per component, batched) for the MLP output of every layer, the heads of
``--head-layers`` and the residual stream after every layer at the last position. Per task and component type:
Pearson and Spearman of RelP and of AtP against activation patching over components, the scores averaged over
the pairs (the patching of the pairs' mean metric), with a 95 % bootstrap interval over pairs; the Pearson
correlation within each pair, its mean and standard error over pairs; the top-k overlap of ``|score|``; the
wall time of each method per pair. Results: ``benchmarks/results/circuits[_gemma3][_denoise].{md,json}``.

``--ablate`` reads the activation-patching scores of the last run (``circuits.json``; IOI unless ``--tasks``) and
recomputes RelP on the same pairs with AttnLRP's rules for one op family at a time replaced by the plain
gradient (attention, the gated-MLP and other products, the norms): which rule moves RelP away from activation
patching. Results: ``circuits_ablation.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lxt_fx.features.components import Component  # noqa: E402
from lxt_fx.features.patching import activation_patching, patching  # noqa: E402
from lxt_fx.targets import Contrastive, Function  # noqa: E402

NAMES = ["John", "Mary", "James", "Anna", "David", "Sarah", "Michael", "Emma", "Robert", "Laura", "Peter", "Lisa",
         "Paul", "Kate", "Mark", "Alice", "Tom", "Jane", "George", "Susan", "Daniel", "Linda", "Chris", "Helen"]
PLACES = ["store", "park", "school", "market", "beach", "office", "garden", "station"]
OBJECTS = ["book", "ball", "drink", "letter", "gift", "key", "bag", "cake"]
CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
            "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens", "Austria": "Vienna", "Poland": "Warsaw",
            "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "China": "Beijing", "Peru": "Lima",
            "Cuba": "Havana", "Kenya": "Nairobi", "Portugal": "Lisbon", "Hungary": "Budapest", "Thailand": "Bangkok",
            "England": "London", "Denmark": "Copenhagen", "Finland": "Helsinki", "Belgium": "Brussels"}
NOUNS = [("key", "keys"), ("dog", "dogs"), ("book", "books"), ("car", "cars"), ("house", "houses"),
         ("tree", "trees"), ("bird", "birds"), ("girl", "girls"), ("boy", "boys"), ("door", "doors"),
         ("window", "windows"), ("table", "tables"), ("chair", "chairs"), ("student", "students"),
         ("teacher", "teachers"), ("picture", "pictures"), ("letter", "letters"), ("friend", "friends"),
         ("doctor", "doctors"), ("box", "boxes")]
AGREE_PLACES = ["room", "garden", "kitchen", "box", "house", "car", "park", "street"]
TASKS = ("ioi", "fact", "greater", "agree")


def _one_token(tokenizer: Any, word: str) -> bool:
    return len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1


def _digit_metric(tokenizer: Any, tens: int) -> Function:
    digits = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    above = torch.tensor(digits[tens + 1:])
    below = torch.tensor(digits[:tens])

    def fn(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        last = outputs["logits"][:, -1]
        return last[:, above].mean(-1) - last[:, below].mean(-1)

    return Function(fn)


def make_pairs(task: str, tokenizer: Any, n: int, seed: int) -> list[tuple[str, str, Any]]:
    """``n`` (clean, corrupted, target) triples of ``task``."""
    rng = random.Random(seed)
    out: list[tuple[str, str, Any]] = []
    if task == "ioi":
        names = [w for w in NAMES if _one_token(tokenizer, w)]
        while len(out) < n:
            a, b, c = rng.sample(names, 3)
            p, o = rng.choice(PLACES), rng.choice(OBJECTS)
            text = "When {} and {} went to the {}, {} gave a {} to"
            out.append((text.format(a, b, p, b, o), text.format(a, b, p, c, o), Contrastive(" " + a, " " + b)))
    elif task == "fact":
        facts = [(k, v) for k, v in CAPITALS.items() if _one_token(tokenizer, k) and _one_token(tokenizer, v)]
        while len(out) < n:
            (x, cx), (y, cy) = rng.sample(facts, 2)
            out.append((f"The capital of {x} is", f"The capital of {y} is", Contrastive(" " + cx, " " + cy)))
    elif task == "greater":
        nouns = ["war", "reign", "drought", "expedition", "treaty", "project", "strike", "voyage"]
        while len(out) < n:
            yy = rng.randint(22, 88)
            noun = rng.choice(nouns)
            text = "The {} lasted from the year 17{:02d} to the year 17"
            out.append((text.format(noun, yy), text.format(noun, 1), _digit_metric(tokenizer, yy // 10)))
    elif task == "agree":
        nouns = [(s, p) for s, p in NOUNS if _one_token(tokenizer, s) and _one_token(tokenizer, p)]
        while len(out) < n:
            (s, p), place = rng.choice(nouns), rng.choice(AGREE_PLACES)
            out.append((f"The {s} in the {place}", f"The {p} in the {place}", Contrastive(" is", " are")))
    else:
        raise KeyError(task)
    return out


# ---- statistics -------------------------------------------------------------------------------------------


def _rank(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    return ranks


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = float(x.norm() * y.norm())
    return float((x * y).sum()) / denom if denom > 0 else float("nan")


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    return pearson(_rank(x.double()), _rank(y.double()))


def overlap(x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    k = min(k, len(x))
    a = set(torch.argsort(x.abs(), descending=True)[:k].tolist())
    b = set(torch.argsort(y.abs(), descending=True)[:k].tolist())
    return len(a & b) / k


def _stat(name: str, x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    return pearson(x, y) if name == "pearson" else spearman(x, y) if name == "spearman" else overlap(x, y, k)


def summarize(est: torch.Tensor, truth: torch.Tensor, k: int, boots: int, seed: int) -> dict[str, list[float]]:
    """``est``, ``truth``: ``[pairs, components]``. Statistic of the pair means, and its bootstrap 95 %
    interval over pairs: ``{stat: [value, lo, hi]}``."""
    gen = torch.Generator().manual_seed(seed)
    pairs = est.shape[0]
    out = {}
    for name in ("pearson", "spearman", "overlap"):
        value = _stat(name, est.mean(0), truth.mean(0), k)
        draws = []
        for _ in range(boots):
            idx = torch.randint(0, pairs, (pairs,), generator=gen)
            draws.append(_stat(name, est[idx].mean(0), truth[idx].mean(0), k))
        draws = torch.tensor(draws)
        draws = draws[~draws.isnan()]
        lo, hi = (float(draws.quantile(0.025)), float(draws.quantile(0.975))) if len(draws) else (float("nan"),) * 2
        out[name] = [value, lo, hi]
    out["pair_pearson"] = per_pair_pearson(est, truth)
    return out


def per_pair_pearson(est: torch.Tensor, truth: torch.Tensor) -> list[float]:
    """Pearson over components within each pair (rows of ``[pairs, components]``): ``[mean, standard error,
    pairs]``, the pairs where either side is constant left out."""
    values = torch.tensor([pearson(e, t) for e, t in zip(est, truth, strict=True)], dtype=torch.float64)
    values = values[~values.isnan()]
    if len(values) < 2:
        return [float(values.mean()) if len(values) else float("nan"), float("nan"), float(len(values))]
    return [float(values.mean()), float(values.std() / len(values) ** 0.5), float(len(values))]


# ---- the run ----------------------------------------------------------------------------------------------


def _components(all_comps: list[Component], head_layers: set[int], length: int) -> list[Component]:
    return [c for c in all_comps if (c.kind == "head" and c.layer in head_layers) or c.kind == "mlp"
            or (c.kind == "resid" and c.position == length - 1)]


def _pair_components(model: Any, tokenizer: Any, pair: tuple[Any, Any, Any], head_layers: set[int]
                     ) -> list[Component]:
    clean, corrupt, target = pair
    listed = patching(model, clean, corrupt, tokenizer=tokenizer, target=target,
                      components=("heads", "mlp", "resid"), methods=())
    length = max(c.position for c in listed.components if c.kind == "resid") + 1
    return _components(listed.components, head_layers, length)


def run_task(model: Any, tokenizer: Any, task: str, pairs: list[tuple[Any, Any, Any]], head_layers: set[int],
             batch: int, direction: str = "noise") -> dict[str, Any]:
    rows: dict[str, list[torch.Tensor]] = {"relp": [], "atp": [], "activation": []}
    seconds: dict[str, list[float]] = {"relp": [], "atp": [], "activation": []}
    comps = None
    for i, (clean, corrupt, target) in enumerate(pairs):
        keep = _pair_components(model, tokenizer, (clean, corrupt, target), head_layers)
        est = patching(model, clean, corrupt, tokenizer=tokenizer, target=target, components=keep,
                       direction=direction)
        ap = activation_patching(model, clean, corrupt, tokenizer=tokenizer, target=target, components=keep,
                                 batch_size=batch, direction=direction)
        if comps is None:
            comps = [(c.kind, c.layer, c.index) for c in keep]
        for m in ("relp", "atp"):
            rows[m].append(est.scores[m])
            seconds[m].append(est.seconds[m])
        rows["activation"].append(ap.scores["activation"])
        seconds["activation"].append(ap.seconds["activation"])
        print(f"  {task} {i + 1}/{len(pairs)}: clean {est.clean:+.2f} corrupt {est.corrupt:+.2f} "
              f"relp {est.seconds['relp']:.1f}s atp {est.seconds['atp']:.1f}s ap {ap.seconds['activation']:.1f}s",
              flush=True)
    return {"components": comps, "scores": {m: torch.stack(v) for m, v in rows.items()}, "seconds": seconds,
            "pairs": [[clean, corrupt] for clean, corrupt, _ in pairs if isinstance(clean, str)]}


KS = {"head": 10, "mlp": 5, "resid": 5}


def _cells(s: dict[str, list[float]]) -> str:
    mean, se, _ = s["pair_pearson"]
    cells = [f"{v:.3f} [{lo:.2f}, {hi:.2f}]" for v, lo, hi in (s["pearson"], s["spearman"], s["overlap"])]
    return " | ".join([cells[0], f"{mean:.3f} ± {se:.3f}", *cells[1:]])


def _table(results: dict[str, Any], boots: int) -> tuple[list[str], dict[str, Any]]:
    lines = ["| task | component | n | method | Pearson [95 % CI] | per-pair Pearson (mean ± s.e.) | "
             "Spearman [95 % CI] | top-k overlap [95 % CI] |", "|---|---|---:|---|---|---|---|---|"]
    stats: dict[str, Any] = {}
    for task, res in results.items():
        kinds = [c[0] for c in res["components"]]
        for kind in ("head", "mlp", "resid"):
            idx = [i for i, k in enumerate(kinds) if k == kind]
            if not idx:
                continue
            truth = res["scores"]["activation"][:, idx]
            for method in ("relp", "atp"):
                s = summarize(res["scores"][method][:, idx], truth, KS[kind], boots, seed=len(idx))
                stats[f"{task}/{kind}/{method}"] = s
                lines.append(f"| {task} | {kind} (k={KS[kind]}) | {len(idx)} | {'AtP' if method == 'atp' else 'RelP'}"
                             f" | {_cells(s)} |")
    return lines, stats


ABLATIONS = ("attention", "products", "attention+products", "norms")


def _variant(name: str) -> Any:
    """AttnLRP with the rules of one op family removed (the plain gradient there)."""
    from lxt_fx.composites.attnlrp import attnlrp
    from lxt_fx.composites.composite import Composite
    from lxt_fx.rules import Attention, GatedUnit, NormIdentity, Stop, Uniform

    families = {"attention": (Attention,), "products": (Uniform, GatedUnit),
                "attention+products": (Uniform, GatedUnit, Attention), "norms": (NormIdentity, Stop)}
    return Composite([(p, r) for p, r in attnlrp.entries if not isinstance(r, families[name])],
                     name=f"attnlrp, plain gradient through {name}")


ABLATION_LABELS = {"attention": "attention plain", "products": "products (gate · up) plain",
                   "attention+products": "attention and products plain", "norms": "norms plain"}


def ablate(model: Any, tokenizer: Any, tasks: dict[str, list[tuple[Any, Any, Any]]], head_layers: set[int],
           out: Path, variants: list[str], boots: int) -> str:
    """RelP on the pairs of the last run under AttnLRP with one op family's rule removed (plain gradient
    there), against that run's activation patching; the run's RelP (AttnLRP) and AtP rows beside them."""
    saved = json.loads(out.with_suffix(".json").read_text())
    lines = ["| task | RelP rules | heads Pearson [95 % CI] | MLP Pearson [95 % CI] | resid Pearson [95 % CI] | "
             "MLP per-pair Pearson | heads Spearman | MLP Spearman | resid Spearman |",
             "|---|---|---|---|---|---|---:|---:|---:|"]
    for task, pairs in tasks.items():
        truth = torch.tensor(saved["scores"][task]["activation"])[:len(pairs)]
        kinds = [c[0] for c in saved["components"][task]]
        rows = {"AttnLRP (RelP), the run's": torch.tensor(saved["scores"][task]["relp"])[:len(pairs)]}
        for name in variants:
            composite = _variant(name)
            rows[ABLATION_LABELS[name]] = torch.stack([
                patching(model, clean, corrupt, tokenizer=tokenizer, target=target,
                         components=_pair_components(model, tokenizer, (clean, corrupt, target), head_layers),
                         methods=("relp",), composite=composite).scores["relp"] for clean, corrupt, target in pairs])
            print(f"  {task}: {name} done", flush=True)
        rows["AtP (plain gradient everywhere), the run's"] = torch.tensor(saved["scores"][task]["atp"])[:len(pairs)]
        for label, est in rows.items():
            cells = {}
            for kind in ("head", "mlp", "resid"):
                idx = [i for i, k in enumerate(kinds) if k == kind]
                cells[kind] = summarize(est[:, idx], truth[:, idx], KS[kind], boots, seed=len(idx))
            mean, se, _ = cells["mlp"]["pair_pearson"]
            lines.append(f"| {task} | {label} | " + " | ".join(
                "{:.3f} [{:.2f}, {:.2f}]".format(*cells[k]["pearson"]) for k in ("head", "mlp", "resid"))
                + f" | {mean:.3f} ± {se:.3f} | " + " | ".join(f"{cells[k]['spearman'][0]:.3f}"
                                                              for k in ("head", "mlp", "resid")) + " |")
            print(lines[-1], flush=True)
    text = (f"RelP with one AttnLRP rule family replaced by the plain gradient; {len(next(iter(tasks.values())))} "
            f"pairs per task, the activation patching of `{out.with_suffix('.json').name}`; 95 % bootstrap over pairs "
            f"({boots} draws).\n\nCommand: `python benchmarks/circuits.py " + " ".join(sys.argv[1:]) + "`\n\n"
            + "\n".join(lines) + "\n")
    out.with_name(out.name + "_ablation.md").write_text(text)
    return text


def _command() -> str:
    return "python benchmarks/circuits.py " + " ".join(a for a in sys.argv[1:])


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median()) if xs else float("nan")


MODELS = {"smollm2": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized, float32)",
          "gemma3-270m": "Gemma-3-270M (GGUF Q4_K_M, dequantized, float32)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=sorted(MODELS))
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--tasks", default=None, help=f"comma-separated, of {', '.join(TASKS)} (default: all; "
                        "with --ablate: ioi)")
    parser.add_argument("--direction", default="noise", choices=("noise", "denoise"))
    parser.add_argument("--head-layers", default="all", help="comma-separated layers whose heads are scored, or all")
    parser.add_argument("--batch", type=int, default=64, help="components per activation-patching forward")
    parser.add_argument("--boots", type=int, default=1000)
    parser.add_argument("--cost", action="store_true", help="also time the whole table (all heads and MLPs)")
    parser.add_argument("--tiny", action="store_true", help="a random tiny LLaMA (smoke run)")
    parser.add_argument("--ablate", action="store_true", help="RelP with one rule family removed, on the pairs "
                        "of the last run (needs its .json)")
    parser.add_argument("--variants", default=",".join(ABLATIONS), help="with --ablate: comma-separated, of "
                        + ", ".join(ABLATIONS))
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="write the tables of these runs' .json files "
                        "(the same model and components, different tasks) as one result at --out")
    parser.add_argument("--cost-from", metavar="JSON", help="with --merge: the cost table of this run's .json")
    parser.add_argument("--out", default=None, help="results path without suffix (default "
                        "benchmarks/results/circuits[_<model>][_denoise])")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.out is None:
        args.out = str(ROOT / "benchmarks" / "results" / ("circuits" + ("" if args.model == "smollm2" else
                                                                         "_" + args.model.split("-")[0])
                                                          + ("_denoise" if args.direction == "denoise" else "")))
    names = (args.tasks or ("ioi" if args.ablate else ",".join(TASKS))).split(",")
    if args.merge:
        print(_merge(args))
        return
    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import make_model

        model, tokenizer, name = make_model("llama", "sdpa", layers=2), None, "tiny random LLaMA (2 layers)"
        gen = torch.Generator().manual_seed(0)
        tasks = {"tiny": [(torch.randint(0, 96, (1, 6), generator=gen), torch.randint(0, 96, (1, 6), generator=gen),
                           Contrastive(3, 5)) for _ in range(args.pairs)]}
    else:
        from lxt_fx.models import load

        model, tokenizer = load(args.model)
        name = MODELS[args.model]
        tasks = {t: make_pairs(t, tokenizer, args.pairs, seed=TASKS.index(t)) for t in names}
    layers = len(model.model.layers)
    head_layers = set(range(layers)) if args.head_layers == "all" else {int(x) for x in args.head_layers.split(",")}
    if args.ablate:
        print(ablate(model, tokenizer, tasks, head_layers, Path(args.out), args.variants.split(","), args.boots))
        return
    started = time.perf_counter()
    results = {}
    for task, pairs in tasks.items():
        print(f"{task}: {len(pairs)} pairs", flush=True)
        results[task] = run_task(model, tokenizer, task, pairs, head_layers, args.batch, args.direction)
        _write(args, name, head_layers, layers, results, [], time.perf_counter() - started)
    cost_lines: list[str] = []
    if args.cost:
        cost_lines = _cost(model, tokenizer, next(iter(tasks.values()))[0], args.batch)
    print(_write(args, name, head_layers, layers, results, cost_lines, time.perf_counter() - started))


def _merge(args: argparse.Namespace) -> str:
    """One result from several runs' ``.json`` files (tasks in the order given); the total wall is their sum."""
    results, cost, total, meta = {}, [], 0.0, {}
    for path in args.merge:
        saved = json.loads(Path(path).read_text())
        meta = meta or saved["meta"]
        if {k: v for k, v in saved["meta"].items() if k != "command"} != {k: v for k, v in meta.items()
                                                                          if k != "command"}:
            raise SystemExit(f"{path}: another model, pair count, direction or head layers than {args.merge[0]}")
        for task in saved["scores"]:
            results[task] = {"components": [tuple(c) for c in saved["components"][task]],
                             "scores": {m: torch.tensor(v) for m, v in saved["scores"][task].items()},
                             "seconds": saved["seconds"][task], "pairs": saved["pairs"][task]}
        cost = cost or saved["cost"]
        total += saved["total_s"]
    commands = [_saved_command(path) for path in args.merge]
    if args.cost_from:
        cost = json.loads(Path(args.cost_from).read_text())["cost"]
        commands.append(_saved_command(args.cost_from) + " (the cost table)")
    args.pairs, args.direction = meta["pairs"], meta["direction"]
    return _write(args, meta["model"], set(meta["head_layers"]), meta["layers"], results, cost, total,
                  "`; `".join(commands))


def _saved_command(path: str) -> str:
    """The command line of the run that wrote ``path``."""
    return json.loads(Path(path).read_text())["meta"]["command"]


def _cost(model: Any, tokenizer: Any, pair: tuple[Any, Any, Any], batch: int) -> list[str]:
    """The whole table (every head and MLP) for one pair: RelP, AtP, activation patching (second of two runs)."""
    clean, corrupt, target = pair
    for _rep in range(2):
        est = patching(model, clean, corrupt, tokenizer=tokenizer, target=target, components=("heads", "mlp"))
        ap = activation_patching(model, clean, corrupt, tokenizer=tokenizer, target=target,
                                 components=est.components, batch_size=batch)
    return ["| method | wall s | components |", "|---|---:|---:|",
            f"| RelP (2 forwards + 1 LRP backward) | {est.seconds['relp']:.2f} | {len(est.components)} |",
            f"| AtP (2 forwards + 1 backward) | {est.seconds['atp']:.2f} | {len(est.components)} |",
            f"| activation patching ({batch} per forward) | {ap.seconds['activation']:.2f} | {len(ap.components)} |",
            f"| ratio activation / RelP | {ap.seconds['activation'] / est.seconds['relp']:.1f}× | |"]


def _write(args: argparse.Namespace, name: str, head_layers: set[int], layers: int, results: dict[str, Any],
           cost_lines: list[str], total: float, command: str | None = None) -> str:
    lines, stats = _table(results, args.boots)
    timing = ["| task | RelP s / pair | AtP s / pair | activation patching s / pair | components |", "|---|---:|---:|---:|---:|"]
    for task, res in results.items():
        sec = res["seconds"]
        timing.append(f"| {task} | {_median(sec['relp']):.2f} | {_median(sec['atp']):.2f} | "
                      f"{_median(sec['activation']):.2f} | {len(res['components'])} |")
    how = ("noise (clean run, one component set to its corrupted value)" if args.direction == "noise" else
           "denoise (corrupted run, one component set to its clean value)")
    header = ["# Circuits: RelP and AtP against activation patching", "",
              f"Model: {name}; {args.pairs} pairs per task; direction: {how}; components: MLP output of every "
              f"layer, heads of layers {sorted(head_layers) if len(head_layers) < layers else 'all'}, residual stream "
              f"after every layer at the last position. Statistics over components of the pair-mean scores; 95 % "
              f"bootstrap over pairs ({args.boots} draws); per-pair Pearson: the correlation over components within "
              f"each pair, its mean and standard error over pairs. torch threads: 1. Total wall: {total:.0f} s"
              f"{' (summed over the merged runs)' if command else ''} (tasks done: {', '.join(results)}).", "",
              f"Command: `{command or _command()}`", ""]
    text = "\n".join(header + lines + ["", "## Wall time per pair (median)", ""] + timing +
                     (["", "## Cost: the whole table, all heads and MLPs, one pair", ""] + cost_lines if cost_lines else [])
                     ) + "\n"
    out = Path(args.out)
    if not args.tiny:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text)
        out.with_suffix(".json").write_text(json.dumps({"stats": stats, "seconds": {
            t: r["seconds"] for t, r in results.items()}, "scores": {
            t: {m: [[float(f"{x:.6g}") for x in row] for row in v.tolist()] for m, v in r["scores"].items()}
            for t, r in results.items()},
            "components": {t: r["components"] for t, r in results.items()},
            "pairs": {t: r.get("pairs", []) for t, r in results.items()}, "cost": cost_lines,
            "total_s": total, "meta": {"model": name, "pairs": args.pairs, "direction": args.direction,
                                       "head_layers": sorted(head_layers), "layers": layers,
                                       "command": command or _command()}}, separators=(",", ":")))
    return text


if __name__ == "__main__":
    main()
